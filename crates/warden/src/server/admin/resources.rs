//! Admin API for memory orchestration: capacity and use, a dry-run plan, the saved state of
//! offloaded services, and waiting for their reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::config::Device;
use crate::resources::estimate::estimate;
use crate::server::extract::{Path, Query};
use policy::planner::Plan;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/resources", get(resources))
        .route("/admin/plan/{service}", get(plan))
        .route("/admin/saved-state", get(saved).delete(clear_saved))
        .route("/admin/reload/wait", post(wait_reloads))
}

async fn resources(State(app): State<Arc<App>>) -> Json<Value> {
    let co = &app.coordinator;
    let mut devices = serde_json::Map::new();
    for (name, device) in [("ram", Device::Cpu), ("vram", Device::Gpu)] {
        let view = match co.capacity(device) {
            None => Value::Null,
            Some(cap) => {
                let mut used = 0;
                for (i, svc) in app.services().iter().enumerate().filter(|(_, s)| !s.shared.retired()) {
                    let live = svc.shared.live();
                    let holds = matches!(live.state.as_str(), "running" | "starting" | "stopping");
                    if svc.shared.config().device == device && holds {
                        used += co.need(i);
                    }
                }
                json!({
                    "capacity_bytes": cap.total,
                    "limit_bytes": cap.limit(),
                    "used_bytes": used,
                    "free_bytes": cap.limit().saturating_sub(used),
                    "threshold": cap.threshold,
                    "reserve_bytes": cap.reserve,
                })
            }
        };
        devices.insert(name.to_string(), view);
    }
    let mut services = BTreeMap::new();
    for (i, svc) in app.services().iter().enumerate().filter(|(_, s)| !s.shared.retired()) {
        let cfg = &svc.shared.config();
        // Measured now (and remembered): it replaces the estimate from here on.
        let live_bytes = co.measure(i).await;
        services.insert(
            cfg.name.clone(),
            json!({
                "device": cfg.device,
                "estimate_bytes": estimate(cfg),
                "measured_bytes": live_bytes,
                "need_bytes": co.need(i),
                "state": svc.shared.live().state.as_str(),
                "priority": cfg.priority,
                "group": cfg.group,
                "reload": cfg.reload,
            }),
        );
    }
    Json(json!({"devices": devices, "services": services}))
}

/// What starting the service now would do; changes nothing.
async fn plan(State(app): State<Arc<App>>, Path(service): Path<String>) -> Result<Json<Value>, ApiError> {
    crate::pipeline::route::service(&app, &service)?;
    let i = app.config().service_index(&service).expect("checked");
    let name = |ids: &[usize]| ids.iter().map(|&v| app.services()[v].name().to_string()).collect::<Vec<_>>();
    let device = app.services()[i].shared.config().device;
    let body = match app.coordinator.plan_for(i).await {
        None => json!({"service": service, "device": device, "managed": false, "fits": true, "would_offload": false,
                       "victims": [], "need_bytes": app.coordinator.need(i), "free_bytes": null}),
        Some((plan, cap, _)) => {
            // `after_ms`: how long until the plan can be carried out (victims still under their
            // minimum residency); 0 when it can run now.
            let (fits, victims, after, need, free, reason) = match &plan {
                Plan::Go { victims, need, free } => (true, name(victims), Some(0), *need, Some(*free), None),
                Plan::Impossible { need, limit } => {
                    (false, vec![], None, *need, None, Some(format!("cannot fit even alone: limit is {limit} bytes")))
                }
                Plan::Wait { retry_in: Some(d), victims, need, free } => (
                    false,
                    name(victims),
                    Some(d.as_millis() as u64),
                    *need,
                    Some(*free),
                    Some(format!("room only after a minimum residency, in {} ms", d.as_millis())),
                ),
                Plan::Wait { retry_in: None, need, free, .. } => (
                    false,
                    vec![],
                    None,
                    *need,
                    Some(*free),
                    Some("the rest is held by services that may not be offloaded".to_string()),
                ),
            };
            json!({"service": service, "device": device, "managed": true, "fits": fits,
                   "would_offload": !victims.is_empty(), "victims": victims, "after_ms": after, "need_bytes": need,
                   "free_bytes": free, "limit_bytes": cap.limit(), "reason": reason})
        }
    };
    Ok(Json(body))
}

async fn saved(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!(app.coordinator.saved()))
}

async fn clear_saved(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"cleared": app.coordinator.clear_saved()}))
}

#[derive(Deserialize)]
struct WaitQuery {
    /// Seconds; default 30, at most 600.
    timeout: Option<f64>,
}

async fn wait_reloads(State(app): State<Arc<App>>, Query(q): Query<WaitQuery>) -> Result<Json<Value>, ApiError> {
    let secs = q.timeout.unwrap_or(30.0);
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(ApiError::BadRequest(format!("timeout must be a number of seconds, got {secs}")));
    }
    let pending = app.coordinator.wait_reloads(Duration::from_secs_f64(secs.min(600.0))).await;
    Ok(Json(json!({"done": pending == 0, "pending": pending})))
}
