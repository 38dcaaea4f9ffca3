//! Alerts: logged as warnings and kept (the latest 1,000) for `GET /admin/alerts`. Each kind
//! of alert about one thing is raised at most once a minute, so a condition that lasts does
//! not flood the log.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

const KEEP: usize = 1000;
const QUIET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// pool_low, budget_80, budget_95, queue_long, long_wait, backend_timeout.
    pub kind: &'static str,
    /// What it is about: a pool, client, service or request.
    pub subject: String,
    pub message: String,
    pub at_ms: u64,
}

#[derive(Default)]
pub struct Alerts {
    /// The latest alerts, newest last, at most `KEEP` (for `/admin/alerts`).
    recent: Mutex<VecDeque<Alert>>,
    /// When each (kind, subject) was last raised: the same alert is not repeated within
    /// `QUIET`, so a hot path that keeps tripping a threshold does not flood the log.
    last: Mutex<HashMap<(&'static str, String), Instant>>,
    /// Each alert also goes to `/admin/events`.
    pub events: crate::base::events::Events,
}

impl Alerts {
    /// Alerts that also go to `events`.
    pub fn new(events: crate::base::events::Events) -> Self {
        Alerts { events, ..Alerts::default() }
    }

    pub fn raise(&self, kind: &'static str, subject: &str, message: String) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let key = (kind, subject.to_string());
            if last.get(&key).is_some_and(|t| t.elapsed() < QUIET) {
                return;
            }
            last.insert(key, Instant::now());
        }
        tracing::warn!("Alert {kind} ({subject}): {message}");
        let at_ms = crate::base::clock::unix_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        self.events.emit("alert", serde_json::json!({"alert": kind, "subject": subject, "message": message}));
        recent.push_back(Alert { kind, subject: subject.to_string(), message, at_ms });
    }

    pub fn list(&self) -> Vec<Alert> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeats_are_quiet() {
        let a = super::Alerts::default();
        a.raise("pool_low", "p", "one".into());
        a.raise("pool_low", "p", "two".into());
        a.raise("pool_low", "q", "three".into());
        let kinds: Vec<_> = a.list().into_iter().map(|a| a.message).collect();
        assert_eq!(kinds, ["one", "three"]);
    }
}
