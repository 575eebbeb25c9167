//! `[component.<id>.tool.gantry.gpio]`: the pins a component may use, by
//! label. Read in a second, typed pass over the manifest text so that every
//! error points at the line of the label it is about.
//!
//! ```toml
//! [component.robot.tool.gantry.gpio]
//! linus-left-eye = { pin = 17, mode = "output" }
//! linus-left-motor-forward = { pin = 5, mode = "pwm", frequency_hz = 100 }
//! bumper = { pin = 4, mode = "input", pull = "up" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{App, Ctx, Location, ManifestError};
use crate::gpio::{Level, PinMode, Pull};

/// Highest BCM number on a Raspberry Pi's 40-pin header.
pub const MAX_BCM: u8 = 27;

/// One pin granted to one component.
#[derive(Debug, Clone)]
pub struct GpioGrant {
    pub label: String,
    pub pin: u8,
    pub mode: PinMode,
    pub pull: Pull,
    /// Where an output rests when no instance drives it (PWM: duty 0).
    pub safe: Level,
    pub frequency_hz: f64,
    pub location: Location,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    component: BTreeMap<String, DocComponent>,
}

#[derive(Deserialize)]
struct DocComponent {
    #[serde(default)]
    tool: Option<DocTools>,
}

#[derive(Deserialize)]
struct DocTools {
    #[serde(default)]
    gantry: Option<DocGantry>,
}

#[derive(Deserialize)]
struct DocGantry {
    #[serde(default)]
    gpio: BTreeMap<Spanned<String>, Spanned<RawPin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    pin: Spanned<i64>,
    mode: Spanned<String>,
    #[serde(default)]
    pull: Option<Spanned<String>>,
    #[serde(default)]
    safe: Option<Spanned<String>>,
    #[serde(default)]
    frequency_hz: Option<Spanned<f64>>,
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && label.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Ctx<'_> {
    /// Reads every component's grant into `app`, and checks them against each
    /// other: one label, one pin; an output pin belongs to one component.
    pub(super) fn gpio_grants(&self, app: &mut App, errors: &mut Vec<ManifestError>) {
        let doc: Doc = match toml::from_str(self.text) {
            Ok(d) => d,
            Err(e) => {
                let field = "tool.gantry.gpio";
                errors.push(self.error_at(
                    e.span().unwrap_or(0..0),
                    Some(field),
                    e.message().trim().to_string(),
                ));
                return;
            }
        };
        for (id, comp) in doc.component {
            let Some(gpio) = comp.tool.and_then(|t| t.gantry).map(|g| g.gpio) else {
                continue;
            };
            let grants = self.component_grants(&id, gpio, errors);
            if let Some(spec) = app.components.get_mut(&id) {
                spec.gpio = grants;
            }
        }
        self.cross_check(app, errors);
    }

    fn component_grants(
        &self,
        id: &str,
        gpio: BTreeMap<Spanned<String>, Spanned<RawPin>>,
        errors: &mut Vec<ManifestError>,
    ) -> Vec<GpioGrant> {
        let mut grants: Vec<GpioGrant> = Vec::new();
        for (label, raw) in gpio {
            let field = format!("component.{id}.tool.gantry.gpio.{}", label.get_ref());
            let err = |span: std::ops::Range<usize>, what: &str, msg: String| {
                self.error_at(span, Some(&format!("{field}{what}")), msg)
            };
            if !valid_label(label.get_ref()) {
                errors.push(err(
                    label.span(),
                    "",
                    "a label is lowercase letters, digits, `-` and `_`, starting with a letter \
                     (e.g. `linus-left-eye`)"
                        .into(),
                ));
                continue;
            }
            let raw_span = raw.span();
            let raw = raw.into_inner();
            let pin = match u8::try_from(*raw.pin.get_ref()) {
                Ok(p) if p <= MAX_BCM => p,
                _ => {
                    errors.push(err(
                        raw.pin.span(),
                        ".pin",
                        format!(
                            "{} is not a GPIO pin: expected a BCM number from 0 to {MAX_BCM}",
                            raw.pin.get_ref()
                        ),
                    ));
                    continue;
                }
            };
            let mode = match raw.mode.get_ref().as_str() {
                "input" => PinMode::Input,
                "output" => PinMode::Output,
                "pwm" => PinMode::Pwm,
                other => {
                    errors.push(err(
                        raw.mode.span(),
                        ".mode",
                        format!(
                            "unknown mode {other:?}: expected \"input\", \"output\" or \"pwm\""
                        ),
                    ));
                    continue;
                }
            };
            let pull = match raw.pull.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
                None | Some(("none", _)) => Pull::None,
                Some(("up", _)) => Pull::Up,
                Some(("down", _)) => Pull::Down,
                Some((other, span)) => {
                    errors.push(err(
                        span,
                        ".pull",
                        format!("unknown pull {other:?}: expected \"none\", \"up\" or \"down\""),
                    ));
                    continue;
                }
            };
            if pull != Pull::None && mode != PinMode::Input {
                errors.push(err(
                    raw_span.clone(),
                    ".pull",
                    "only inputs have a pull".into(),
                ));
                continue;
            }
            let safe = match raw.safe.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None | Some(("low", _)) => Level::Low,
                Some(("high", _)) if mode == PinMode::Output => Level::High,
                Some((other, span)) => {
                    errors.push(err(
                        span,
                        ".safe",
                        format!(
                            "safe = {other:?} is not allowed here: an output rests \"low\" or \
                             \"high\", a PWM output at duty 0 (\"low\")"
                        ),
                    ));
                    continue;
                }
            };
            let frequency_hz = match &raw.frequency_hz {
                None => 100.0,
                Some(f)
                    if mode == PinMode::Pwm && *f.get_ref() > 0.0 && *f.get_ref() <= 100_000.0 =>
                {
                    *f.get_ref()
                }
                Some(f) => {
                    errors.push(err(
                        f.span(),
                        ".frequency_hz",
                        "a PWM output's frequency, greater than 0 and at most 100000".into(),
                    ));
                    continue;
                }
            };
            if let Some(other) = grants.iter().find(|g| g.pin == pin) {
                errors.push(err(
                    raw.pin.span(),
                    ".pin",
                    format!(
                        "pin {pin} is already granted to this component as `{}`",
                        other.label
                    ),
                ));
                continue;
            }
            grants.push(GpioGrant {
                label: label.into_inner(),
                pin,
                mode,
                pull,
                safe,
                frequency_hz,
                location: self.location(raw_span, Some(&field)),
            });
        }
        grants
    }

    /// An output (or PWM) pin is driven by one component only; an input may
    /// be read by several, but not while another drives it.
    fn cross_check(&self, app: &App, errors: &mut Vec<ManifestError>) {
        let mut seen: BTreeMap<u8, (&str, &GpioGrant)> = BTreeMap::new();
        for (id, spec) in &app.components {
            for g in &spec.gpio {
                match seen.get(&g.pin) {
                    Some((other_id, other)) if g.mode.drives() || other.mode.drives() => {
                        errors.push(ManifestError {
                            location: g.location.clone(),
                            message: format!(
                                "pin {} is already granted to component `{other_id}` as `{}` ({} mode); \
                                 two components cannot share a pin that one of them drives",
                                g.pin,
                                other.label,
                                other.mode.name()
                            ),
                        });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(g.pin, (id, g));
                    }
                }
            }
        }
    }
}
