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

/// A task's name as its performance figures keep it: at most this many bytes.
const LABEL_BYTES: usize = 64;

/// The task a request names, as recorded with its performance sample (a day of them, up to
/// 200,000, and their rows): cut to [`LABEL_BYTES`], since the name is free text from the
/// client and a 60 KiB header on every request would otherwise be kept 200,000 times.
pub fn label(headers: &HeaderMap) -> Option<std::sync::Arc<str>> {
    // ASCII: `of` reads the header as visible ASCII only.
    of(headers).map(|task| task[..task.len().min(LABEL_BYTES)].into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_label_is_the_name_trimmed_and_bounded() {
        let label = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&TASK_HEADER, v.parse().unwrap());
            label(&h).map(|l| l.to_string())
        };
        assert_eq!(label(" summarization ").as_deref(), Some("summarization"));
        assert_eq!(label("   "), None);
        assert_eq!(label(&"x".repeat(10_000)).unwrap(), "x".repeat(LABEL_BYTES));
    }
}
