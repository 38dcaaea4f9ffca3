//! The queue and jobs: status, a request's position, async jobs (enqueue, look up, cancel) and
//! synchronous execution of the same envelope. A job runs through `openai::by_model`, the very
//! path of a front-door request, so admission, budgets and wake-up behave the same.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::jobs::Outcome;
use super::parse;
use crate::admission::gate::Standing;
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::server::openai;
use policy::class::{self, Class};

const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// `{endpoint, request, priority}`: what `/api/queue/enqueue` and `/api/execute` take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(default = "default_endpoint")]
    endpoint: String,
    request: Value,
    priority: Option<String>,
}

fn default_endpoint() -> String {
    ENDPOINTS[0].to_string()
}

impl Envelope {
    /// The envelope, checked, and the id its request will run under (the caller's
    /// `x-request-id`, or a new one).
    fn accept(
        app: &App,
        caller: &Caller,
        headers: &HeaderMap,
        body: &[u8],
        background: bool,
    ) -> Result<(Envelope, String), ApiError> {
        let envelope: Envelope = parse(body)?;
        envelope.check(app, caller, background)?;
        Ok((envelope, crate::base::http::request_id(headers)))
    }

    /// Checks everything a job could fail on before it is accepted: 400/403/404 now rather
    /// than a failed job later.
    fn check(&self, app: &App, caller: &Caller, background: bool) -> Result<(), ApiError> {
        if !ENDPOINTS.contains(&self.endpoint.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "endpoint {:?} is not one of {}",
                self.endpoint,
                ENDPOINTS.join(", ")
            )));
        }
        let Some(obj) = self.request.as_object() else {
            return Err(ApiError::BadRequest("request must be a JSON object (the OpenAI request body)".into()));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) => m,
            Some(_) => return Err(ApiError::BadRequest("request.model must be a string".into())),
            None => return Err(ApiError::MissingModel),
        };
        if background && obj.get("stream") == Some(&Value::Bool(true)) {
            return Err(ApiError::BadRequest(
                "an async job cannot stream: drop \"stream\", then fetch the answer from /api/execution/{id}".into(),
            ));
        }
        if let Some(p) = &self.priority {
            Class::parse(p).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "priority must be one of immediate, fast, normal, batch, deferred (got {p:?})"
                ))
            })?;
        }
        app.route_model(model)?;
        app.check_model(caller, model)
    }

    fn into_request(self, id: &str) -> Request<Body> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&self.endpoint)
            .header(header::CONTENT_TYPE, "application/json")
            .header(crate::base::http::REQUEST_ID_HEADER, id);
        if let Some(p) = &self.priority {
            req = req.header(class::HEADER, p.as_str());
        }
        let body = serde_json::to_vec(&self.request).expect("a Value serializes");
        req.body(Body::from(body)).expect("a valid request")
    }
}

async fn run(app: Arc<App>, caller: Caller, req: Request<Body>) -> Response {
    openai::by_model(State(app), Extension(caller), req).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn queue_status(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.gate.queue_status())
}

pub async fn status(state: State<Arc<App>>) -> Json<Value> {
    queue_status(state).await
}

/// A request's standing, if the caller may see it: queued or running in the gate, or a job.
fn standing(app: &App, caller: &Caller, id: &str) -> Result<Option<Standing>, ApiError> {
    let not_found = || ApiError::NotFound(format!("request {id}"));
    if let Some((owner, standing)) = app.gate.standing(id) {
        return if caller.may_see(owner) { Ok(Some(standing)) } else { Err(not_found()) };
    }
    match app.jobs.get(id) {
        Some((owner, _, _)) if caller.may_see(owner) => Ok(None),
        _ => Err(not_found()),
    }
}

pub async fn position(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = match standing(&app, &caller, &id)? {
        Some(s) => serde_json::to_value(s).expect("serializes"),
        // A job past the gate: waiting for its service to wake, or finished.
        None => json!({"state": job_state(&app, &id)}),
    };
    let mut view = view;
    view["request_id"] = json!(id);
    Ok(Json(view))
}

fn job_state(app: &App, id: &str) -> &'static str {
    match app.jobs.get(id).map(|j| j.1) {
        Some(Outcome::Pending) => "running",
        Some(Outcome::Done { status, .. }) if (200..300).contains(&status) => "done",
        Some(Outcome::Done { .. }) => "failed",
        Some(Outcome::Cancelled) => "cancelled",
        None => "unknown",
    }
}

pub async fn enqueue(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (envelope, id) = Envelope::accept(&app, &caller, &headers, &body, true)?;
    let req = envelope.into_request(&id);
    let limit = app.config.server.max_body;
    let work = {
        let app = app.clone();
        async move {
            let resp = run(app, caller, req).await;
            let status = resp.status().as_u16();
            let body = match axum::body::to_bytes(resp.into_body(), limit).await {
                Ok(b) => {
                    serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into()))
                }
                Err(e) => json!({"error": {"message": format!("the answer could not be read: {e}")}}),
            };
            (status, body)
        }
    };
    if !app.jobs.spawn(id.clone(), caller.client, work) {
        return Err(ApiError::Conflict(format!("a job with id {id} exists already")));
    }
    let body = json!({"requestId": id, "request_id": id, "state": "queued"});
    Ok((StatusCode::ACCEPTED, [(crate::base::http::REQUEST_ID_HEADER, id)], Json(body)).into_response())
}

/// Runs the envelope and answers with the upstream's response (streams too).
pub async fn execute(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (envelope, id) = Envelope::accept(&app, &caller, &headers, &body, false)?;
    Ok(run(app, caller, envelope.into_request(&id)).await)
}

pub async fn execution(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut view = match standing(&app, &caller, &id) {
        Ok(Some(s)) => serde_json::to_value(s).expect("serializes"),
        Ok(None) => {
            let (_, outcome, times) = app.jobs.get(&id).expect("standing found it");
            let mut v = json!({"state": job_state(&app, &id)});
            if let Outcome::Done { status, body } = outcome {
                v["result"] = json!({"status": status, "body": body});
            }
            v["created_at_ms"] = times["created_at_ms"].clone();
            v["finished_at_ms"] = times["finished_at_ms"].clone();
            v
        }
        // Not queued, running or a job: a finished front-door request has its usage record.
        Err(not_found) => {
            let record = usage_record(&app, &id).await?.ok_or(not_found)?;
            let owner = app.config.clients.iter().position(|c| c.name == record.client);
            if !caller.may_see(owner) {
                return Err(ApiError::NotFound(format!("request {id}")));
            }
            let ok = (200..300).contains(&record.status);
            json!({"state": if ok { "done" } else { "failed" }, "usage": record})
        }
    };
    view["request_id"] = json!(id);
    Ok(Json(view))
}

/// The usage record of a finished request, once committed.
pub async fn usage_record(app: &Arc<App>, id: &str) -> Result<Option<crate::account::store::UsageRecord>, ApiError> {
    let id = id.to_string();
    super::query(app, move |store| store.request(&id)).await
}

/// Cancels a queued or running job, or a queued front-door request.
pub async fn cancel(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let standing = standing(&app, &caller, &id)?;
    if app.jobs.cancel(&id) || (matches!(standing, Some(Standing::Queued { .. })) && app.gate.cancel(&id)) {
        return Ok(Json(json!({"request_id": id, "state": "cancelled"})));
    }
    Err(ApiError::Conflict(format!(
        "request {id} cannot be cancelled: it has finished, or it is a running front-door request (close its \
         connection to stop it)"
    )))
}

/// Takes a request out of the queue; 409 once it runs.
pub async fn dequeue(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match standing(&app, &caller, &id)? {
        Some(Standing::Queued { .. }) if app.jobs.cancel(&id) || app.gate.cancel(&id) => {
            Ok(Json(json!({"request_id": id, "state": "cancelled"})))
        }
        _ => Err(ApiError::Conflict(format!(
            "request {id} is not queued (it runs or has finished); POST /api/execution/{id}/cancel stops a job"
        ))),
    }
}
