//! OpenAI-compatible routes: the body's `model` picks the service.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request};
use axum::response::Response;
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::proxy;
use policy::estimate;

/// Reads a whole request body, refusing more than `limit` bytes (413).
pub async fn read_body(req_headers: &axum::http::HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        req_headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        use std::error::Error;
        if e.source().is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

/// The `model` field, found without building the whole document.
pub fn model_of(body: &[u8]) -> Result<Cow<'_, str>, ApiError> {
    #[derive(Deserialize)]
    struct ModelOnly<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    match serde_json::from_slice::<ModelOnly>(body) {
        Ok(ModelOnly { model: Some(m) }) => Ok(m),
        Ok(ModelOnly { model: None }) => Err(ApiError::MissingModel),
        Err(e) if e.is_data() => {
            Err(ApiError::BadRequest(format!("request body must be a JSON object with a \"model\" string: {e}")))
        }
        Err(e) => Err(ApiError::BadJson(e.to_string())),
    }
}

pub async fn by_model(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, app.config.server.max_body).await?;
    let name = model_of(&bytes)?;
    let (service, model) = app.route_model(&name)?;
    app.check_model(&caller, &name)?;
    let index = app.config.service_index(service.name()).unwrap_or(0);
    // A priced or pooled model: estimate what it may use (and bound it) before it runs.
    let (estimate, rewritten) = if app.config.model_terms.contains_key(name.as_ref()) {
        let embeddings = parts.uri.path().ends_with("/embeddings");
        let p = estimate::prepare(&bytes, embeddings, app.config.scheduler.default_max_tokens);
        (p.estimate, p.rewritten)
    } else {
        (Default::default(), None)
    };
    let request_id = crate::base::http::request_id(&parts.headers);
    let ticket = app.admit(&caller, &parts.headers, index, Some(&name), estimate, &request_id).await?;
    let acquired = service
        .acquire(Some(model))
        .await
        .map_err(|why| ApiError::Unavailable { service: service.name().to_string(), why })?;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let extras = proxy::Extras { ticket: Some(ticket), strip_client_auth: caller.warden_key, request_id, usage: true };
    let body = match rewritten {
        Some(b) => {
            let mut parts = parts;
            parts.headers.remove(header::CONTENT_LENGTH);
            return proxy::forward(&app.client, Request::from_parts(parts, Body::from(b)), &target, acquired, extras)
                .await;
        }
        None => Body::from(bytes),
    };
    proxy::forward(&app.client, Request::from_parts(parts, body), &target, acquired, extras).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model() {
        assert_eq!(model_of(br#"{"messages":[{"a":1}],"model":"tiny"}"#).unwrap(), "tiny");
        assert_eq!(model_of(br#"{"model":"t\u00e9"}"#).unwrap(), "té");
        assert!(matches!(model_of(br#"{"messages":[]}"#), Err(ApiError::MissingModel)));
        assert!(matches!(model_of(br#"{"model": 3}"#), Err(ApiError::BadRequest(_))));
        assert!(matches!(model_of(br#"[1,2]"#), Err(ApiError::BadRequest(_))));
        assert!(matches!(model_of(br#"{"model":"x""#), Err(ApiError::BadJson(_))));
        assert!(matches!(model_of(b"not json"), Err(ApiError::BadJson(_))));
    }
}
