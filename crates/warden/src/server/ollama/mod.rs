//! The Ollama dialect of the front door, on the same port, for the many tools that speak only
//! Ollama's API. Model calls (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`)
//! run through the one pipeline (keys, budgets, queue, wake, leases): to an Ollama server as
//! they are (its answer comes back as it is), to any other server translated to the OpenAI
//! dialect and their answers translated back, streams included (NDJSON). The listing calls
//! answer from warden's own state. Model management answers 501: warden's models come from
//! its config.

mod stream;
mod translate;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::base::caller::Caller;
use crate::config::ModelRef;
use crate::pipeline::{self, Inbound, Target};
use translate::Call;

/// The version reported: clients that check want at least 0.9.
const VERSION: &str = "0.12.0";

/// Ollama's "keep it loaded" (a negative keep_alive): long enough, and safe to add to a clock.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Answers over this size are not translated (an embedding of a huge batch is the largest).
const MAX_ANSWER: usize = 256 << 20;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(|| async { Json(json!({"version": VERSION})) }))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(|s, e, r| call(s, e, r, Call::Chat)))
        .route("/api/generate", post(|s, e, r| call(s, e, r, Call::Generate)))
        .route("/api/embed", post(|s, e, r| call(s, e, r, Call::Embed)))
        .route("/api/embeddings", post(|s, e, r| call(s, e, r, Call::Embeddings)))
        .route("/api/pull", post(unsupported))
        .route("/api/push", post(unsupported))
        .route("/api/create", post(unsupported))
        .route("/api/copy", post(unsupported))
        .route("/api/delete", delete(unsupported))
}

/// Every error on these routes in Ollama's shape, also those made before a handler runs (a
/// missing key, a wrong method): `{"error": {"message": …}}` becomes `{"error": …}`.
pub async fn errors(req: Request<Body>, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    let message = match &v["error"] {
        Value::String(_) => return Response::from_parts(parts, Body::from(text)),
        e => e["message"].as_str().map(str::to_string),
    };
    let message = message.unwrap_or_else(|| match String::from_utf8_lossy(&text).trim() {
        "" => parts.status.canonical_reason().unwrap_or("error").to_lowercase(),
        t => t.to_string(),
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(json!({"error": message}).to_string()))
}

/// Errors as Ollama writes them.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn unsupported(req: Request<Body>) -> Response {
    let what = req.uri().path().trim_start_matches("/api/").to_string();
    let msg = format!("{what} is not supported: warden manages models through its config (warden.toml)");
    error(StatusCode::NOT_IMPLEMENTED, msg)
}

/// A model call: translated in, run through the pipeline, translated out.
async fn call(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    req: Request<Body>,
    call: Call,
) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let limit = app.config().server.max_body;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {limit} bytes")),
    };
    let asked: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let openai = match translate::request(call, &asked) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let keep = match keep_alive_of(&asked["keep_alive"]) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let model = asked["model"].as_str().unwrap_or_default().to_string();
    if let Ok(route) = pipeline::route::model(&app, &model) {
        let native = call.native();
        if pipeline::speaks(&app, &route, native) {
            // An Ollama server: the request as it is, and its answer as it is.
            parts.headers.remove(header::CONTENT_LENGTH);
            let req = Request::from_parts(parts, Body::from(bytes));
            let answer = pipeline::run(app.clone(), Inbound::new(caller, req, Target::Model(native))).await;
            set_keep_alive(&app, &model, keep);
            return answer.unwrap_or_else(|e| error(e.status_code(), e.message()));
        }
    }
    let endpoint = call.endpoint(&asked);
    parts.method = Method::POST;
    parts.uri = endpoint.path().parse().expect("a static path");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let req = Request::from_parts(parts, Body::from(openai.to_string()));
    let answer = match pipeline::run(app.clone(), Inbound::new(caller, req, Target::Model(endpoint))).await {
        Ok(r) => r,
        Err(e) => return error(e.status_code(), e.message()),
    };
    set_keep_alive(&app, &model, keep);
    let (mut parts, body) = answer.into_parts();
    if !parts.status.is_success() {
        let text = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        let msg = v["error"]["message"].as_str().or(v["error"].as_str()).map(str::to_string);
        return error(parts.status, msg.unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned()));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    if call.streams(&asked) {
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        return Response::from_parts(parts, stream::ndjson(call, model, body, started));
    }
    let whole = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("the model's answer broke off: {e}")),
    };
    let Ok(v) = serde_json::from_slice::<Value>(&whole) else {
        return error(StatusCode::BAD_GATEWAY, "the model's answer is not JSON");
    };
    let out = translate::answer(call, &model, &v, started.elapsed().as_nanos() as u64);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(out.to_string()))
}

/// A request's `keep_alive` ("5m", 300, 0, -1): how long its model stays loaded after the
/// answer (0: unload once done; negative: keep it); None when the request names none.
fn keep_alive_of(given: &Value) -> Result<Option<Duration>, String> {
    let bad = || format!("keep_alive: {given} is not a duration (\"5m\", 300, 0 or -1)");
    match given {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(s) if s < 0.0 => Ok(Some(FOREVER)),
            Some(s) => Ok(Some(Duration::from_secs_f64(s.min(FOREVER.as_secs_f64())))),
            None => Err(bad()),
        },
        Value::String(s) if s.starts_with('-') => Ok(Some(FOREVER)),
        Value::String(s) => crate::config::units::parse_duration(s).map(|d| Some(d.min(FOREVER))).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Sets the model's keep-alive in warden (none given: back to the configured one, as Ollama
/// applies its default to a request that names none).
fn set_keep_alive(app: &App, model: &str, keep: Option<Duration>) {
    if let Ok(route) = pipeline::route::model(app, model) {
        let index = route.model.map_or(0, |m| m.index);
        app.services()[route.service].set_keep_alive(index, keep);
        app.idle_changed.notify_one();
    }
}

fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// What Ollama says of a model: name, size, a stable digest, details.
fn model_entry(app: &App, name: &str, at: ModelRef) -> Value {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let started = SystemTime::UNIX_EPOCH + Duration::from_secs(app.started_unix);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(started),
        "size": app.coordinator.need(at.service),
        "digest": digest,
        "details": {"format": "gguf", "family": "", "families": null, "parameter_size": "", "quantization_level": ""},
    })
}

async fn tags(State(app): State<Arc<App>>) -> Json<Value> {
    let models: Vec<Value> = app.directory.all().into_iter().map(|(m, at)| model_entry(&app, &m, at)).collect();
    Json(json!({"models": models}))
}

/// The models loaded now, with their real size and when warden will let them go.
async fn ps(State(app): State<Arc<App>>) -> Json<Value> {
    let mut models = Vec::new();
    for (name, at) in app.directory.all() {
        let svc = &app.services()[at.service];
        let cfg = &svc.shared.config();
        let (loaded, idle_since, keep) = {
            let live = svc.shared.live();
            let keep = live.models.get(at.index).and_then(|m| m.keep_alive);
            (live.model_loaded(at.index), live.models.get(at.index).and_then(|m| m.idle_since), keep)
        };
        if !loaded {
            continue;
        }
        let size = app.coordinator.measure(at.service).await.unwrap_or_else(|| app.coordinator.need(at.service));
        let keep = keep.or(cfg.idle_timeout).unwrap_or(app.config().idle.timeout);
        let left = idle_since.map_or(keep, |since| keep.saturating_sub(since.elapsed()));
        let expires = SystemTime::now().checked_add(left).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut entry = model_entry(&app, &name, at);
        entry["size"] = json!(size);
        entry["size_vram"] = json!(if cfg.device == crate::config::Device::Gpu { size } else { 0 });
        entry["expires_at"] = json!(rfc3339(expires));
        models.push(entry);
    }
    Json(json!({"models": models}))
}

async fn show(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = asked["model"].as_str().or(asked["name"].as_str()) else {
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let Ok(route) = pipeline::route::model(&app, name) else {
        return error(StatusCode::NOT_FOUND, format!("model '{name}' not found"));
    };
    let at = ModelRef { service: route.service, index: route.model.map_or(0, |m| m.index) };
    let entry = model_entry(&app, name, at);
    Json(json!({
        "modelfile": format!("# served by warden from service {}\nFROM {name}\n", app.services()[at.service].name()),
        "parameters": "",
        "template": "",
        "details": entry["details"],
        "model_info": {},
        "capabilities": ["completion"],
        "modified_at": entry["modified_at"],
    }))
    .into_response()
}
