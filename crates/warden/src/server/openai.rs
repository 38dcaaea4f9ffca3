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
use crate::config::ModelRef;
use crate::pipeline::{self, Endpoint, Inbound, Target};
use crate::server::extract::Path;

/// A model request at an OpenAI endpoint. The pipeline's own future, not an `async fn`
/// around it: a request held through a cold start or in the queue keeps only that.
pub fn by_model(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    req: Request<Body>,
) -> impl std::future::Future<Output = Result<Response, ApiError>> + Send {
    // The router sends only the endpoints' own paths here.
    let endpoint = Endpoint::from_path(req.uri().path()).unwrap_or(Endpoint::Chat);
    pipeline::run(app, Inbound::new(caller, req, Target::Model(endpoint)))
}

/// A model as OpenAI's API shows one, plus where it runs and whether it is up now.
fn model_object(app: &App, model: &str, r: ModelRef) -> Value {
    let svc = &app.services()[r.service];
    let live = svc.shared.live();
    json!({
        "id": model,
        "object": "model",
        // OpenAI's is the model's creation time; here, when this warden started serving it.
        "created": app.started_unix,
        "owned_by": "warden",
        "service": svc.name(),
        "state": live.state.as_str(),
        "loaded": live.model_loaded(r.index),
    })
}

/// Every configured (and discovered) model, sleeping ones too.
pub async fn list_models(State(app): State<Arc<App>>) -> Json<Value> {
    let data: Vec<Value> = app.directory.all().into_iter().map(|(model, r)| model_object(&app, &model, r)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}` (what the official clients' `models.retrieve` calls); ids may hold
/// slashes ("org/model").
pub async fn get_model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let route = pipeline::route::model(&app, &id)?;
    let at = ModelRef { service: route.service, index: route.model.map_or(0, |m| m.index) };
    Ok(Json(model_object(&app, &id, at)))
}
