//! Admin API for the resource manager: pause and resume dispatch, alerts, and any client's
//! usage and the queue (the views `warden usage` and `warden queue` print).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::server::api::{client_named, client_usage, queue_status};
use crate::server::extract::Path;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/scheduler/start", post(start))
        .route("/admin/scheduler/stop", post(stop))
        .route("/admin/alerts", get(alerts))
        .route("/admin/queue", get(queue_status))
        .route("/admin/usage/{client}", get(usage))
}

async fn start(State(app): State<Arc<App>>) -> Json<Value> {
    app.gate.set_paused(false);
    Json(json!({"scheduler": "running"}))
}

/// Requests keep queueing (bounded by the queue's limits) but none is dispatched.
async fn stop(State(app): State<Arc<App>>) -> Json<Value> {
    app.gate.set_paused(true);
    Json(json!({"scheduler": "stopped"}))
}

async fn alerts(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"alerts": app.gate.alerts.list()}))
}

async fn usage(State(app): State<Arc<App>>, Path(client): Path<String>) -> Result<Json<Value>, ApiError> {
    let admin = Caller { client: None, admin: true, warden_key: false };
    let index = client_named(&app, &admin, &client)?;
    Ok(Json(client_usage(app, index, None).await?))
}
