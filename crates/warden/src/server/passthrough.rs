//! `ANY /svc/{service}/{*path}`: any HTTP request to a service (whisper, qdrant, diffusion…),
//! after waking it. The body streams through, limited to max_body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, Request};
use axum::response::Response;
use axum::Extension;

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::proxy;

pub async fn root(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    pass(app, caller, &service, "", req).await
}

pub async fn path(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((service, path)): Path<(String, String)>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    pass(app, caller, &service, &path, req).await
}

async fn pass(
    app: Arc<App>,
    caller: Caller,
    service: &str,
    path: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let limit = app.config.server.max_body;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let svc = app.service(service)?;
    let index = app.config.service_index(service).unwrap_or(0);
    let target = match req.uri().query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    let request_id = crate::base::http::request_id(req.headers());
    let ticket = app.admit(&caller, req.headers(), index, None, Default::default(), &request_id).await?;
    let acquired =
        svc.acquire(None).await.map_err(|why| ApiError::Unavailable { service: service.to_string(), why })?;
    let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
    let extras = proxy::Extras { ticket: Some(ticket), strip_client_auth: caller.warden_key, request_id, usage: false };
    proxy::forward(&app.client, req, &target, acquired, extras).await
}
