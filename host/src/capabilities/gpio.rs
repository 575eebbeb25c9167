//! `gantry:gpio`: pins a component was granted, by label. Owns the grant
//! (resolved from the manifest's `tool.gantry.gpio`), the per-instance state
//! and the linker registration; the pins themselves live on a `gpio::Board`.
//!
//! Three rules keep hardware safe:
//! - a label outside the grant is `not-allowed` and never reaches the board;
//! - an output is driven by one instance at a time (a lease): a second
//!   instance that tries gets `busy` instead of fighting the first;
//! - when an instance ends, by returning, trapping, timing out or being
//!   abandoned, its store is dropped and every output it drove returns to
//!   its safe level (motors stop) before the lease is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::Linker;

use super::bindings::gantry::gpio::{digital, pins, pwm, types};
use super::{Capability, HostState, Request, Settings};
use crate::gpio::{Board, Level, PinMode, PinSetup};
use crate::manifest::{ComponentSpec, GpioGrant, ManifestError};
use crate::telemetry::metrics::Metrics;

/// What one component may touch, by label.
#[derive(Debug, Default)]
pub struct GpioGrants {
    pins: HashMap<String, GpioGrant>,
}

impl GpioGrants {
    pub fn new(grants: &[GpioGrant]) -> Self {
        GpioGrants {
            pins: grants
                .iter()
                .map(|g| (g.label.clone(), g.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

/// The process-wide side of the capability: the board, and which instance
/// holds each output right now.
pub struct GpioHost {
    board: Arc<dyn Board>,
    leases: Mutex<HashMap<u8, u64>>,
    next_instance: AtomicU64,
    metrics: Arc<Metrics>,
}

impl GpioHost {
    pub fn new(board: Arc<dyn Board>, metrics: Arc<Metrics>) -> Self {
        GpioHost {
            board,
            leases: Mutex::new(HashMap::new()),
            next_instance: AtomicU64::new(1),
            metrics,
        }
    }

    pub fn board(&self) -> &Arc<dyn Board> {
        &self.board
    }

    /// Sets up every granted pin on the board, at its safe level. Done once
    /// at start; a pin the hardware refuses stops start-up.
    pub fn claim(&self, component: &str, grants: &[GpioGrant]) -> anyhow::Result<()> {
        let component: Arc<str> = Arc::from(component);
        for g in grants {
            self.board
                .setup(&PinSetup {
                    pin: g.pin,
                    mode: g.mode,
                    pull: g.pull,
                    safe: g.safe,
                    frequency_hz: g.frequency_hz,
                    component: component.clone(),
                    label: Arc::from(g.label.as_str()),
                })
                .map_err(|e| anyhow::anyhow!("{}: cannot set up pin {}: {e}", g.location, g.pin))?;
        }
        Ok(())
    }
}

/// One instance's view of the pins.
pub struct GpioState {
    host: Arc<GpioHost>,
    grants: Arc<GpioGrants>,
    component: Arc<str>,
    instance: u64,
    /// Outputs this instance leased, to put back to safe on drop.
    driven: Vec<GpioGrant>,
}

impl GpioState {
    pub fn new(host: Arc<GpioHost>, grants: Arc<GpioGrants>, component: Arc<str>) -> Self {
        let instance = host.next_instance.fetch_add(1, Ordering::Relaxed);
        GpioState {
            host,
            grants,
            component,
            instance,
            driven: Vec::new(),
        }
    }

    fn count(&self, label: &str, op: &str) {
        self.host
            .metrics
            .gpio_operations
            .with(&[&self.component, label, op])
            .inc();
    }

    /// The grant for `label` if it allows `op` in one of `modes`.
    fn grant(&self, label: &str, op: &str, modes: &[PinMode]) -> Result<GpioGrant, types::Error> {
        let Some(g) = self.grants.pins.get(label) else {
            // The label is guest-chosen: it stays out of the metric's labels.
            self.host
                .metrics
                .gpio_denied
                .with(&[&self.component, op])
                .inc();
            tracing::debug!(component = %self.component, label, op, "gpio call outside the grant");
            return Err(types::Error::NotAllowed);
        };
        if !modes.contains(&g.mode) {
            return Err(types::Error::Unsupported);
        }
        Ok(g.clone())
    }

    /// Takes the lease on an output for this instance.
    fn lease(&mut self, g: &GpioGrant) -> Result<(), types::Error> {
        if self.driven.iter().any(|d| d.pin == g.pin) {
            return Ok(());
        }
        let mut leases = self
            .host
            .leases
            .lock()
            .map_err(|_| types::Error::Hardware("lease table poisoned".into()))?;
        match leases.get(&g.pin) {
            Some(holder) if *holder != self.instance => Err(types::Error::Busy),
            _ => {
                leases.insert(g.pin, self.instance);
                self.driven.push(g.clone());
                Ok(())
            }
        }
    }

    fn set(&mut self, label: &str, level: Level) -> Result<(), types::Error> {
        let g = self.grant(label, "set", &[PinMode::Output])?;
        self.lease(&g)?;
        self.host.board.write(g.pin, level).map_err(hardware)?;
        self.count(label, "set");
        Ok(())
    }

    fn set_pwm(
        &mut self,
        label: &str,
        duty: Option<f64>,
        hz: Option<f64>,
    ) -> Result<(), types::Error> {
        let op = if duty.is_some() {
            "set_duty_cycle"
        } else {
            "set_frequency"
        };
        let g = self.grant(label, op, &[PinMode::Pwm])?;
        if duty.is_some_and(|d| !(0.0..=1.0).contains(&d))
            || hz.is_some_and(|f| !(f.is_finite() && f > 0.0 && f <= 100_000.0))
        {
            return Err(types::Error::Unsupported);
        }
        self.lease(&g)?;
        let (cur_duty, cur_hz) = self.host.board.pwm(g.pin).map_err(hardware)?;
        self.host
            .board
            .set_pwm(g.pin, duty.unwrap_or(cur_duty), hz.unwrap_or(cur_hz))
            .map_err(hardware)?;
        self.count(label, op);
        Ok(())
    }
}

impl GpioState {
    /// The safe state: runs however the instance ended, because the store
    /// that owns this state is dropped in every case.
    fn back_to_safe(&mut self) {
        if self.driven.is_empty() {
            return;
        }
        for g in std::mem::take(&mut self.driven) {
            let result = match g.mode {
                PinMode::Pwm => self
                    .host
                    .board
                    .pwm(g.pin)
                    .and_then(|(_, hz)| self.host.board.set_pwm(g.pin, 0.0, hz)),
                _ => self.host.board.write(g.pin, g.safe),
            };
            match result {
                Ok(()) => self.count(&g.label, "safe"),
                Err(e) => tracing::error!(
                    component = %self.component,
                    label = %g.label,
                    pin = g.pin,
                    "could not return pin to its safe level: {e}"
                ),
            }
            if let Ok(mut leases) = self.host.leases.lock()
                && leases.get(&g.pin) == Some(&self.instance)
            {
                leases.remove(&g.pin);
            }
        }
    }
}

/// The same pins, modes and settings, wherever in the manifest they are written.
fn same_grants(a: &[GpioGrant], b: &[GpioGrant]) -> bool {
    let key = |g: &GpioGrant| {
        (
            g.label.clone(),
            g.pin,
            g.mode,
            g.pull,
            g.safe,
            g.frequency_hz.to_bits(),
        )
    };
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    b.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    a == b
}

fn hardware(e: crate::gpio::BoardError) -> types::Error {
    types::Error::Hardware(e.to_string())
}

fn to_level(l: types::Level) -> Level {
    match l {
        types::Level::Low => Level::Low,
        types::Level::High => Level::High,
    }
}

pub struct GpioView<'a>(pub &'a mut GpioState);

pub struct HasGpio;
impl wasmtime::component::HasData for HasGpio {
    type Data<'a> = GpioView<'a>;
}

/// The `gantry:gpio` capability.
pub struct Gpio;

impl Capability for Gpio {
    type Grant = Arc<GpioGrants>;
    type Shared = Arc<GpioHost>;
    type Instance = GpioState;

    fn shared(settings: &Settings) -> anyhow::Result<Arc<GpioHost>> {
        Ok(Arc::new(GpioHost::new(
            settings.board.clone(),
            settings.metrics.clone(),
        )))
    }

    fn grant(
        spec: &ComponentSpec,
        _values: &BTreeMap<String, String>,
    ) -> Result<Arc<GpioGrants>, ManifestError> {
        Ok(Arc::new(GpioGrants::new(&spec.gpio)))
    }

    fn claim(host: &Arc<GpioHost>, component: &str, spec: &ComponentSpec) -> anyhow::Result<()> {
        host.claim(component, &spec.gpio)
    }

    /// Pins of a component whose grants did not change stay exactly as they
    /// are (a robot mid-drive keeps driving); changed grants are set up
    /// again, at their safe levels.
    fn claim_again(
        host: &Arc<GpioHost>,
        component: &str,
        before: Option<&ComponentSpec>,
        spec: &ComponentSpec,
    ) -> anyhow::Result<()> {
        if before.is_some_and(|b| same_grants(&b.gpio, &spec.gpio)) {
            return Ok(());
        }
        host.claim(component, &spec.gpio)?;
        if before.is_some() {
            tracing::info!(
                component,
                "GPIO grants changed: its pins are back at their safe levels"
            );
        }
        Ok(())
    }

    fn instance(host: &Arc<GpioHost>, grants: &Arc<GpioGrants>, request: &Request) -> GpioState {
        GpioState::new(host.clone(), grants.clone(), request.component.clone())
    }

    fn add_to_linker(linker: &mut Linker<HostState>, _concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> GpioView<'_> {
            GpioView(&mut s.caps.gpio)
        }
        types::add_to_linker::<HostState, HasGpio>(linker, get)?;
        pins::add_to_linker::<HostState, HasGpio>(linker, get)?;
        digital::add_to_linker::<HostState, HasGpio>(linker, get)?;
        pwm::add_to_linker::<HostState, HasGpio>(linker, get)?;
        Ok(())
    }

    fn end_of_request(state: &mut GpioState) {
        state.back_to_safe();
    }
}

impl types::Host for GpioView<'_> {}

impl pins::Host for GpioView<'_> {
    fn granted(&mut self) -> wasmtime::Result<Vec<types::PinInfo>> {
        let mut list: Vec<types::PinInfo> = self
            .0
            .grants
            .pins
            .values()
            .map(|g| types::PinInfo {
                label: g.label.clone(),
                mode: match g.mode {
                    PinMode::Input => types::Mode::Input,
                    PinMode::Output => types::Mode::Output,
                    PinMode::Pwm => types::Mode::Pwm,
                },
            })
            .collect();
        list.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(list)
    }
}

impl digital::Host for GpioView<'_> {
    fn set(
        &mut self,
        label: String,
        level: types::Level,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.0.set(&label, to_level(level)))
    }

    fn get(&mut self, label: String) -> wasmtime::Result<Result<types::Level, types::Error>> {
        let s = &*self.0;
        let result = s
            .grant(
                &label,
                "get",
                &[PinMode::Input, PinMode::Output, PinMode::Pwm],
            )
            .and_then(|g| s.host.board.read(g.pin).map_err(hardware))
            .map(|l| match l {
                Level::Low => types::Level::Low,
                Level::High => types::Level::High,
            });
        if result.is_ok() {
            s.count(&label, "get");
        }
        Ok(result)
    }
}

impl pwm::Host for GpioView<'_> {
    fn set_duty_cycle(
        &mut self,
        label: String,
        duty: f64,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.0.set_pwm(&label, Some(duty), None))
    }

    fn set_frequency(
        &mut self,
        label: String,
        hertz: f64,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(self.0.set_pwm(&label, None, Some(hertz)))
    }

    fn get_duty_cycle(&mut self, label: String) -> wasmtime::Result<Result<f64, types::Error>> {
        let s = &*self.0;
        Ok(s.grant(&label, "get_duty_cycle", &[PinMode::Pwm])
            .and_then(|g| s.host.board.pwm(g.pin).map(|(d, _)| d).map_err(hardware)))
    }
}
