//! `ANY /svc/{service}/{*path}`: any HTTP request to a service (whisper, qdrant, diffusion…),
//! after waking it. The body streams through, limited to max_body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::Response;
use axum::Extension;

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::pipeline::{self, Inbound, Target};
use crate::server::extract::Path;

pub async fn root(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let target = Target::Service { name: service, path: String::new() };
    pipeline::run(app.clone(), Inbound::new(caller, req, target)).await
}

pub async fn path(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((service, path)): Path<(String, String)>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let target = Target::Service { name: service, path };
    pipeline::run(app.clone(), Inbound::new(caller, req, target)).await
}
