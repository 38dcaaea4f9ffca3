//! Stage 3b: the ladder. Under memory pressure a model with a `smaller` rung is served by that
//! rung instead (and further down while the rung's device is critical); a model set to
//! `on_pressure = "degrade"` is also served by its rung when starting it would need room that
//! only offloading could make. A conversation (`x-warden-session`, or OpenAI's `user` field)
//! keeps the rung it got while it keeps coming back. Requests already running finish where
//! they are: only new requests move.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};
use serde::Deserialize;

use super::route::{self, Route};
use crate::app::App;
use crate::config::adapt::OnPressure;
use policy::planner::Plan;

/// The header that names a conversation.
pub static SESSION_HEADER: HeaderName = HeaderName::from_static("x-warden-session");

/// A request served by another rung than it asked for.
#[derive(Debug, Clone)]
pub struct Degraded {
    pub from: String,
    pub to: String,
    pub why: String,
}

impl Degraded {
    /// `x-warden-degraded`: "qwen-7b -> qwen-3b (why)".
    pub fn header(&self) -> String {
        format!("{} -> {} ({})", self.from, self.to, self.why)
    }
}

/// The session a request belongs to: its header, else the body's `user`.
fn session_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(s) = headers.get(&SESSION_HEADER).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty()) {
        return Some(s.to_string());
    }
    #[derive(Deserialize)]
    struct User {
        user: Option<String>,
    }
    serde_json::from_slice::<User>(body).ok()?.user.filter(|u| !u.is_empty())
}

/// The rung to serve `route`'s model on now, and why if not the model itself.
pub async fn choose(app: &App, route: Route, headers: &HeaderMap, body: &Bytes) -> (Route, Option<Degraded>) {
    if !app.pressure.enabled() {
        return (route, None);
    }
    let Some(asked) = route.model.as_ref().map(|m| m.name.to_string()) else { return (route, None) };
    let config = app.config_owned();
    let ladder = config.ladders.get(&asked);
    let session = session_of(headers, body);
    // A pinned conversation keeps its rung while that rung exists.
    if let Some(s) = &session {
        if let Some(rung) = app.pressure.sessions.get(s, &asked) {
            if rung == asked {
                return (route, None);
            }
            match route::model(app, &rung) {
                Ok(r) => {
                    let why = "this session was served by it".to_string();
                    return (r, Some(Degraded { from: asked, to: rung, why }));
                }
                Err(_) => app.pressure.sessions.forget(s, &asked),
            }
        }
    }
    let Some(first) = ladder.and_then(|l| l.smaller.clone()) else { return (route, None) };
    let device = app.config().services[route.service].device;
    let why = if app.pressure.degraded(device) {
        Some(app.pressure.reason(device))
    } else if let Some(why) = ladder.and_then(|l| performing_badly(app, &asked, l)) {
        Some(why)
    } else if ladder.is_some_and(|l| l.on_pressure == OnPressure::Degrade) && needs_room(app, route.service).await {
        Some("starting it would need others offloaded (on_pressure = \"degrade\")".to_string())
    } else {
        None
    };
    let (served, degraded) = match why {
        None => (route, None),
        Some(why) => {
            let rung = walk_down(app, first);
            match route::model(app, &rung) {
                Ok(r) => {
                    app.pressure.degraded_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (r, Some(Degraded { from: asked.clone(), to: rung, why }))
                }
                Err(_) => (route, None),
            }
        }
    };
    if let Some(s) = &session {
        let rung = served.model.as_ref().map_or(asked.as_str(), |m| &*m.name);
        app.pressure.sessions.pin(s, &asked, rung);
    }
    (served, degraded)
}

/// From `first`, one rung down: further while each rung's own device is critical.
fn walk_down(app: &App, first: String) -> String {
    let mut rung = first;
    let config = app.config();
    while let (Some(r), Some(next)) =
        (config.models.get(&rung), config.ladders.get(&rung).and_then(|l| l.smaller.clone()))
    {
        if !app.pressure.critical(config.services[r.service].device) {
            break;
        }
        rung = next;
    }
    rung
}

/// The rung pressure alone sends a new request for `model` to now (no session): its own name
/// when not degraded.
pub fn rung_now(app: &App, model: &str) -> String {
    let config = app.config();
    let first = config.ladders.get(model).and_then(|l| l.smaller.clone());
    let device = config.models.get(model).map(|r| config.services[r.service].device);
    match (first, device) {
        (Some(first), Some(device)) if app.pressure.degraded(device) => walk_down(app, first),
        _ => model.to_string(),
    }
}

/// Over the bounds set for it (`max_p95`, `max_failure_rate`), the model counts as pressured:
/// why, if so. Judged on its last five minutes, once it has answered a few requests.
fn performing_badly(app: &App, model: &str, ladder: &crate::config::adapt::Ladder) -> Option<String> {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);
    const AT_LEAST: usize = 5;
    if ladder.max_p95.is_none() && ladder.max_failure_rate.is_none() {
        return None;
    }
    let s = app.performance.model(model, WINDOW).filter(|s| s.requests >= AT_LEAST)?;
    if let Some(max) = ladder.max_p95.filter(|m| u128::from(s.p95_ms) > m.as_millis()) {
        return Some(format!("p95 latency {} ms over max_p95 {} ms", s.p95_ms, max.as_millis()));
    }
    let failing = 1.0 - s.success_rate;
    ladder
        .max_failure_rate
        .filter(|&m| failing > m)
        .map(|m| format!("failure rate {:.0} % over max_failure_rate {:.0} %", failing * 100.0, m * 100.0))
}

/// Whether starting `service` now would need room made by offloading others.
async fn needs_room(app: &App, service: usize) -> bool {
    let running = app.services()[service].shared.live().state == policy::lifecycle::State::Running;
    if running {
        return false;
    }
    match app.coordinator.plan_for(service).await {
        Some((Plan::Go { victims, .. }, _, _)) => !victims.is_empty(),
        Some((Plan::Wait { .. }, _, _)) => true,
        _ => false,
    }
}

/// The body with its `model` set to the rung that serves it.
pub fn retarget(body: &Bytes, model: &str) -> Bytes {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else { return body.clone() };
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("model".into(), model.into());
    }
    serde_json::to_vec(&doc).map(Bytes::from).unwrap_or_else(|_| body.clone())
}
