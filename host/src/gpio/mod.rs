//! The boards pins live on: the [`Board`] trait and its backends, `sim` (in
//! memory and observable, the default everywhere) and `rppal` (a Raspberry
//! Pi's real pins). A board knows pins by BCM number; labels, grants and
//! per-instance leases belong to `capabilities::gpio`.

pub mod sim;

#[cfg(any(feature = "rppal", all(target_arch = "aarch64", target_os = "linux")))]
pub mod rpi;

use std::sync::Arc;

use serde::Serialize;

/// A digital level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    High,
}

/// How a pin is used, fixed by the manifest's grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PinMode {
    Input,
    Output,
    Pwm,
}

impl PinMode {
    pub fn name(self) -> &'static str {
        match self {
            PinMode::Input => "input",
            PinMode::Output => "output",
            PinMode::Pwm => "pwm",
        }
    }

    pub fn drives(self) -> bool {
        !matches!(self, PinMode::Input)
    }
}

/// Pull resistor of an input pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    None,
    Up,
    Down,
}

/// One pin a component was granted, as the board sets it up.
#[derive(Debug, Clone)]
pub struct PinSetup {
    pub pin: u8,
    pub mode: PinMode,
    pub pull: Pull,
    /// The level an output returns to when no instance drives it.
    pub safe: Level,
    /// Starting PWM frequency.
    pub frequency_hz: f64,
    /// Who it belongs to, for the admin view and events.
    pub component: Arc<str>,
    pub label: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("pin {0} is not set up on this board")]
    NotSetUp(u8),
    #[error("{0}")]
    Hardware(String),
}

/// A GPIO board. Calls are short and synchronous (a register write or a
/// mutex on the simulated board); they never block on I/O.
pub trait Board: Send + Sync {
    /// `sim` or `rppal`.
    fn name(&self) -> &'static str;
    /// Claims and configures a pin, at its safe level; done once at load.
    fn setup(&self, pin: &PinSetup) -> Result<(), BoardError>;
    fn write(&self, pin: u8, level: Level) -> Result<(), BoardError>;
    fn read(&self, pin: u8) -> Result<Level, BoardError>;
    fn set_pwm(&self, pin: u8, duty: f64, frequency_hz: f64) -> Result<(), BoardError>;
    /// The duty cycle and frequency a PWM pin runs at.
    fn pwm(&self, pin: u8) -> Result<(f64, f64), BoardError>;
    /// What the admin listener shows; `None` where the board is not observable.
    fn observe(&self) -> Option<&sim::SimBoard> {
        None
    }
}

/// Which backend `--gpio` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-memory pins, observable at the admin listener's /gpio.
    Sim,
    /// A Raspberry Pi's pins through rppal.
    Rppal,
}

/// Opens the selected board. `rppal` fails here, at start, off a Raspberry Pi
/// or in a build without it, never at the first request.
pub fn open(backend: Backend) -> anyhow::Result<Arc<dyn Board>> {
    match backend {
        Backend::Sim => Ok(Arc::new(sim::SimBoard::new())),
        Backend::Rppal => open_rppal(),
    }
}

#[cfg(any(feature = "rppal", all(target_arch = "aarch64", target_os = "linux")))]
fn open_rppal() -> anyhow::Result<Arc<dyn Board>> {
    Ok(Arc::new(rpi::RppalBoard::open()?))
}

#[cfg(not(any(feature = "rppal", all(target_arch = "aarch64", target_os = "linux"))))]
fn open_rppal() -> anyhow::Result<Arc<dyn Board>> {
    anyhow::bail!(
        "--gpio rppal: this build of gantry has no Raspberry Pi support (it is built in on \
         aarch64 Linux, or with `--features rppal`); use --gpio sim"
    )
}
