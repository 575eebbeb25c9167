//! The simulated board: pin levels and PWM duty in memory, every change kept
//! in a bounded history and broadcast to watchers (the admin listener's
//! `/gpio` view and its event stream).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::{Board, BoardError, Level, PinMode, PinSetup, Pull};

/// Changes kept for the admin view.
const HISTORY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct PinState {
    pub pin: u8,
    pub label: String,
    pub component: String,
    pub mode: PinMode,
    pub pull: Pull,
    pub level: Level,
    pub duty: f64,
    pub frequency_hz: f64,
}

/// One change of a pin.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub pin: u8,
    pub label: String,
    pub component: String,
    pub level: Level,
    pub duty: f64,
}

pub struct SimBoard {
    pins: Mutex<BTreeMap<u8, PinState>>,
    history: Mutex<VecDeque<Event>>,
    seq: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Default for SimBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl SimBoard {
    pub fn new() -> Self {
        SimBoard {
            pins: Mutex::new(BTreeMap::new()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            seq: AtomicU64::new(0),
            events: broadcast::channel(HISTORY).0,
        }
    }

    /// Every pin set up, by BCM number.
    pub fn pins(&self) -> Vec<PinState> {
        self.pins
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The most recent changes, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn change(&self, pin: u8, f: impl FnOnce(&mut PinState)) -> Result<(), BoardError> {
        let event = {
            let mut pins = self
                .pins
                .lock()
                .map_err(|_| BoardError::Hardware("simulated board poisoned".into()))?;
            let state = pins.get_mut(&pin).ok_or(BoardError::NotSetUp(pin))?;
            let before = (state.level, state.duty);
            f(state);
            if before == (state.level, state.duty) {
                return Ok(());
            }
            self.event(state)
        };
        self.record(event);
        Ok(())
    }

    fn event(&self, state: &PinState) -> Event {
        Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            pin: state.pin,
            label: state.label.clone(),
            component: state.component.clone(),
            level: state.level,
            duty: state.duty,
        }
    }

    fn record(&self, event: Event) {
        if let Ok(mut h) = self.history.lock() {
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(event.clone());
        }
        // Nobody watching is fine.
        let _ = self.events.send(event);
    }
}

impl Board for SimBoard {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn setup(&self, p: &PinSetup) -> Result<(), BoardError> {
        let mut pins = self
            .pins
            .lock()
            .map_err(|_| BoardError::Hardware("simulated board poisoned".into()))?;
        let input_level = match p.pull {
            Pull::Up => Level::High,
            _ => Level::Low,
        };
        let state = PinState {
            pin: p.pin,
            label: p.label.to_string(),
            component: p.component.to_string(),
            mode: p.mode,
            pull: p.pull,
            level: if p.mode == PinMode::Input {
                input_level
            } else {
                p.safe
            },
            duty: 0.0,
            frequency_hz: p.frequency_hz,
        };
        // Set up again (its grant changed): the change is an event, like any.
        let event = pins.contains_key(&p.pin).then(|| self.event(&state));
        pins.insert(p.pin, state);
        drop(pins);
        if let Some(e) = event {
            self.record(e);
        }
        Ok(())
    }

    fn write(&self, pin: u8, level: Level) -> Result<(), BoardError> {
        self.change(pin, |s| {
            s.level = level;
            s.duty = 0.0;
        })
    }

    fn read(&self, pin: u8) -> Result<Level, BoardError> {
        let pins = self
            .pins
            .lock()
            .map_err(|_| BoardError::Hardware("simulated board poisoned".into()))?;
        pins.get(&pin)
            .map(|s| s.level)
            .ok_or(BoardError::NotSetUp(pin))
    }

    fn set_pwm(&self, pin: u8, duty: f64, frequency_hz: f64) -> Result<(), BoardError> {
        self.change(pin, |s| {
            s.duty = duty;
            s.frequency_hz = frequency_hz;
            // A PWM pin reads high while it runs at all.
            s.level = if duty > 0.0 { Level::High } else { Level::Low };
        })
    }

    fn pwm(&self, pin: u8) -> Result<(f64, f64), BoardError> {
        let pins = self
            .pins
            .lock()
            .map_err(|_| BoardError::Hardware("simulated board poisoned".into()))?;
        pins.get(&pin)
            .map(|s| (s.duty, s.frequency_hz))
            .ok_or(BoardError::NotSetUp(pin))
    }

    fn observe(&self) -> Option<&SimBoard> {
        Some(self)
    }
}
