//! The resource-manager API (`/api/*`, `/internal/*`): the queue and async jobs, usage and
//! cost, resource checks, and reservations for callers outside the request path. Every route
//! needs a client key when `[clients]` is configured; a client sees only its own requests and
//! usage, the admin token sees everyone's.

mod internal;

mod optimize;
mod queue;
mod usage;

use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;

use crate::account::store::Store;
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;

pub use queue::queue_status;
pub(crate) use queue::{answer_json, call};
pub use usage::client_usage;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/queue/status", get(queue::status))
        .route("/api/queue/position/{id}", get(queue::position))
        .route("/api/queue/enqueue", post(queue::enqueue))
        .route("/api/queue/{id}", delete(queue::dequeue))
        .route("/api/execute", post(queue::execute))
        .route("/api/execution/{id}", get(queue::execution))
        .route("/api/execution/{id}/cancel", post(queue::cancel))
        .route("/api/usage/{client}", get(usage::usage))
        .route("/api/usage/{client}/current", get(usage::current))
        .route("/api/cost/estimate", post(usage::cost_estimate))
        .route("/api/cost/{id}", get(usage::cost))
        .route("/api/resources/availability", get(usage::availability))
        .route("/api/resources/check", post(usage::check))
        .route("/api/resources/estimate", post(usage::cost_estimate))
        .route("/api/optimize/stats/{client}", get(optimize::stats))
        .route("/api/optimize/analyze", post(optimize::analyze))
        .route("/api/optimize/recommendations/{client}", get(optimize::recommendations))
        .route("/internal/reserve", post(internal::reserve))
        .route("/internal/release", post(internal::release))
        .route("/internal/consume", post(internal::consume))
}

/// Reads the usage database off the async threads, after everything recorded so far is
/// committed (so a client sees its own last request).
pub async fn query<T: Send + 'static>(
    app: &App,
    read: impl FnOnce(&Store) -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    let gate = app.gate.clone();
    tokio::task::spawn_blocking(move || {
        gate.store.flush();
        read(&gate.store)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("usage lookup failed: {e}")))?
    .map_err(ApiError::Internal)
}

/// The client named in a path or body: its index (None = the anonymous client: everyone in
/// open mode, the admin's own requests otherwise), if the caller may see it.
pub fn client_named(app: &App, caller: &Caller, name: &str) -> Result<Option<usize>, ApiError> {
    let index = match app.config().clients.iter().position(|c| c.name == name) {
        Some(i) => Some(i),
        None if name == "anonymous" && (app.config().clients.is_empty() || caller.admin) => None,
        None => return Err(ApiError::NotFound(format!("client {name:?}"))),
    };
    if !caller.may_see(index) {
        return Err(ApiError::NotYours { client: caller_name(app, caller), what: format!("client {name}'s usage") });
    }
    Ok(index)
}

pub fn caller_name(app: &App, caller: &Caller) -> String {
    match caller.client {
        Some(i) => app.config().clients[i].name.clone(),
        None if caller.admin => "admin".into(),
        None => "anonymous".into(),
    }
}
