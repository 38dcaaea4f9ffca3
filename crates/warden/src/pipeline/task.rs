//! Stage 3c: task presets. A request that names its task (`x-warden-task: summarization`, free
//! text) gets the `[tasks.summarization]` parameters it does not set itself (a temperature, a
//! `max_tokens`): the client's own values always win. Before the estimate, so a preset
//! `max_tokens` bounds what is reserved.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};

use crate::app::App;

/// Made once: a lookup by `&str` parses and hashes the name each time (twice a request).
pub static TASK_HEADER: HeaderName = HeaderName::from_static("x-warden-task");

/// The task a request names, if any.
pub fn of(headers: &HeaderMap) -> Option<&str> {
    headers.get(&TASK_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty())
}

/// The body with the task's presets filled in where it sets none; None when nothing changes.
pub fn apply(app: &App, headers: &HeaderMap, body: &Bytes) -> Option<Bytes> {
    let config = app.config();
    let preset = config.tasks.get(of(headers)?)?;
    let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = doc.as_object_mut()?;
    let mut changed = false;
    for (key, value) in preset {
        if !obj.contains_key(key) {
            obj.insert(key.clone(), value.clone());
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&doc).ok().map(Bytes::from)).flatten()
}
