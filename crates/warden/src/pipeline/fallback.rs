//! Stage 8b: fallback. A model request whose attempt fails before any byte reached the client
//! — its service could not start, refused the connection, timed out, or answered 5xx or 429 —
//! is tried again on the next model of its `fallback` list, re-admitted there (the budget
//! reservation moves with it: a failed attempt is charged nothing), until one answers or the
//! list ends. The answer says what was tried in `x-warden-fallbacks`. Once an answer's headers
//! have gone to the client nothing is retried, so a stream under way never is.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use axum::response::Response;

use super::{allow, attempt, ladder, route, Endpoint, Planned};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;

pub const FALLBACKS_HEADER: &str = "x-warden-fallbacks";

/// The request as it came, to send again to another model.
pub struct Again {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub endpoint: Endpoint,
    /// The body after the ladder and task presets, before the estimate's rewrite.
    pub body: Bytes,
}

/// The models to try after `planned`'s, in order (empty: no fallback, the usual case).
pub fn list(app: &App, planned: &Planned) -> Vec<String> {
    let Some(model) = planned.route.model.as_ref() else { return Vec::new() };
    app.config().ladders.get(&*model.name).map_or(Vec::new(), |l| l.fallback.clone())
}

/// Whether a failed attempt may be tried on the next model: the failure was the service's, and
/// nothing reached the client.
fn retryable(e: &ApiError) -> bool {
    matches!(e, ApiError::Unavailable { .. } | ApiError::BadGateway { .. } | ApiError::BackendTimeout { .. })
}

/// Runs `first`, then each fallback in turn while attempts fail in a way another model could
/// mend.
pub async fn run(
    app: Arc<App>,
    caller: Caller,
    again: Again,
    first: Planned,
    request_id: Arc<str>,
    fallbacks: Vec<String>,
) -> Result<Response, ApiError> {
    let mut tried: Vec<String> = Vec::new();
    let mut planned = first;
    let mut rest = fallbacks.iter();
    loop {
        let model = planned.route.model.as_ref().map_or_else(String::new, |m| m.name.to_string());
        let outcome = attempt(app.clone(), caller, again.request(), planned, request_id.clone()).await;
        let why = match &outcome {
            Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                format!("answered {}", resp.status().as_u16())
            }
            Err(e) if retryable(e) => e.code().to_string(),
            _ => return finish(outcome, tried),
        };
        // The next model this client may use that is configured.
        let next = rest.by_ref().find_map(|m| {
            let r = route::model(&app, m).ok()?;
            (allow::check(&app, &caller, &r).is_ok() && super::speaks(&app, &r, again.endpoint)).then_some(r)
        });
        let Some(next) = next else { return finish(outcome, tried) };
        tracing::info!(
            "Request {request_id}: {model} failed ({why}); trying {}",
            next.model.as_ref().map_or("?", |m| &m.name)
        );
        let to = next.model.as_ref().map_or("", |m| &*m.name);
        app.events.emit("fallback", serde_json::json!({"request_id": request_id, "from": model, "to": to, "why": why}));
        app.pressure.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tried.push(format!("{model}: {why}"));
        planned = again.plan(&app, next);
    }
}

/// The final outcome, with what was tried before it.
fn finish(outcome: Result<Response, ApiError>, tried: Vec<String>) -> Result<Response, ApiError> {
    let mut resp = outcome?;
    if !tried.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&tried.join("; ")) {
            resp.headers_mut().insert(FALLBACKS_HEADER, v);
        }
    }
    Ok(resp)
}

impl Again {
    /// A fresh request with the original head and body.
    fn request(&self) -> axum::http::request::Parts {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req.into_parts().0
    }

    /// The plan for `route`'s model: the body names it, and it is estimated (and reserved) at
    /// that model's terms.
    fn plan(&self, app: &App, route: route::Route) -> Planned {
        let name = route.model.as_ref().map_or("", |m| &*m.name).to_string();
        let body = ladder::retarget(&self.body, &name);
        super::model_plan(app, route, self.endpoint, body, self.target(), None)
    }

    fn target(&self) -> String {
        self.uri.path_and_query().map_or(self.endpoint.path(), |p| p.as_str()).to_string()
    }
}
