//! A Raspberry Pi's pins through rppal (`/dev/gpiomem`). PWM is rppal's
//! software PWM, which any pin can run; motor drivers need no more.

use std::collections::HashMap;
use std::sync::Mutex;

use rppal::gpio::{Gpio, InputPin, OutputPin};

use super::{Board, BoardError, Level, PinMode, PinSetup, Pull};

enum Claimed {
    Input(InputPin),
    Output(OutputPin),
    Pwm {
        pin: OutputPin,
        duty: f64,
        frequency_hz: f64,
    },
}

pub struct RppalBoard {
    gpio: Gpio,
    pins: Mutex<HashMap<u8, Claimed>>,
}

fn hw(e: rppal::gpio::Error) -> BoardError {
    BoardError::Hardware(e.to_string())
}

impl RppalBoard {
    /// Opens the Pi's GPIO; fails with a clear message anywhere else.
    pub fn open() -> anyhow::Result<RppalBoard> {
        let gpio = Gpio::new().map_err(|e| {
            anyhow::anyhow!(
                "--gpio rppal: no Raspberry Pi GPIO here ({e}); run on a Raspberry Pi with \
                 access to its GPIO memory device (/dev/gpiomem0 on a Pi 5, /dev/gpiomem on \
                 earlier models), or use --gpio sim"
            )
        })?;
        Ok(RppalBoard {
            gpio,
            pins: Mutex::new(HashMap::new()),
        })
    }

    fn with<T>(
        &self,
        pin: u8,
        f: impl FnOnce(&mut Claimed) -> Result<T, BoardError>,
    ) -> Result<T, BoardError> {
        let mut pins = self
            .pins
            .lock()
            .map_err(|_| BoardError::Hardware("pin table poisoned".into()))?;
        f(pins.get_mut(&pin).ok_or(BoardError::NotSetUp(pin))?)
    }
}

impl Board for RppalBoard {
    fn name(&self) -> &'static str {
        "rppal"
    }

    fn setup(&self, p: &PinSetup) -> Result<(), BoardError> {
        let pin = self.gpio.get(p.pin).map_err(hw)?;
        let claimed = match p.mode {
            PinMode::Input => Claimed::Input(match p.pull {
                Pull::None => pin.into_input(),
                Pull::Up => pin.into_input_pullup(),
                Pull::Down => pin.into_input_pulldown(),
            }),
            PinMode::Output => {
                let mut out = pin.into_output_low();
                if p.safe == Level::High {
                    out.set_high();
                }
                Claimed::Output(out)
            }
            PinMode::Pwm => Claimed::Pwm {
                pin: pin.into_output_low(),
                duty: 0.0,
                frequency_hz: p.frequency_hz,
            },
        };
        let mut pins = self
            .pins
            .lock()
            .map_err(|_| BoardError::Hardware("pin table poisoned".into()))?;
        pins.insert(p.pin, claimed);
        Ok(())
    }

    fn write(&self, pin: u8, level: Level) -> Result<(), BoardError> {
        self.with(pin, |c| match c {
            Claimed::Output(out) => {
                match level {
                    Level::High => out.set_high(),
                    Level::Low => out.set_low(),
                }
                Ok(())
            }
            Claimed::Pwm { pin, duty, .. } => {
                pin.clear_pwm().map_err(hw)?;
                *duty = 0.0;
                match level {
                    Level::High => pin.set_high(),
                    Level::Low => pin.set_low(),
                }
                Ok(())
            }
            Claimed::Input(_) => Err(BoardError::Hardware(format!("pin {pin} is an input"))),
        })
    }

    fn read(&self, pin: u8) -> Result<Level, BoardError> {
        self.with(pin, |c| {
            let high = match c {
                Claimed::Input(i) => i.is_high(),
                Claimed::Output(o) => o.is_set_high(),
                Claimed::Pwm { duty, .. } => *duty > 0.0,
            };
            Ok(if high { Level::High } else { Level::Low })
        })
    }

    fn set_pwm(&self, pin: u8, duty: f64, frequency_hz: f64) -> Result<(), BoardError> {
        self.with(pin, |c| match c {
            Claimed::Pwm {
                pin: out,
                duty: d,
                frequency_hz: f,
            } => {
                if duty <= 0.0 {
                    out.clear_pwm().map_err(hw)?;
                    out.set_low();
                } else {
                    out.set_pwm_frequency(frequency_hz, duty).map_err(hw)?;
                }
                *d = duty;
                *f = frequency_hz;
                Ok(())
            }
            _ => Err(BoardError::Hardware(format!(
                "pin {pin} is not a PWM output"
            ))),
        })
    }

    fn pwm(&self, pin: u8) -> Result<(f64, f64), BoardError> {
        self.with(pin, |c| match c {
            Claimed::Pwm {
                duty, frequency_hz, ..
            } => Ok((*duty, *frequency_hz)),
            _ => Err(BoardError::Hardware(format!(
                "pin {pin} is not a PWM output"
            ))),
        })
    }
}
