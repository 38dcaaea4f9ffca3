//! The latest finished requests, in memory, for the dashboard's activity list
//! (`/admin/requests`) and its live feed (a `request` event each): every request, billed or
//! not, cache hits too. Bounded; the oldest go first.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::base::events::Events;

/// Requests kept (the dashboard pages through them).
const KEEP: usize = 10_000;

/// A finished request as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub at_unix_ms: u64,
    pub request_id: std::sync::Arc<str>,
    /// The client's and the service's names, shared with the config's (see `Gate`).
    pub client: std::sync::Arc<str>,
    pub model: Option<std::sync::Arc<str>>,
    pub service: std::sync::Arc<str>,
    pub class: &'static str,
    pub status: u16,
    pub duration_ms: u64,
    /// Waiting for a turn in the queue.
    pub queued_ms: u64,
    /// Waiting for the service to be ready after that (a cold start, a model load).
    pub service_wait_ms: u64,
    pub cost_micros: i64,
    pub cached: bool,
}

pub struct Recent {
    ring: Mutex<VecDeque<Finished>>,
    events: Events,
}

impl Recent {
    pub fn new(events: Events) -> Recent {
        Recent { ring: Mutex::default(), events }
    }

    pub fn record(&self, f: Finished) {
        if self.events.listening() {
            if let Ok(data) = serde_json::to_value(&f) {
                self.events.emit("request", data);
            }
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= KEEP {
            ring.pop_front();
        }
        ring.push_back(f);
    }

    /// The latest `limit` after skipping the `skip` latest, newest first.
    pub fn latest(&self, skip: usize, limit: usize) -> (usize, Vec<Finished>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (ring.len(), ring.iter().rev().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: u64) -> Finished {
        Finished {
            at_unix_ms: n,
            request_id: n.to_string().into(),
            client: "c".into(),
            model: None,
            service: "s".into(),
            class: "normal",
            status: 200,
            duration_ms: 1,
            queued_ms: 0,
            service_wait_ms: 0,
            cost_micros: 0,
            cached: false,
        }
    }

    #[test]
    fn newest_first_paged_and_bounded() {
        let r = Recent::new(Events::default());
        for n in 0..(KEEP as u64 + 5) {
            r.record(f(n));
        }
        let (total, page) = r.latest(1, 2);
        assert_eq!(total, KEEP);
        assert_eq!(page.iter().map(|x| x.at_unix_ms).collect::<Vec<_>>(), [KEEP as u64 + 3, KEEP as u64 + 2]);
    }
}
