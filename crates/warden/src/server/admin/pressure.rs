//! `GET /admin/pressure`: the monitor's level, tier, thresholds, samples, trend and projected
//! exhaustion, each laddered model's current rung, the latest switches with their reasons, and
//! what would relieve the pressure.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::server::extract::Query;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/admin/pressure", get(pressure)).route("/admin/performance", get(performance))
}

async fn pressure(State(app): State<Arc<App>>) -> Json<Value> {
    let mut view = app.pressure.view(&app.coordinator);
    view["models"] = json!(rungs(&app));
    view["suggestions"] = json!(suggestions(&app));
    Json(view)
}

/// What a new request for each laddered model is served by now (no session).
fn rungs(app: &App) -> Vec<Value> {
    app.config()
        .ladders
        .iter()
        .map(|(model, ladder)| {
            let rung = crate::pipeline::ladder::rung_now(app, model);
            json!({"model": model, "rung": rung, "degraded": &rung != model, "smaller": ladder.smaller,
                   "fallback": ladder.fallback, "on_pressure": ladder.on_pressure})
        })
        .collect()
}

/// What would relieve memory pressure now: idle services holding memory, long idle timeouts.
fn suggestions(app: &App) -> Vec<String> {
    let settings = app.idle_settings();
    let mut out = Vec::new();
    for (i, svc) in app.services().iter().enumerate().filter(|(_, s)| !s.shared.retired()) {
        let live = svc.shared.live();
        if live.state != policy::lifecycle::State::Running || live.in_flight > 0 {
            continue;
        }
        let footprint = app.coordinator.remembered(i).unwrap_or(0);
        let idle_for = live.idle_since.map_or(0, |t| t.elapsed().as_secs());
        if footprint > 0 && idle_for >= 60 {
            out.push(format!(
                "service {} holds {} MiB and has been idle for {} s: `warden sleep {}` frees it",
                svc.name(),
                footprint >> 20,
                idle_for,
                svc.name()
            ));
        }
        let timeout = svc.shared.config().idle_timeout.unwrap_or(settings.timeout);
        if timeout.as_secs() > 600 && svc.shared.idle_sleep() {
            out.push(format!(
                "service {} sleeps only after {} min idle: a lower idle_timeout frees its memory sooner",
                svc.name(),
                timeout.as_secs() / 60
            ));
        }
    }
    out
}

#[derive(serde::Deserialize)]
pub(super) struct Since {
    /// A duration ("1h", "15m"); default one hour.
    since: Option<String>,
}

/// `GET /admin/performance?since=1h`: per model and per task, requests, success rate, p50/p95
/// latency, p50 first byte, tokens/s.
pub(super) async fn performance(
    State(app): State<Arc<App>>,
    Query(q): Query<Since>,
) -> Result<Json<Value>, crate::base::errors::ApiError> {
    let since = match q.since.as_deref() {
        None => std::time::Duration::from_secs(3600),
        Some(t) => crate::config::units::parse_duration(t)
            .map_err(|e| crate::base::errors::ApiError::BadRequest(format!("since: {e}")))?,
    };
    let (models, tasks) = app.performance.summary(since).map_err(crate::base::errors::ApiError::Internal)?;
    Ok(Json(json!({"since_ms": since.as_millis() as u64, "models": models, "tasks": tasks})))
}
