//! The queue and jobs: status, a request's position, async jobs (enqueue, look up, cancel) and
//! synchronous execution of the same envelope. A job runs through the pipeline, the very path
//! of a front-door request, so admission, budgets and wake-up behave the same.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admission::gate::Standing;
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::base::http::REQUEST_ID_HEADER;
use crate::jobs::Outcome;
use crate::pipeline::{self, Endpoint, Inbound, Target};
use crate::server::extract::Path;
use crate::server::parse_json as parse;

/// `{endpoint, request, priority}`: what `/api/queue/enqueue` and `/api/execute` take.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    endpoint: Option<String>,
    request: Value,
    priority: Option<String>,
}

/// An envelope checked and ready to run.
struct Accepted {
    caller: Caller,
    endpoint: Endpoint,
    /// The OpenAI request body, as JSON text.
    body: Bytes,
    /// Its class, as the `x-warden-priority` header would give it.
    priority: Option<String>,
    /// The caller's `x-request-id`, or a new one: the id it runs (and is looked up) under.
    id: String,
}

impl Accepted {
    /// Checks everything a job could fail on before it is accepted: 400/403/404 now rather
    /// than a failed job later. The model checks are the pipeline's own stages, run dry.
    fn new(app: &App, caller: Caller, headers: &HeaderMap, body: &[u8], background: bool) -> Result<Self, ApiError> {
        let envelope: Envelope = parse(body)?;
        let endpoint = match envelope.endpoint.as_deref() {
            None => Endpoint::Chat,
            Some(path) => Endpoint::from_path(path)
                .ok_or_else(|| ApiError::BadRequest(format!("endpoint {path:?} is not one of {}", Endpoint::list())))?,
        };
        if !envelope.request.is_object() {
            return Err(ApiError::BadRequest("request must be a JSON object (the OpenAI request body)".into()));
        }
        if background && envelope.request.get("stream") == Some(&Value::Bool(true)) {
            return Err(ApiError::BadRequest(
                "an async job cannot stream: drop \"stream\", then fetch the answer from /api/execution/{id}".into(),
            ));
        }
        if let Some(p) = &envelope.priority {
            pipeline::parse_class(app, p, "priority")?;
        }
        let body = Bytes::from(serde_json::to_vec(&envelope.request).expect("a Value serializes"));
        pipeline::dry_run(app, &caller, endpoint, body.clone())?;
        let id = crate::base::http::request_id(headers).to_string();
        Ok(Accepted { caller, endpoint, body, priority: envelope.priority, id })
    }

    /// Runs it through the pipeline; an error becomes its JSON answer.
    async fn run(self, app: Arc<App>) -> Response {
        call(&app, self.caller, self.endpoint, self.body, self.priority.as_deref(), &self.id).await
    }
}

/// Runs an OpenAI request body through the pipeline as `caller`, under request id `id` and
/// class `priority`, as a front-door request would; an error becomes its JSON answer. Jobs,
/// `/api/execute` and batch lines all run through here.
pub(crate) async fn call(
    app: &Arc<App>,
    caller: Caller,
    endpoint: Endpoint,
    body: Bytes,
    priority: Option<&str>,
    id: &str,
) -> Response {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(endpoint.path())
        .header(header::CONTENT_TYPE, "application/json")
        .header(&REQUEST_ID_HEADER, id);
    if let Some(p) = priority.and_then(|p| HeaderValue::from_str(p).ok()) {
        req = req.header(policy::class::HEADER, p);
    }
    let req = req.body(Body::from(body)).expect("a valid request");
    let inbound = Inbound::new(caller, req, Target::Model(endpoint));
    pipeline::run(app.clone(), inbound).await.unwrap_or_else(IntoResponse::into_response)
}

/// An answer's status and JSON body (a body that is not JSON becomes a string), read up to
/// `limit` bytes.
pub(crate) async fn answer_json(resp: Response, limit: usize) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = match axum::body::to_bytes(resp.into_body(), limit).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into())),
        Err(e) => json!({"error": {"message": format!("the answer could not be read: {e}")}}),
    };
    (status, body)
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
        Some(job) if caller.may_see(job.client) => Ok(None),
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
    match app.jobs.get(id).map(|j| j.outcome) {
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
    let job = Accepted::new(&app, caller, &headers, &body, true)?;
    let id = job.id.clone();
    let limit = app.config().server.max_body;
    let work = {
        let app = app.clone();
        async move { answer_json(job.run(app).await, limit).await }
    };
    if !app.jobs.spawn(id.clone(), caller.client, work) {
        return Err(ApiError::Conflict(format!("a job with id {id} exists already")));
    }
    let body = json!({"requestId": id, "request_id": id, "state": "queued"});
    Ok((StatusCode::ACCEPTED, [(REQUEST_ID_HEADER.clone(), id)], Json(body)).into_response())
}

/// Runs the envelope and answers with the upstream's response (streams too).
pub async fn execute(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(Accepted::new(&app, caller, &headers, &body, false)?.run(app).await)
}

pub async fn execution(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut view = match standing(&app, &caller, &id) {
        Ok(Some(s)) => serde_json::to_value(s).expect("serializes"),
        Ok(None) => {
            let job = app.jobs.get(&id).expect("standing found it");
            let mut v = json!({"state": job_state(&app, &id)});
            if let Outcome::Done { status, body } = job.outcome {
                v["result"] = json!({"status": status, "body": body});
            }
            v["created_at_ms"] = json!(job.created_ms);
            v["finished_at_ms"] = json!(job.finished_ms);
            v
        }
        // Not queued, running or a job: a finished front-door request has its usage record.
        Err(not_found) => {
            let record = usage_record(&app, &id).await?.ok_or(not_found)?;
            let owner = app.config().clients.iter().position(|c| c.name == record.client);
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
