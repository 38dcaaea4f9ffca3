//! The response cache stage, between estimate and admit: a request whose answer is stored is
//! answered from the cache (no budget, no pool units, no queue, no service) and recorded as a
//! cached request with what it saved; on a miss the answer is stored as it streams through,
//! once it has ended whole. Every answer says `x-warden-cache: hit | miss | bypass`.
//!
//! What may be cached and the key's text are `policy::cache`'s. The key is the hash of that
//! text plus how the answer is delivered (a stream is stored and replayed as its events, a
//! JSON answer as itself).
//!
//! The semantic cache (`[cache] semantic`, off by default): a chat request whose exact key
//! misses has its last user message embedded (by the configured embeddings model, through the
//! pipeline as the same client), and is answered from a stored answer to a request identical
//! but for that message whose embedding is near enough (`x-warden-cache: semantic`). On a miss
//! the embedding is stored with the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use policy::cache::{cacheable, key_text, semantic_parts};

use super::Route;
use crate::account::usage::{Framing, Scanner};
use crate::admission::gate::CachedAnswer;
use crate::app::App;
use crate::base::caller::Caller;
use crate::cache::{Cache, Entry, Key};

pub const CACHE_HEADER: &str = "x-warden-cache";

/// What the cache does for one request.
pub enum Plan {
    /// The cache does not apply to it (not deterministic, `when = "never"`, …).
    Bypass,
    /// `lookup`: look for a stored answer (not after `Cache-Control: no-cache`); `store`: keep
    /// this answer (not after `no-store`); `semantic`: look up by meaning too.
    Use { key: Key, lookup: bool, store: bool, semantic: Option<Semantic> },
}

/// A request's part in the semantic cache.
pub struct Semantic {
    /// The key of everything but its last user message (and how it is delivered).
    context: Key,
    /// That message.
    text: String,
    /// Its embedding, once made: stored with the answer.
    vector: Option<Vec<f32>>,
}

/// The plan for a model request with this (final) body; None when there is no cache.
pub fn plan(app: &App, caller: &Caller, headers: &HeaderMap, path: &str, route: &Route, body: &[u8]) -> Option<Plan> {
    app.cache.as_ref()?;
    let config = app.config();
    let model = route.model.as_ref()?;
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else { return Some(Plan::Bypass) };
    if !cacheable(&doc, config.cache_when(&model.name)) {
        return Some(Plan::Bypass);
    }
    let scope = match config.cache.per_client {
        true => caller.client.and_then(|c| config.clients.get(c)).map_or("anonymous", |c| c.name.as_str()),
        false => "shared",
    };
    let delivery = if doc["stream"] == serde_json::json!(true) { "stream" } else { "json" };
    let key = crate::cache::key(&format!("{}\n{delivery}", key_text(path, scope, &doc)));
    let control = headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let lookup = !control.contains("no-cache");
    let semantic = match (&config.cache.semantic, lookup) {
        (Some(_), true) => semantic_parts(path, scope, &doc).map(|(context, text)| Semantic {
            context: crate::cache::key(&format!("{context}\n{delivery}")),
            text,
            vector: None,
        }),
        _ => None,
    };
    Some(Plan::Use { key, lookup, store: !control.contains("no-store"), semantic })
}

/// The stored answer for a planned request, recorded as a cached request; None on a miss.
/// Replicas (`[state].shared`): a local miss looks in the shared cache, and a hit there is kept
/// here too.
pub async fn answer(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    route: &Route,
    plan: &Plan,
    request_id: &str,
) -> Option<Response<Body>> {
    let started = Instant::now();
    let (Plan::Use { key, lookup: true, .. }, Some(cache)) = (plan, app.cache.as_ref()) else { return None };
    let entry = match cache.get(key) {
        Some(entry) => entry,
        None => {
            let entry = Box::pin(app.gate.shared.as_ref()?.answer(key, cache.max_entry())).await?;
            cache.put(key, &entry);
            entry
        }
    };
    Some(serve(app, caller, headers, route, entry, request_id, started, "hit"))
}

/// A stored answer to a request that differs only in a last user message near this one's
/// (`[cache] semantic`); None on a miss, or when the message could not be embedded. The
/// embedding is kept in the plan, to be stored with this request's answer.
pub async fn semantic(
    app: &Arc<App>,
    caller: &Caller,
    headers: &HeaderMap,
    route: &Route,
    plan: &mut Plan,
    request_id: &str,
) -> Option<Response<Body>> {
    let started = Instant::now();
    let Plan::Use { semantic: Some(s), .. } = plan else { return None };
    let config = app.config().cache.semantic.clone()?;
    let cache = app.cache.clone()?;
    let vector = embed(app, caller, &config.model, &s.text).await?;
    let found = cache.nearest(&s.context, &vector, config.threshold);
    s.vector = Some(vector);
    let entry = cache.get(&found?.0)?;
    Some(serve(app, caller, headers, route, entry, request_id, started, "semantic"))
}

/// The embedding of `text` by `model`, asked through the pipeline as `caller` (it is real work,
/// on the client's budget). A boxed `Send` future by its signature: the pipeline calls itself
/// here, and a named type is what lets the compiler see the recursion is `Send`.
fn embed<'a>(
    app: &'a Arc<App>,
    caller: &'a Caller,
    model: &'a str,
    text: &'a str,
) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<f32>>> + Send + 'a>> {
    use super::{Endpoint, Inbound, Target};
    Box::pin(async move {
        let body = serde_json::json!({"model": model, "input": text}).to_string();
        let req = axum::http::Request::post(Endpoint::Embeddings.path())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .ok()?;
        let inbound = Inbound::new(*caller, req, Target::Model(Endpoint::Embeddings));
        let resp = match super::run(app.clone(), inbound).await {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => {
                tracing::warn!("the semantic cache's embedding by {model} failed: {}", resp.status());
                return None;
            }
            Err(e) => {
                tracing::warn!("the semantic cache's embedding by {model} failed: {e:?}");
                return None;
            }
        };
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.ok()?;
        let answer: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        answer["data"][0]["embedding"].as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
    })
}

/// Answers with a stored entry, recorded as a cached request; `mark` is the cache header.
#[allow(clippy::too_many_arguments)]
fn serve(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    route: &Route,
    entry: Entry,
    request_id: &str,
    started: Instant,
    mark: &'static str,
) -> Response<Body> {
    let model = route.model.as_ref().map_or("", |m| &*m.name);
    let class = super::admit::class_of(app, headers).unwrap_or(policy::class::Class::Normal);
    app.gate.record_cached(CachedAnswer {
        client: caller.client,
        request_id: request_id.to_string(),
        model,
        service: app.services()[route.service].name().to_string(),
        class,
        prompt_tokens: entry.prompt_tokens,
        completion_tokens: entry.completion_tokens,
        duration: started.elapsed(),
    });
    let body = match Framing::of(&entry.content_type) {
        // A stream is replayed event by event, as it came.
        Framing::Sse => {
            let events: Vec<Bytes> = split_events(&entry.body).map(Bytes::copy_from_slice).collect();
            Body::from_stream(futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>)))
        }
        _ => Body::from(entry.body),
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(CACHE_HEADER, HeaderValue::from_static(mark));
    if let Ok(v) = HeaderValue::from_str(model) {
        headers.insert(super::forward::MODEL_HEADER.clone(), v);
    }
    resp
}

/// Server-sent events, each with its blank-line end.
fn split_events(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.windows(2).position(|w| w == b"\n\n").map_or(rest.len(), |i| i + 2);
        let (event, tail) = rest.split_at(end);
        rest = tail;
        Some(event)
    })
}

/// Marks the answer (`miss` or `bypass`) and, for a successful answer to be stored, stores it
/// once it has ended whole (a stream: its `[DONE]` seen; never an answer cut short).
pub fn fill(app: &App, plan: Option<Plan>, mut resp: Response<Body>) -> Response<Body> {
    let Some(plan) = plan else { return resp };
    let mark = match plan {
        Plan::Bypass => "bypass",
        Plan::Use { .. } => "miss",
    };
    resp.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static(mark));
    // An answer from a fallback model is not the asked model's answer.
    let fell_back = resp.headers().contains_key(super::fallback::FALLBACKS_HEADER);
    match (plan, app.cache.clone()) {
        (Plan::Use { key, store: true, semantic, .. }, Some(cache))
            if resp.status() == StatusCode::OK && !fell_back =>
        {
            let content_type =
                resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let framing = Framing::of(&content_type);
            let vector = semantic.and_then(|s| Some((s.context, s.vector?)));
            let shared = app.gate.shared.clone().map(|sh| (sh, app.config().cache.ttl));
            resp.map(|inner| {
                let limit = cache.max_entry();
                let buf = Vec::new();
                Body::new(Filling {
                    inner,
                    cache,
                    shared,
                    key,
                    vector,
                    content_type,
                    framing,
                    buf,
                    limit,
                    broken: false,
                })
            })
        }
        _ => resp,
    }
}

/// An answer's body on its way to the client, kept to be stored when it ends whole.
struct Filling {
    inner: Body,
    cache: Arc<Cache>,
    /// Replicas: the shared cache, and how long it keeps an answer.
    shared: Option<(Arc<crate::shared::Shared>, std::time::Duration)>,
    key: Key,
    /// The request's context key and embedding, for the semantic cache.
    vector: Option<(Key, Vec<f32>)>,
    content_type: String,
    framing: Framing,
    buf: Vec<u8>,
    /// Past this many bytes the answer is not kept.
    limit: usize,
    /// Too large, or failed: not stored.
    broken: bool,
}

impl Filling {
    fn ended(&mut self) {
        if !self.broken {
            self.store();
        }
        // Once only: a body may be polled again after its end.
        self.broken = true;
    }
}

impl Filling {
    fn store(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let whole = match self.framing {
            Framing::Sse => buf.windows(12).any(|w| w == b"data: [DONE]"),
            Framing::Lines => buf.windows(11).any(|w| w == b"\"done\":true"),
            Framing::Json => true,
        };
        if !whole {
            return;
        }
        let mut scanner = Scanner::new(self.framing);
        scanner.feed(&buf);
        let usage = scanner.finish().unwrap_or_default();
        let entry = Entry {
            content_type: std::mem::take(&mut self.content_type),
            body: buf,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        };
        self.cache.put(&self.key, &entry);
        if let Some((shared, ttl)) = &self.shared {
            shared.keep_answer(&self.key, &entry, *ttl);
        }
        if let Some((context, vector)) = self.vector.take() {
            self.cache.put_vector(&self.key, &context, &vector);
        }
    }
}

impl hyper::body::Body for Filling {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if self.buf.len() + data.len() > self.limit {
                        self.broken = true;
                        self.buf = Vec::new();
                    } else if !self.broken {
                        self.buf.extend_from_slice(data);
                    }
                }
                // The last bytes of a sized answer: the body may not be polled again.
                if self.inner.is_end_stream() {
                    self.ended();
                }
            }
            Poll::Ready(Some(Err(_))) => self.broken = true,
            Poll::Ready(None) => self.ended(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
