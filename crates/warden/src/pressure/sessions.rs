//! Conversations pinned to a rung: requests carrying the same `x-warden-session` header (or
//! OpenAI's `user` field) stay on the model they got for as long as the session keeps coming
//! back, so a conversation does not switch models mid-way when the level changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session that has not come back for this long is forgotten.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Forgotten sessions are swept once the table holds this many.
const SWEEP_AT: usize = 10_000;

/// A pinned conversation.
struct Pin {
    /// The model that answered it.
    rung: String,
    /// When it last came back.
    seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// (session, model asked for) → the rung it is pinned to.
    pins: Mutex<HashMap<(String, String), Pin>>,
}

impl Sessions {
    /// The rung `session` got for `model`, if it is still pinned; refreshes the pin.
    pub fn get(&self, session: &str, model: &str) -> Option<String> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let pin = pins.get_mut(&(session.to_string(), model.to_string()))?;
        if pin.seen.elapsed() > IDLE {
            return None;
        }
        pin.seen = Instant::now();
        Some(pin.rung.clone())
    }

    /// Pins `session`'s requests for `model` to `rung`.
    pub fn pin(&self, session: &str, model: &str, rung: &str) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.len() >= SWEEP_AT {
            pins.retain(|_, p| p.seen.elapsed() <= IDLE);
        }
        pins.insert((session.to_string(), model.to_string()), Pin { rung: rung.to_string(), seen: Instant::now() });
    }

    /// Forgets a pin whose model is gone.
    pub fn forget(&self, session: &str, model: &str) {
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).remove(&(session.to_string(), model.to_string()));
    }
}
