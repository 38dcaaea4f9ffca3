//! Typed events for `GET /admin/events` (a server-sent-event stream): service state changes,
//! model loads and unloads, offloads and reloads, degrade and upgrade, fallbacks, deferral,
//! alerts. A broadcast channel: with nobody listening an event costs one failed send; a
//! listener that falls behind skips what it missed (the stream says how many).

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events a slow listener may fall behind by before it skips some.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// "service", "model", "offload", "reload", "degrade", "upgrade", "fallback", "defer",
    /// "alert".
    pub kind: &'static str,
    pub at_unix_ms: u64,
    /// The kind's own fields.
    #[serde(flatten)]
    pub data: Value,
}

/// The hub every part that has news holds a handle to.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl Events {
    /// Tells every listener; `data` must be a JSON object (its fields sit beside `kind`).
    pub fn emit(&self, kind: &'static str, data: Value) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(Event { kind, at_unix_ms: super::clock::unix_ms(), data }));
        }
    }

    /// Someone listens (an event built for no one is work wasted on the request path).
    pub fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
