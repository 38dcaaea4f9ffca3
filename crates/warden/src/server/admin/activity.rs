//! What the dashboard reads besides services and memory: the latest finished requests
//! (`/admin/requests`, paged, newest first), every client's budget, holds and pools
//! (`/admin/clients`), and a service's log tail (`/admin/services/{name}/logs`).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::server::extract::{Path, Query};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/requests", get(requests))
        .route("/admin/clients", get(clients))
        .route("/admin/services/{name}/logs", get(logs))
}

#[derive(Deserialize)]
struct Page {
    skip: Option<usize>,
    limit: Option<usize>,
}

async fn requests(State(app): State<Arc<App>>, Query(page): Query<Page>) -> Json<Value> {
    let (total, requests) = app.gate.recent.latest(page.skip.unwrap_or(0), page.limit.unwrap_or(100).min(1000));
    Json(json!({"total": total, "requests": requests}))
}

async fn clients(State(app): State<Arc<App>>) -> Json<Value> {
    let config = app.config();
    let slots = std::iter::once(None).chain((0..config.clients.len()).map(Some));
    let clients: Vec<Value> = slots
        .map(|c| {
            let (running, queued) = app.gate.client_load(c);
            json!({
                "name": app.gate.client_name(c),
                "tier": c.map(|i| config.clients[i].tier.clone()),
                "budget": app.gate.budget_view(c),
                "pools": app.gate.pools_view(c),
                "running": running,
                "queued": queued,
            })
        })
        .collect();
    Json(json!({"clients": clients}))
}

#[derive(Deserialize)]
struct Lines {
    lines: Option<usize>,
}

async fn logs(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<Lines>,
) -> Result<Json<Value>, ApiError> {
    let svc = super::services::service(&app, &name)?;
    let log = svc.shared.log.clone();
    let n = q.lines.unwrap_or(200).min(5000);
    let lines = tokio::task::spawn_blocking(move || log.file_tail(n)).await.unwrap_or_default();
    Ok(Json(json!({"service": name, "lines": lines})))
}
