//! Conversations pinned to a rung: requests carrying the same `x-warden-session` header (or
//! OpenAI's `user` field) stay on the model they got for as long as the session keeps coming
//! back, so a conversation does not switch models mid-way when the level changes.
//!
//! Sessions are named by clients, so the table is bounded in both directions: a session is kept
//! by a hash of its name (a `user` field may be megabytes), and past [`MAX_PINS`] the least
//! recently seen half goes (a flood of new names within the idle window cannot grow it).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A session that has not come back for this long is forgotten.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Forgotten sessions are swept once the table holds this many.
const SWEEP_AT: usize = 10_000;
/// At most this many pins; past it the least recently seen half is dropped.
const MAX_PINS: usize = 100_000;

/// A pinned conversation.
struct Pin {
    /// The model that answered it.
    rung: String,
    /// When it last came back.
    seen: Instant,
}

#[derive(Default)]
pub struct Sessions {
    pins: Mutex<Table>,
    /// Keyed per process, so names that collide cannot be made up in advance (a collision
    /// would only share a rung).
    hasher: RandomState,
}

#[derive(Default)]
struct Table {
    /// (hash of the session's name, model asked for) → the rung it is pinned to.
    pins: HashMap<(u64, String), Pin>,
    /// The size at which the next sweep runs: doubling, so sweeps cost O(1) a pin.
    sweep_at: usize,
}

impl Sessions {
    fn key(&self, session: &str, model: &str) -> (u64, String) {
        (self.hasher.hash_one(session), model.to_string())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rung `session` got for `model`, if it is still pinned; refreshes the pin.
    pub fn get(&self, session: &str, model: &str) -> Option<String> {
        let key = self.key(session, model);
        let mut table = self.table();
        let pin = table.pins.get_mut(&key)?;
        if pin.seen.elapsed() > IDLE {
            return None;
        }
        pin.seen = Instant::now();
        Some(pin.rung.clone())
    }

    /// Pins `session`'s requests for `model` to `rung`.
    pub fn pin(&self, session: &str, model: &str, rung: &str) {
        let key = self.key(session, model);
        let mut table = self.table();
        if table.pins.len() >= table.sweep_at.max(SWEEP_AT) {
            table.pins.retain(|_, p| p.seen.elapsed() <= IDLE);
            if table.pins.len() >= MAX_PINS / 2 {
                let mut seen: Vec<Instant> = table.pins.values().map(|p| p.seen).collect();
                let middle = seen.len() / 2;
                let (_, &mut cutoff, _) = seen.select_nth_unstable(middle);
                table.pins.retain(|_, p| p.seen > cutoff);
            }
            table.sweep_at = (table.pins.len() * 2).min(MAX_PINS);
        }
        table.pins.insert(key, Pin { rung: rung.to_string(), seen: Instant::now() });
    }

    /// Forgets a pin whose model is gone.
    pub fn forget(&self, session: &str, model: &str) {
        let key = self.key(session, model);
        self.table().pins.remove(&key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().pins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_its_rung_per_model_until_forgotten() {
        let s = Sessions::default();
        let long = "u".repeat(1 << 20);
        s.pin(&long, "big", "small");
        s.pin("b", "big", "big");
        assert_eq!(s.get(&long, "big").as_deref(), Some("small"));
        assert_eq!(s.get("b", "big").as_deref(), Some("big"));
        assert_eq!(s.get(&long, "other"), None);
        s.forget(&long, "big");
        assert_eq!(s.get(&long, "big"), None);
    }

    #[test]
    fn a_flood_of_new_sessions_stays_bounded_and_keeps_the_recent_ones() {
        let s = Sessions::default();
        s.pin("regular", "m", "small");
        for i in 0..3 * MAX_PINS {
            s.pin(&format!("flood-{i}"), "m", "m");
            // A conversation that keeps coming back is among the most recent whenever the
            // least recent half goes.
            if i % 1000 == 0 {
                assert_eq!(s.get("regular", "m").as_deref(), Some("small"), "after {i}");
            }
            assert!(s.len() <= MAX_PINS, "{} pins after {i}", s.len());
        }
        assert_eq!(s.get(&format!("flood-{}", 3 * MAX_PINS - 1), "m").as_deref(), Some("m"));
    }
}
