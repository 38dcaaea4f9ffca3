//! The request path, written once. Every entry calls it: the OpenAI routes and passthrough
//! (`server/`), async jobs and `/api/execute` (`server/api/queue.rs`), and the dry-run checks
//! (`/api/cost/estimate`, `/api/resources/check`), which stop before admission.
//!
//! The stages, in order (each a small function in its own file):
//!
//! 1. `read`     — the body, bounded by `max_body` (413 past it)
//! 2. `find`     — the model the body names (OpenAI dialect), or the service in the path
//! 3. `route`    — model → service (configured or discovered); then `ladder` (under
//!    pressure, a smaller rung instead; a session keeps its rung), `downgrade` (the
//!    optimizer's rung for batch work or a client near its budget), and `task` (the
//!    `x-warden-task` presets a request does not set itself)
//! 4. `allow`    — may this client use this model (403)
//! 5. `estimate` — what it may use (tokens, cost); bound `max_tokens`, ask streams for usage;
//!    then `cache`: a stored answer ends the request here (no budget, queue or service)
//! 6. `admit`    — budget reserved, a turn in the priority queue (bounded)
//! 7. `acquire`  — a lease on the service: wake it, make room, wait (bounded)
//! 8. `forward`  — stream the request and the answer through; `fallback`: a failure before
//!    any byte reached the client tries the model's next `fallback`
//! 9. `settle`   — when the answer's body ends: real usage and cost, lease and capacity freed
//!
//! A new stage (cache lookup, model ladder, fallback, another dialect) is one new file and one
//! line in [`run`].

mod acquire;
mod admit;
mod allow;
pub mod analyze;
mod cache;
mod coalesce;
mod downgrade;
mod estimate;
mod fallback;
mod find;
mod forward;
pub mod ladder;
mod limits;
mod read;
pub mod route;
mod settle;
pub mod task;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::Request;
use axum::response::Response;
use policy::estimate::Estimate;

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
pub use admit::{class_of, parse_class};
pub use cache::CACHE_HEADER;
pub use find::{model_of, nesting_within};
pub use forward::COLD_START_HEADER;
pub use route::Route;

/// The endpoints a model request may call: OpenAI's, or Ollama's own when the request is
/// passed through natively to an Ollama server. Which one it is decides how its cost is
/// estimated (an embedding has no output; Ollama bounds output by `options.num_predict`), so it
/// is decided here once, from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OllamaEmbeddings,
}

impl Endpoint {
    /// The OpenAI endpoints (those a job or a dry run may name).
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::OllamaChat => "/api/chat",
            Endpoint::OllamaGenerate => "/api/generate",
            Endpoint::OllamaEmbed => "/api/embed",
            Endpoint::OllamaEmbeddings => "/api/embeddings",
        }
    }

    /// In Ollama's dialect: only an Ollama server can take it as it is.
    pub fn ollama(self) -> bool {
        matches!(
            self,
            Endpoint::OllamaChat | Endpoint::OllamaGenerate | Endpoint::OllamaEmbed | Endpoint::OllamaEmbeddings
        )
    }

    /// Its answer has no generated output to pay for.
    pub fn embeds(self) -> bool {
        matches!(self, Endpoint::Embeddings | Endpoint::OllamaEmbed | Endpoint::OllamaEmbeddings)
    }

    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// For a dry run that names no endpoint: an embeddings request by its shape (`input`, and
    /// no `messages` or `prompt`), else a chat completion.
    pub fn for_body(body: &[u8]) -> Endpoint {
        #[derive(serde::Deserialize)]
        struct Shape {
            input: Option<serde::de::IgnoredAny>,
            messages: Option<serde::de::IgnoredAny>,
            prompt: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_slice::<Shape>(body) {
            Ok(Shape { input: Some(_), messages: None, prompt: None }) => Endpoint::Embeddings,
            _ => Endpoint::Chat,
        }
    }

    /// Every endpoint's path, for error messages.
    pub fn list() -> String {
        Endpoint::ALL.map(Endpoint::path).join(", ")
    }
}

/// What a request is for.
pub enum Target {
    /// An OpenAI-dialect request: the body's `model` picks the service.
    Model(Endpoint),
    /// Any HTTP request to a named service (`/svc/{service}/{path}`), its body streamed.
    Service { name: String, path: String },
}

/// A request as it came in at any front door, before the pipeline runs.
pub struct Inbound {
    pub caller: Caller,
    /// Method, URI (its query is kept) and headers as the client sent them.
    pub parts: Parts,
    pub body: Body,
    pub target: Target,
}

impl Inbound {
    pub fn new(caller: Caller, req: Request<Body>, target: Target) -> Inbound {
        let (parts, body) = req.into_parts();
        Inbound { caller, parts, body, target }
    }
}

/// A request read, routed, allowed and estimated: everything decided before admission.
pub struct Planned {
    pub route: Route,
    pub estimate: Estimate,
    /// The body to send: the client's, or the rewrite the estimate asked for.
    body: Body,
    /// What the service is sent ("/v1/chat/completions?…", "/{path}?…").
    target: String,
    /// Read the answer's `usage` to settle (model requests).
    usage: bool,
    /// Served by another rung than asked for (memory pressure), and why: told to the client.
    degraded: Option<ladder::Degraded>,
    /// The request as it came, kept to try it again on a fallback model (model requests).
    again: Option<fallback::Again>,
    /// What the response cache does for it (None: no cache, or not a model request).
    cache: Option<cache::Plan>,
    /// Sent one rung down by the optimizer (told to the client, and its saving recorded).
    downgraded: Option<downgrade::Downgrade>,
    /// An embeddings request for a model that coalesces: its settings and the body as sent.
    coalesce: Option<(crate::config::Coalesce, Bytes)>,
    /// A hash of the path and body as asked, for the usage record (model requests).
    body_hash: Option<i64>,
    /// The body is sent gzip-compressed (`compress_upstream`).
    gzipped: bool,
}

/// Runs a request through every stage and answers with the service's response, whose body
/// settles the request (stage 9) when it ends.
///
/// Not an `async fn`: what a request held in admission or through a cold start keeps alive
/// (thousands may be held at once) is this future, so it keeps only two boxed futures in turn,
/// not the largest state any stage could reach (a future reserves room for every stage it
/// awaits, and an `async fn` keeps its arguments twice: rust-lang/rust#62958). Preparing (read,
/// plan, cache lookups) is boxed here, done and freed before the request is sent.
#[allow(clippy::manual_async_fn)]
pub fn run(app: Arc<App>, inbound: Inbound) -> impl std::future::Future<Output = Result<Response, ApiError>> + Send {
    let prepared = Box::pin(prepare(app.clone(), inbound));
    async move {
        let (sent, cached) = match prepared.await? {
            Prepared::Answered(hit) => return Ok(hit),
            Prepared::Send(sent, cached) => (sent, cached),
        };
        let resp = sent.await?;
        Ok(cache::fill(&app, cached, resp))
    }
}

/// What preparing a request came to.
enum Prepared {
    /// Answered from the cache.
    Answered(Response),
    /// To send (admission and on: `attempt`, or `fallback::run` for a model with fallbacks),
    /// and what the cache does with the answer.
    Send(futures_util::future::BoxFuture<'static, Result<Response, ApiError>>, Option<cache::Plan>),
}

/// Stages 1–5 and the cache lookups.
async fn prepare(app: Arc<App>, inbound: Inbound) -> Result<Prepared, ApiError> {
    let Inbound { caller, mut parts, body, target } = inbound;
    let request_id = crate::base::http::request_id(&parts.headers);
    let mut planned = plan(&app, &caller, &mut parts, body, target).await?;
    let mut cached = planned.cache.take();
    if let Some(plan) = &mut cached {
        if let Some(hit) = cache::answer(&app, &caller, &parts.headers, &planned.route, plan, &request_id).await {
            return Ok(Prepared::Answered(hit));
        }
        // The semantic lookup may wait on an embedding model: it waits with its head copied.
        read::own(&mut parts);
        let near = cache::semantic(&app, &caller, &parts.headers, &planned.route, plan, &request_id);
        if let Some(hit) = Box::pin(near).await {
            return Ok(Prepared::Answered(hit));
        }
    }
    let sent: futures_util::future::BoxFuture<'static, _> = match planned.again.take() {
        // A model with fallbacks: each attempt that fails before answering tries the next.
        Some(again) => {
            let fallbacks = fallback::list(&app, &planned);
            Box::pin(fallback::run(app, caller, again, planned, request_id, fallbacks))
        }
        None => Box::pin(attempt(app, caller, parts, planned, request_id)),
    };
    Ok(Prepared::Send(sent, cached))
}

/// Stages 6–8 for one model: admit, acquire, forward.
///
/// An `async move` block rather than an `async fn`: an async fn keeps its arguments twice in
/// its future (as passed, and moved into the body's locals; rust-lang/rust#62958), and this
/// future is what a request held in admission or through a cold start keeps alive (~0.9 KB of
/// the request and its plan, thousands of times over).
#[allow(clippy::manual_async_fn)]
fn attempt(
    app: Arc<App>,
    caller: Caller,
    mut parts: Parts,
    planned: Planned,
    request_id: Arc<str>,
) -> impl std::future::Future<Output = Result<Response, ApiError>> + Send {
    async move {
        let (app, caller) = (&app, &caller);
        let class = admit::class_of(app, &parts.headers)?;
        // Boxed, as is the ticket it returns: both are large, and a future reserves room for its
        // largest state for as long as it lives (a request queued here, or waiting for the
        // service, would keep room for both).
        let admitted = Box::pin(admit::admit(app, caller, class, &planned.route, planned.estimate, &request_id));
        // A request that waits (here, or for its service below) copies its head first.
        let mut owned = false;
        let mut ticket = Box::new(read::owned_if_waiting(&mut parts, &mut owned, admitted).await?);
        ticket.downgraded_from = planned.downgraded.as_ref().map(|d| d.from.clone());
        ticket.body_hash = planned.body_hash;
        // Admission read the clock as it let the request in: the wait for the service counts
        // from there.
        let waited = ticket.started();
        let perf = planned.route.model.as_ref().map(|m| forward::Probe {
            tracker: app.performance.clone(),
            metrics: app.metrics.clone(),
            label: match app.config().models.contains_key(&*m.name) {
                true => m.name.clone(),
                false => "other".into(),
            },
            model: m.name.clone(),
            task: task::label(&parts.headers),
            // Until it is sent: a request that fails before is timed from here.
            sent: waited,
        });
        let acquiring = std::pin::pin!(acquire::acquire(app, &planned.route));
        let acquired = match read::owned_if_waiting(&mut parts, &mut owned, acquiring).await {
            Ok(a) => a,
            Err(e) => {
                // A model that could not be reached counts as a failure in its figures.
                if let Some(p) = perf {
                    p.failed();
                }
                return Err(e);
            }
        };
        ticket.service_wait = waited.elapsed();
        let extras = forward::Extras {
            ticket,
            strip_client_auth: caller.warden_key,
            request_id,
            usage: planned.usage,
            model: planned.route.model.as_ref().map(|m| m.name.clone()),
            degraded: planned.degraded.as_ref().map(ladder::Degraded::header),
            optimized: planned.downgraded.as_ref().map(downgrade::Downgrade::header),
            perf,
        };
        if let (Some((settings, bytes)), Some(model)) = (planned.coalesce, &planned.route.model) {
            // It waits for others to coalesce with.
            if !owned {
                read::own(&mut parts);
            }
            let sent = coalesce::forward(app, settings, &model.name, parts, bytes, &planned.target, acquired, extras);
            return Box::pin(sent).await;
        }
        if planned.gzipped {
            parts.headers.insert(axum::http::header::CONTENT_ENCODING, axum::http::HeaderValue::from_static("gzip"));
        }
        let req = Request::from_parts(parts, planned.body);
        // Boxed, as is the coalesced send above, for the reason given in `run`.
        Box::pin(forward::forward(req, &planned.target, acquired, extras)).await
    }
}

/// Stages 1–5: read, find, route (and ladder, task), allow, estimate.
async fn plan(app: &App, caller: &Caller, parts: &mut Parts, body: Body, target: Target) -> Result<Planned, ApiError> {
    let limit = app.config().server.max_body;
    match target {
        Target::Model(endpoint) => {
            let mut bytes = read::whole(&parts.headers, body, limit).await?;
            let asked = route_allowed(app, caller, &find::model_of(&bytes)?)?;
            let (mut route, mut degraded) = ladder::choose(app, asked.clone(), &parts.headers, &bytes).await;
            if allow::check(app, caller, &route).is_err() || !speaks(app, &route, endpoint) {
                // The client may not use the rung (or its server cannot take the request as it
                // is): it stays on the model it asked for.
                (route, degraded) = (asked, None);
            }
            let mut downgraded = None;
            if degraded.is_none() {
                if let Some((r, d)) = downgrade::choose(app, caller, &parts.headers, &route) {
                    if allow::check(app, caller, &r).is_ok() && speaks(app, &r, endpoint) {
                        bytes = ladder::retarget(&bytes, &d.to);
                        (route, downgraded) = (r, Some(d));
                    }
                }
            }
            if let Some(d) = &degraded {
                bytes = ladder::retarget(&bytes, &d.to);
            }
            if let Some(b) = task::apply(app, &parts.headers, &bytes) {
                bytes = b;
            }
            // The body sent is rebuilt (a rung, a preset, an estimate's bound): its length is
            // the body's own, never the client's header.
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            let target = parts.uri.path_and_query().map_or(endpoint.path(), |p| p.as_str()).to_string();
            let cached = cache::plan(app, caller, &parts.headers, endpoint.path(), &route, &bytes);
            let mut planned = model_plan(app, route, endpoint, bytes.clone(), target, degraded);
            planned.cache = cached;
            planned.downgraded = downgraded;
            // Only for a request that gets a usage row: SHA-256 is 6 % of a warm request's work.
            let model = planned.route.model.as_ref().map(|m| &*m.name);
            planned.body_hash = app.gate.accounts(model).then(|| body_hash(endpoint.path(), &bytes));
            // Kept only for a model with fallbacks (the head is copied for each attempt), and kept
            // for the whole request: its own copy, not slices of hyper's read buffer.
            let fallbacks = !fallback::list(app, &planned).is_empty();
            if fallbacks {
                read::own(parts);
            }
            planned.again = fallbacks.then(|| fallback::Again {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                endpoint,
                body: bytes,
            });
            Ok(planned)
        }
        Target::Service { name, path } => {
            let body = read::streamed(&parts.headers, body, limit)?;
            let route = route::service(app, &name)?;
            let target = match parts.uri.query() {
                Some(q) => format!("/{path}?{q}"),
                None => format!("/{path}"),
            };
            Ok(Planned {
                route,
                estimate: Estimate::default(),
                body,
                target,
                usage: false,
                degraded: None,
                again: None,
                cache: None,
                downgraded: None,
                coalesce: None,
                body_hash: None,
                gzipped: false,
            })
        }
    }
}

/// Stage 5 for a model request routed to `route`: its estimate (and bounded body).
fn model_plan(
    app: &App,
    route: Route,
    endpoint: Endpoint,
    bytes: Bytes,
    target: String,
    degraded: Option<ladder::Degraded>,
) -> Planned {
    let estimated = estimate::request(app, &route, endpoint, bytes);
    let coalesce = match (endpoint, &route.model) {
        (Endpoint::Embeddings, Some(m)) => app.config().coalesce.get(&*m.name).map(|c| (*c, estimated.body.clone())),
        _ => None,
    };
    let (body, gzipped) = match gzip_for(app, &route, &estimated.body) {
        Some(packed) => (Body::from(packed), true),
        None => (Body::from(estimated.body), false),
    };
    Planned {
        coalesce,
        body_hash: None,
        gzipped,
        route,
        estimate: estimated.estimate,
        body,
        target,
        usage: true,
        degraded,
        again: None,
        cache: None,
        downgraded: None,
    }
}

/// Bodies over this go compressed to a service with `compress_upstream`.
const GZIP_OVER: usize = 1024;

/// The body gzip-compressed, for a service that asks for it; the bytes saved are counted.
fn gzip_for(app: &App, route: &Route, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    if body.len() <= GZIP_OVER || !app.config().services[route.service].compress_upstream {
        return None;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3), flate2::Compression::fast());
    gz.write_all(body).ok()?;
    let packed = gz.finish().ok()?;
    let saved = body.len().saturating_sub(packed.len()) as u64;
    app.upstream_compression_saved.fetch_add(saved, std::sync::atomic::Ordering::Relaxed);
    Some(packed)
}

/// Identical requests' mark in the usage: the first 8 bytes of SHA-256 over path and body.
fn body_hash(path: &str, body: &[u8]) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(path.as_bytes()).chain_update(body).finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Whether `route`'s service takes a request to `endpoint` as it is: OpenAI requests go
/// anywhere; Ollama's own only to an Ollama server.
pub fn speaks(app: &App, route: &Route, endpoint: Endpoint) -> bool {
    !endpoint.ollama() || app.config().services[route.service].api == crate::config::Api::Ollama
}

/// Stages 2–5 over a body already read, changing nothing: for estimates and checks, and to
/// refuse a job before it is accepted.
pub fn dry_run(app: &App, caller: &Caller, endpoint: Endpoint, body: Bytes) -> Result<(Route, Estimate), ApiError> {
    let route = route_allowed(app, caller, &find::model_of(&body)?)?;
    Ok((route.clone(), estimate::request(app, &route, endpoint, body).estimate))
}

/// Stages 3–4 for a model named outside a request body (`/internal/reserve`).
pub fn route_allowed(app: &App, caller: &Caller, model: &str) -> Result<Route, ApiError> {
    let route = route::model(app, model)?;
    allow::check(app, caller, &route)?;
    Ok(route)
}
