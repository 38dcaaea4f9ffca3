//! Services and idle settings: list, start, stop, idle sleep on or off, model unload, and the
//! idle settings now in force.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::config::units::minutes;
use crate::pipeline::route;
use crate::server::extract::Path;
use crate::service::{ServiceHandle, StopReason};
use policy::idle::{decide, decide_model, IdleDecision, ModelDecision};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/idle-status", get(idle_status))
        .route("/admin/settings", post(settings))
        .route("/admin/services", get(services))
        .route("/admin/services/{name}/start", post(start))
        .route("/admin/services/{name}/stop", post(stop))
        .route("/admin/services/{name}/idle-sleep", post(idle_sleep))
        .route("/admin/models/{name}/unload", post(unload_model))
}

fn unix_secs(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(crate::base::clock::since_epoch(t).as_secs()))
}

/// One service as `GET /admin/services` shows it, its memory measured now.
pub async fn service_status(app: &App, svc: &ServiceHandle) -> Value {
    let meter = svc.shared.live().meter.clone();
    let rss = match meter {
        Some(m) => m.memory_bytes().await,
        None => None,
    };
    let cfg = &svc.shared.config();
    let live = svc.shared.live();
    let models: Vec<&str> = live.models.iter().map(|m| &*m.name).collect();
    let loaded: Vec<&str> =
        live.models.iter().enumerate().filter(|&(i, _)| live.model_loaded(i)).map(|(_, m)| &*m.name).collect();
    json!({
        "name": cfg.name,
        "kind": cfg.kind.name(),
        "state": live.state.as_str(),
        "pid": live.pid,
        "port": live.port,
        "models": models,
        "last_used": unix_secs(live.last_used),
        "in_flight": live.in_flight,
        // Requests sent to it at once: configured, learned from it, or the local default.
        "max_concurrent": app.config().service_index(&cfg.name).and_then(|i| app.gate.service_limit(i)),
        "queued": live.queued,
        "rss_bytes": rss,
        "last_error": live.last_error,
        "api": cfg.api.name(),
        "loaded_models": loaded,
    })
}

async fn services(State(app): State<Arc<App>>) -> Json<Value> {
    let all = futures_util::future::join_all(
        app.services().iter().filter(|s| !s.shared.retired()).map(|svc| service_status(&app, svc)),
    )
    .await;
    Json(Value::Array(all))
}

async fn idle_status(State(app): State<Arc<App>>) -> Json<Value> {
    let settings = app.idle_settings();
    let now = Instant::now();
    let mut services = BTreeMap::new();
    for svc in app.services().iter().filter(|s| !s.shared.retired()) {
        let inputs = crate::idle::inputs::service(svc, &settings);
        let (idle_for, sleeps_in) = match decide(&inputs, now) {
            IdleDecision::Never if inputs.state.as_str() == "running" => {
                (inputs.idle_since.map(|t| now - t).filter(|_| inputs.in_flight == 0), None)
            }
            IdleDecision::Never => (None, None),
            IdleDecision::Busy => (Some(Duration::ZERO), None),
            IdleDecision::SleepsIn(left) => (inputs.idle_since.map(|t| now - t), Some(left)),
            IdleDecision::Sleep { idle_for } => (Some(idle_for), Some(Duration::ZERO)),
        };
        let live = svc.shared.live();
        services.insert(
            svc.name().to_string(),
            json!({
                "last_used": unix_secs(live.last_used),
                "idle_for_minutes": idle_for.map(minutes),
                "idle_sleep_enabled": svc.shared.idle_sleep(),
                "desired": svc.shared.config().desired,
                "actual": live.state.as_str(),
                "will_sleep_in_minutes": sleeps_in.map(minutes),
            }),
        );
    }
    let mut body = settings_json(&app);
    body["services"] = json!(services);
    body["models"] = models_status(&app, &settings, now);
    body["monitor_task_running"] = json!(app.monitor_running.load(Ordering::Relaxed));
    Json(body)
}

/// Every model's keep-alive state, for `GET /admin/idle-status`.
fn models_status(app: &App, settings: &crate::config::IdleConfig, now: Instant) -> Value {
    let wall = SystemTime::now();
    let mut out = serde_json::Map::new();
    for svc in app.services().iter().filter(|s| !s.shared.retired()) {
        let cfg = &svc.shared.config();
        let inputs = crate::idle::inputs::models(svc, settings);
        let models: Vec<(Arc<str>, Option<SystemTime>, bool)> =
            svc.shared.live().models.iter().map(|m| (m.name.clone(), m.last_used, m.discovered)).collect();
        for (i, (name, last_used, discovered)) in models.into_iter().enumerate() {
            let Some(inputs) = inputs.get(i) else { continue };
            let unloads_in = match decide_model(inputs, now) {
                ModelDecision::UnloadsIn(d) => Some(d),
                ModelDecision::Unload { .. } => Some(Duration::ZERO),
                ModelDecision::NotLoaded | ModelDecision::Stays => None,
            };
            out.insert(
                name.to_string(),
                json!({
                    "last_used": unix_secs(last_used),
                    "keep_alive_until": unix_secs(unloads_in.map(|d| wall + d)),
                    "will_unload_in_minutes": unloads_in.map(minutes),
                    "provider": cfg.api.name(),
                    "service": cfg.name,
                    "loaded": inputs.loaded,
                    "discovered": discovered,
                }),
            );
        }
    }
    Value::Object(out)
}

fn settings_json(app: &App) -> Value {
    let s = app.idle_settings();
    json!({
        "idle_sleep_enabled": s.enabled,
        "idle_timeout_minutes": minutes(s.timeout),
        "model_keep_alive_hours": s.keep_alive.as_secs_f64() / 3600.0,
        "idle_check_interval_minutes": minutes(s.check_interval),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SettingsChange {
    idle_sleep_enabled: Option<bool>,
    idle_timeout: Option<f64>,
    model_keep_alive: Option<f64>,
    idle_check_interval: Option<f64>,
}

/// A positive, finite number of `unit_secs`-long units as a duration.
fn positive(field: &str, value: Option<f64>, unit_secs: f64) -> Result<Option<Duration>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v * unit_secs < 1e10 => Ok(Some(Duration::from_secs_f64(v * unit_secs))),
        Some(v) => Err(ApiError::BadRequest(format!("{field} must be a positive number, got {v}"))),
    }
}

async fn settings(State(app): State<Arc<App>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let change: SettingsChange = crate::server::parse_json(&body)?;
    // Validate everything before changing anything.
    let timeout = positive("idleTimeout", change.idle_timeout, 60.0)?;
    let keep_alive = positive("modelKeepAlive", change.model_keep_alive, 3600.0)?;
    let interval = positive("idleCheckInterval", change.idle_check_interval, 60.0)?;
    app.update_idle_settings(|s| {
        if let Some(on) = change.idle_sleep_enabled {
            s.enabled = on;
        }
        if let Some(t) = timeout {
            s.timeout = t;
        }
        if let Some(k) = keep_alive {
            s.keep_alive = k;
        }
        if let Some(i) = interval {
            s.check_interval = i;
        }
    });
    Ok(Json(settings_json(&app)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdleSleepChange {
    enabled: bool,
}

/// The service named in an admin path; 404 listing the known ones.
pub(super) fn service(app: &App, name: &str) -> Result<ServiceHandle, ApiError> {
    Ok(app.services()[route::service(app, name)?.service].clone())
}

async fn idle_sleep(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let svc = service(&app, &name)?;
    let change: IdleSleepChange = crate::server::parse_json(&body)?;
    svc.shared.set_idle_sleep(change.enabled);
    Ok(Json(json!({"service": name, "idle_sleep_enabled": change.enabled})))
}

async fn start(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let svc = service(&app, &name)?;
    // A lease taken and dropped at once: the service is ready and its idle clock starts now.
    let acquired = svc.acquire(None).await.map_err(|why| ApiError::Unavailable { service: name.clone(), why })?;
    drop(acquired);
    Ok(Json(service_status(&app, &svc).await))
}

async fn stop(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let svc = service(&app, &name)?;
    svc.stop(StopReason::Admin).await;
    Ok(Json(service_status(&app, &svc).await))
}

/// Unloads a model now; for a single-model service that means stopping the service.
async fn unload_model(State(app): State<Arc<App>>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let route = route::model(&app, &model)?;
    let svc = &app.services()[route.service];
    let index = route.model.map_or(0, |m| m.index);
    svc.unload_model(index).await.map_err(ApiError::Conflict)?;
    Ok(Json(json!({"model": model, "service": svc.name(), "unloaded": true})))
}
