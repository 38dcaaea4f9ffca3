//! fake-backend: a tiny OpenAI-compatible model server for warden's tests and benchmarks.
//!
//! It serves chat completions, completions and embeddings (streaming with `usage` too), and can
//! be told to start slowly, hold resident memory, stream at a set pace, fail to start, crash,
//! or ignore SIGTERM — the behaviours warden must cope with in real servers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(about = "A fake OpenAI-compatible backend for tests")]
struct Args {
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// Wait this long before listening (a slow model load).
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// Allocate and touch this many MiB of resident memory at start.
    #[arg(long, default_value_t = 0)]
    rss_mb: usize,
    /// Streaming pace; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    tokens_per_sec: f64,
    /// Completion tokens per answer (max_tokens caps it).
    #[arg(long, default_value_t = 8)]
    tokens: u64,
    /// Print an error and exit 1 instead of starting.
    #[arg(long)]
    fail_start: bool,
    /// Serve this many requests, then exit abruptly in the middle of the next one.
    #[arg(long)]
    crash_after: Option<u64>,
    /// The listening socket's accept backlog (Python's http.server uses 5; the OS default is
    /// larger): connections past it wait in SYN retransmits.
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
    /// Answer every completion with this HTTP status and an OpenAI-shaped error (a failing or
    /// rate-limited upstream).
    #[arg(long)]
    answer_status: Option<u16>,
    /// Say in `GET /props` that it serves this many requests at once, as llama-server does
    /// (`total_slots`); without it `/props` is 404.
    #[arg(long)]
    slots: Option<u32>,
    /// Pause this long before each accept (a single-threaded server busy with its requests).
    #[arg(long, default_value_t = 0)]
    accept_delay_ms: u64,
    /// Exit abruptly in the middle of a stream, after sending this many tokens of it.
    #[arg(long)]
    cut_stream_after: Option<u64>,
    /// Ignore SIGTERM (so only SIGKILL stops it).
    #[arg(long)]
    ignore_sigterm: bool,
    /// Write {"exec_unix_ns", "listen_unix_ns"} here once listening.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Path of the health endpoint.
    #[arg(long, default_value = "/health")]
    health_path: String,
    /// Model name reported by /v1/models.
    #[arg(long, default_value = "fake")]
    model: String,
    /// Resident memory each model loaded through the Ollama or llama.cpp-router endpoints holds.
    #[arg(long, default_value_t = 0)]
    model_mb: usize,
    /// How long loading a model takes.
    #[arg(long, default_value_t = 0)]
    load_delay_ms: u64,
    /// Serve https with this PEM certificate chain (and `--tls-key`), offering HTTP/2 and
    /// HTTP/1.1 by ALPN, as a hosted API does.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow this many completions per window, announcing the limit as hosted APIs do
    /// (`x-ratelimit-*-requests`); past it, answer 429 with `retry-after`.
    #[arg(long)]
    ratelimit_requests: Option<u64>,
    /// The rate-limit window; it starts at the first completion.
    #[arg(long, default_value_t = 60_000)]
    ratelimit_window_ms: u64,
    /// Announce the limit only when refusing (an upstream that says nothing until it is too late).
    #[arg(long)]
    ratelimit_quiet: bool,
    /// Models this server offers (listed unloaded by `GET /models` and `GET /api/tags`).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Wait this long before answering each completion (a model that takes its time).
    #[arg(long, default_value_t = 0)]
    answer_delay_ms: u64,
}

struct Fake {
    args: Args,
    requests: AtomicU64,
    /// When it first answered its health check, and first got a completion (Unix ns; 0 =
    /// not yet): how long a held request took to arrive after the backend was ready.
    first_health_ns: AtomicU64,
    first_request_ns: AtomicU64,
    /// Completions being answered now, and the most there ever were at once (for /stats).
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Completions received in all (for /stats).
    completions: AtomicU64,
    /// Models loaded through the multi-model endpoints, with the memory each holds.
    loaded: Mutex<BTreeMap<String, Vec<u8>>>,
    /// `--ratelimit-requests`: when the window began (Unix ms) and completions in it.
    window: Mutex<(u128, u64)>,
    /// Completions refused with 429 (for /stats).
    refused: AtomicU64,
    /// Requests whose body came gzip-compressed.
    gzipped: AtomicU64,
}

/// A listening socket with the given accept backlog.
fn listen(host: &str, port: u16, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A listener that pauses before each accept, as a busy single-threaded server does.
struct SlowAccept {
    inner: tokio::net::TcpListener,
    delay: Duration,
}

impl axum::serve::Listener for SlowAccept {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if let Ok(accepted) = self.inner.accept().await {
                return accepted;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Accepts TLS connections: the handshake is bounded, and a failed one (a client that refused
/// the certificate) is dropped without stopping the server.
struct TlsAccept {
    inner: SlowAccept,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsAccept {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = self.inner.accept().await;
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(Duration::from_secs(5), self.tls.accept(tcp)).await {
                Ok(Ok(stream)) => return (stream, addr),
                Ok(Err(e)) => eprintln!("fake-backend: TLS handshake with {addr} failed: {e}"),
                Err(_) => eprintln!("fake-backend: TLS handshake with {addr} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Says which HTTP version a request came over (`x-fake-http-version`), so a test can tell
/// that a client negotiated HTTP/2.
async fn tell_version(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let version = format!("{:?}", req.version());
    let mut resp = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&version) {
        resp.headers_mut().insert("x-fake-http-version", v);
    }
    resp
}

/// `--ratelimit-requests`: a fixed window from the first completion; every answer announces
/// the limit, what remains and when the window resets (unless `--ratelimit-quiet`), and a
/// completion past the limit is refused with 429 and `retry-after`.
/// A body sent with `Content-Encoding: gzip` is unpacked before any handler reads it.
async fn gunzip(State(fake): State<Arc<Fake>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use std::io::Read;
    if req.headers().get(header::CONTENT_ENCODING).is_none_or(|v| v != "gzip") {
        return next.run(req).await;
    }
    fake.gzipped.fetch_add(1, Ordering::SeqCst);
    let (mut parts, body) = req.into_parts();
    let Ok(packed) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "unreadable body").into_response();
    };
    let mut plain = Vec::new();
    if flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut plain).is_err() {
        return (StatusCode::BAD_REQUEST, "not gzip").into_response();
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    next.run(axum::extract::Request::from_parts(parts, Body::from(plain))).await
}

async fn rate_limit(
    State(fake): State<Arc<Fake>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(limit) = fake.args.ratelimit_requests else { return next.run(req).await };
    if !(req.method() == Method::POST && req.uri().path().starts_with("/v1/")) {
        return next.run(req).await;
    }
    let window = fake.args.ratelimit_window_ms as u128;
    let (allowed, remaining, reset_ms) = {
        let mut w = fake.window.lock().unwrap();
        let now = unix_ns() / 1_000_000;
        if w.1 == 0 || now >= w.0 + window {
            *w = (now, 0);
        }
        let allowed = w.1 < limit;
        if allowed {
            w.1 += 1;
        }
        (allowed, limit - w.1, (w.0 + window).saturating_sub(now) as u64)
    };
    let mut resp = if allowed {
        next.run(req).await
    } else {
        fake.refused.fetch_add(1, Ordering::SeqCst);
        let body = json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}});
        let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        resp.headers_mut().insert("retry-after", reset_ms.div_ceil(1000).into());
        resp
    };
    if allowed && fake.args.ratelimit_quiet {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit-requests", limit.into());
    h.insert("x-ratelimit-remaining-requests", remaining.into());
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{reset_ms}ms")) {
        h.insert("x-ratelimit-reset-requests", v);
    }
    resp
}

/// Counts a completion in flight until dropped.
struct InFlight(Arc<Fake>);

impl InFlight {
    fn new(fake: &Arc<Fake>) -> InFlight {
        let _ = fake.first_request_ns.compare_exchange(0, unix_ns() as u64, Ordering::SeqCst, Ordering::SeqCst);
        fake.completions.fetch_add(1, Ordering::SeqCst);
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(fake.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let exec_ns = unix_ns();
    let args = Args::parse();
    if args.fail_start {
        eprintln!("fake-backend: failing to start as asked (--fail-start)");
        std::process::exit(1);
    }
    if args.ignore_sigterm {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe.
        unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn)
                .expect("ignore SIGTERM");
        }
    } else {
        // Exit on SIGTERM explicitly: as PID 1 in a container, the default action would not apply.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::spawn(async move {
            term.recv().await;
            eprintln!("fake-backend: SIGTERM, exiting");
            std::process::exit(0);
        });
    }
    if args.rss_mb > 0 {
        let mut block = vec![0u8; args.rss_mb << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        Box::leak(block.into_boxed_slice());
    }
    eprintln!("fake-backend: loading model {}", args.model);
    tokio::time::sleep(Duration::from_millis(args.startup_delay_ms)).await;
    let listener = listen(&args.host, args.port, args.backlog).unwrap_or_else(|e| {
        eprintln!("fake-backend: cannot listen on {}:{}: {e}", args.host, args.port);
        std::process::exit(2);
    });
    let addr = listener.local_addr().expect("bound");
    if let Some(path) = &args.ready_file {
        let _ = std::fs::write(path, json!({"exec_unix_ns": exec_ns, "listen_unix_ns": unix_ns()}).to_string());
    }
    eprintln!("fake-backend: listening on {addr} (pid {})", std::process::id());
    let listener = SlowAccept { inner: listener, delay: Duration::from_millis(args.accept_delay_ms) };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key).unwrap_or_else(|e| {
            eprintln!("fake-backend: cannot serve TLS: {e}");
            std::process::exit(2);
        })),
        _ => None,
    };
    let health = args.health_path.clone();
    let state = Arc::new(Fake {
        args,
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        completions: AtomicU64::new(0),
        first_health_ns: AtomicU64::new(0),
        first_request_ns: AtomicU64::new(0),
        loaded: Mutex::default(),
        window: Mutex::default(),
        refused: AtomicU64::new(0),
        gzipped: AtomicU64::new(0),
    });
    let app = Router::new()
        .route(
            &health,
            get(|State(fake): State<Arc<Fake>>| async move {
                let _ = fake.first_health_ns.compare_exchange(0, unix_ns() as u64, Ordering::SeqCst, Ordering::SeqCst);
                Json(json!({"status": "ok"}))
            }),
        )
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/stats", get(stats))
        .route("/props", get(props))
        .route("/allocate/{mb}", post(allocate))
        // Ollama's model endpoints.
        .route("/api/generate", post(ollama_generate))
        .route("/api/chat", post(ollama_chat))
        .route("/api/ps", get(ollama_ps))
        .route("/api/tags", get(ollama_tags))
        // llama.cpp router mode's model endpoints.
        .route("/models", get(router_models))
        .route("/models/load", post(router_load))
        .route("/models/unload", post(router_unload))
        .fallback(echo)
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gunzip))
        .layer(axum::middleware::from_fn(tell_version))
        .with_state(state);
    match tls {
        Some(tls) => axum::serve(TlsAccept { inner: listener, tls }, app).await.expect("serve"),
        None => {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).await.expect("serve")
        }
    }
}

impl Fake {
    /// Counts a request; crashes the process if `--crash-after` says this one dies.
    fn count(&self) {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        if self.args.crash_after.is_some_and(|limit| n >= limit) {
            eprintln!("fake-backend: crashing on request {} as asked (--crash-after)", n + 1);
            std::process::exit(3);
        }
    }

    fn completion_tokens(&self, body: &Value) -> u64 {
        body["max_tokens"].as_u64().map_or(self.args.tokens, |m| m.min(self.args.tokens))
    }
}

type BadRequest = (StatusCode, Json<Value>);

fn parse(body: &Bytes) -> Result<Value, BadRequest> {
    serde_json::from_slice(body).map_err(|e| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": e.to_string(), "type": "invalid_request_error"}})))
    })
}

/// Rough prompt size: whitespace-separated words of every string in the prompt.
fn prompt_tokens(body: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o.iter().filter(|(k, _)| *k == "content" || *k == "text").map(|(_, v)| words(v)).sum(),
            _ => 0,
        }
    }
    words(&body["messages"]) + words(&body["prompt"]) + words(&body["input"])
}

async fn models(State(fake): State<Arc<Fake>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": fake.args.model, "object": "model", "owned_by": "fake-backend"}]}))
}

/// llama-server's `/props`, as far as warden reads it; not counted as a request.
async fn props(State(fake): State<Arc<Fake>>) -> Response {
    match fake.args.slots {
        Some(n) => Json(json!({"total_slots": n})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats(State(fake): State<Arc<Fake>>) -> Json<Value> {
    Json(json!({"pid": std::process::id(), "requests": fake.requests.load(Ordering::SeqCst),
        "max_in_flight": fake.max_in_flight.load(Ordering::SeqCst),
        "completions": fake.completions.load(Ordering::SeqCst),
        "refused": fake.refused.load(Ordering::SeqCst),
        "gzipped": fake.gzipped.load(Ordering::SeqCst),
        "first_health_unix_ns": fake.first_health_ns.load(Ordering::SeqCst),
        "first_request_unix_ns": fake.first_request_ns.load(Ordering::SeqCst)}))
}

async fn echo(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Json<Value> {
    fake.count();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Json(json!({"method": method.as_str(), "path": uri.path(), "query": uri.query(), "body_bytes": body.len(),
        "pid": std::process::id(), "authorization": header("authorization"), "request_id": header("x-request-id")}))
}

/// The error answer `--answer-status` asks for, if any.
fn forced_error(fake: &Fake) -> Option<Response> {
    let status = StatusCode::from_u16(fake.args.answer_status?).ok()?;
    let body = json!({"error": {"message": format!("fake-backend answers {status} as asked"), "type": "server_error"}});
    Some((status, Json(body)).into_response())
}

async fn chat(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    fake.count();
    let _counted = InFlight::new(&fake);
    if let Some(forced) = forced_error(&fake) {
        return forced;
    }
    let body = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    answer(&fake, &body, "chat.completion").await
}

async fn completions(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    fake.count();
    let _counted = InFlight::new(&fake);
    if let Some(forced) = forced_error(&fake) {
        return forced;
    }
    let body = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    answer(&fake, &body, "text_completion").await
}

async fn answer(fake: &Fake, body: &Value, object: &'static str) -> Response {
    if fake.args.answer_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(fake.args.answer_delay_ms)).await;
    }
    let model = body["model"].as_str().unwrap_or(&fake.args.model).to_string();
    let n = fake.completion_tokens(body);
    let usage =
        json!({"prompt_tokens": prompt_tokens(body), "completion_tokens": n, "total_tokens": prompt_tokens(body) + n});
    let pace = (fake.args.tokens_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / fake.args.tokens_per_sec));
    let chat = object == "chat.completion";
    if body["stream"].as_bool() != Some(true) {
        if let Some(p) = pace {
            tokio::time::sleep(p * n as u32).await;
        }
        let text = (0..n).map(|i| format!("tok{i}")).collect::<Vec<_>>().join(" ");
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        return Json(json!({"id": "fake-1", "object": object, "created": 0, "model": model, "choices": [choice], "usage": usage}))
            .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk_object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let cut_after = fake.args.cut_stream_after;
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let model = model.clone();
        let usage = usage.clone();
        async move {
            if i > n + 1 {
                return None;
            }
            if cut_after == Some(i) {
                // Let what was sent reach the client, then die without ending the stream.
                tokio::time::sleep(Duration::from_millis(50)).await;
                eprintln!("fake-backend: dying mid-stream after {i} tokens as asked (--cut-stream-after)");
                std::process::exit(3);
            }
            let event = if i < n {
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
                let delta = format!("tok{i} ");
                let choice = if chat {
                    json!({"index": 0, "delta": {"content": delta}, "finish_reason": null})
                } else {
                    json!({"index": 0, "text": delta, "finish_reason": null})
                };
                format!(
                    "data: {}\n\n",
                    json!({"id": "fake-1", "object": chunk_object, "model": model, "choices": [choice]})
                )
            } else if i == n {
                let mut last = json!({"id": "fake-1", "object": chunk_object, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                if include_usage {
                    last["usage"] = usage;
                }
                format!("data: {last}\n\n")
            } else {
                "data: [DONE]\n\n".to_string()
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), i + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("response")
}

async fn embeddings(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    fake.count();
    let body = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
        _ => vec![String::new()],
    };
    // A bad input fails the whole call, as a real server refuses a batch with one bad item.
    if inputs.iter().any(|i| i == "FAIL") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "an input says FAIL"}}))).into_response();
    }
    // A deterministic bag of words in 16 dimensions (each word, lower-cased, counted in the
    // bucket of its hash): texts with the same words point the same way, as a real model's
    // embeddings of near-identical sentences do, and texts that share few words do not.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut v = [0f32; 16];
            for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                let hash = word
                    .to_lowercase()
                    .bytes()
                    .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
                v[(hash % 16) as usize] += 1.0;
            }
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens = prompt_tokens(&body);
    Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response()
}

impl Fake {
    /// `--models` and whatever has been loaded, sorted.
    fn offered(&self) -> Vec<String> {
        let mut all: Vec<String> = self.args.models.clone();
        all.extend(self.loaded.lock().unwrap().keys().cloned());
        all.sort();
        all.dedup();
        all
    }

    async fn load(&self, model: &str) {
        if self.loaded.lock().unwrap().contains_key(model) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(self.args.load_delay_ms)).await;
        let mut block = vec![0u8; self.args.model_mb << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        self.loaded.lock().unwrap().insert(model.to_string(), block);
    }

    /// Dropping the block returns its pages to the OS (large blocks are mmapped).
    fn unload(&self, model: &str) -> bool {
        self.loaded.lock().unwrap().remove(model).is_some()
    }
}

async fn ollama_generate(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    let Some(model) = body["model"].as_str() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "model is required"}))).into_response();
    };
    if body["keep_alive"] == json!(0) || body["keep_alive"] == json!("0") {
        fake.unload(model);
        return Json(json!({"model": model, "response": "", "done": true, "done_reason": "unload"})).into_response();
    }
    fake.load(model).await;
    if body["prompt"].as_str().unwrap_or_default().is_empty() {
        // A generate with no prompt only loads the model.
        return Json(json!({"model": model, "response": "", "done": true, "done_reason": "load"})).into_response();
    }
    ollama_answer(&fake, &body, false).await
}

async fn ollama_chat(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    let Some(model) = body["model"].as_str() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "model is required"}))).into_response();
    };
    fake.load(model).await;
    if body["messages"].as_array().is_none_or(|m| m.is_empty()) {
        return Json(json!({"model": model, "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "load"}))
            .into_response();
    }
    ollama_answer(&fake, &body, true).await
}

/// The time every native Ollama answer says it was made: a test can tell it from warden's
/// translation (which writes the time it answered).
const OLLAMA_CREATED_AT: &str = "2025-01-01T00:00:00Z";

/// Chat and generate as Ollama answers them: an NDJSON stream (the default) whose last line is
/// `done` with the counts, or one JSON object with them.
async fn ollama_answer(fake: &Arc<Fake>, body: &Value, chat: bool) -> Response {
    fake.count();
    let _counted = InFlight::new(fake);
    let model = body["model"].as_str().unwrap_or(&fake.args.model).to_string();
    let n = body["options"]["num_predict"].as_u64().map_or(fake.args.tokens, |m| m.min(fake.args.tokens));
    let prompt = prompt_tokens(body) + body["prompt"].as_str().map_or(0, |p| p.split_whitespace().count() as u64);
    let pace = (fake.args.tokens_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / fake.args.tokens_per_sec));
    let part = move |text: String, done: bool| {
        let mut v = json!({"model": model, "created_at": OLLAMA_CREATED_AT, "done": done});
        v[if chat { "message" } else { "response" }] =
            if chat { json!({"role": "assistant", "content": text}) } else { json!(text) };
        if done {
            v["done_reason"] = json!("stop");
            v["prompt_eval_count"] = json!(prompt);
            v["eval_count"] = json!(n);
            v["total_duration"] = json!(1_000);
        }
        v
    };
    if body["stream"] == json!(false) {
        if let Some(p) = pace {
            tokio::time::sleep(p * n as u32).await;
        }
        let text = (0..n).map(|i| format!("tok{i}")).collect::<Vec<_>>().join(" ");
        return Json(part(text, true)).into_response();
    }
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let part = part.clone();
        async move {
            if i > n {
                return None;
            }
            if i < n {
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
            }
            let line = if i < n { part(format!("tok{i} "), false) } else { part(String::new(), true) };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(format!("{line}\n"))), i + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("response")
}

async fn ollama_ps(State(fake): State<Arc<Fake>>) -> Json<Value> {
    let loaded = fake.loaded.lock().unwrap();
    let models: Vec<Value> = loaded
        .iter()
        .map(|(name, block)| json!({"name": name, "model": name, "size": block.len(), "size_vram": 0}))
        .collect();
    Json(json!({"models": models}))
}

async fn ollama_tags(State(fake): State<Arc<Fake>>) -> Json<Value> {
    let models: Vec<Value> = fake.offered().iter().map(|name| json!({"name": name, "model": name})).collect();
    Json(json!({"models": models}))
}

async fn router_models(State(fake): State<Arc<Fake>>) -> Json<Value> {
    let offered = fake.offered();
    let loaded = fake.loaded.lock().unwrap();
    let data: Vec<Value> = offered
        .iter()
        .map(|name| {
            let status = if loaded.contains_key(name) { "loaded" } else { "unloaded" };
            json!({"id": name, "object": "model", "status": {"value": status}})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn router_load(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    match parse(&body).map(|v| v["model"].as_str().map(str::to_string)) {
        Ok(Some(model)) => {
            fake.load(&model).await;
            Json(json!({"success": true})).into_response()
        }
        Ok(None) => (StatusCode::BAD_REQUEST, Json(json!({"error": "model is required"}))).into_response(),
        Err(bad) => bad.into_response(),
    }
}

async fn router_unload(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    match parse(&body).map(|v| v["model"].as_str().map(str::to_string)) {
        Ok(Some(model)) if fake.unload(&model) => Json(json!({"success": true})).into_response(),
        Ok(Some(model)) => {
            (StatusCode::BAD_REQUEST, Json(json!({"error": format!("model {model} is not loaded")}))).into_response()
        }
        Ok(None) => (StatusCode::BAD_REQUEST, Json(json!({"error": "model is required"}))).into_response(),
        Err(bad) => bad.into_response(),
    }
}

/// Allocates and touches `mb` MiB more, kept until exit: to push a container over its memory limit.
async fn allocate(axum::extract::Path(mb): axum::extract::Path<usize>) -> Json<Value> {
    let mut block = vec![0u8; mb << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    Box::leak(block.into_boxed_slice());
    Json(json!({"allocated_mb": mb}))
}
