//! The OpenAI dialect of the front door: `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings` run the pipeline (the body's `model` picks the service); `/v1/models`
//! lists every model, sleeping ones too.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::Response;
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::pipeline::{self, Endpoint, Inbound, Target};

pub async fn by_model(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    // The router sends only the endpoints' own paths here.
    let endpoint = Endpoint::from_path(req.uri().path()).unwrap_or(Endpoint::Chat);
    pipeline::run(&app, Inbound::new(caller, req, Target::Model(endpoint))).await
}

/// Every configured (and discovered) model, sleeping ones too.
pub async fn list_models(State(app): State<Arc<App>>) -> Json<Value> {
    let data: Vec<Value> = app
        .directory
        .all()
        .into_iter()
        .map(|(model, r)| {
            let svc = &app.services[r.service];
            let live = svc.shared.live();
            json!({
                "id": model,
                "object": "model",
                "owned_by": "warden",
                "service": svc.name(),
                "state": live.state.as_str(),
                "loaded": live.model_loaded(r.index),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
