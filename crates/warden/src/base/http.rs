//! The pooled HTTP client warden uses to reach services (proxying, health probes, model
//! APIs), and request ids.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A service that has not accepted a connection in this long gets a clear 502, not a hang: a
/// backend whose accept backlog is full drops connection attempts, and SYN retransmits grow.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pooled HTTP/1 client to local services: keep-alive connections make the hot path one write
/// and one read on an open socket.
pub type HttpClient = Client<HttpConnector, Body>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's `x-request-id` (kept for correlation), or a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    match headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        Some(given) if !given.is_empty() && given.len() <= 128 => given.to_string(),
        _ => new_request_id(),
    }
}

/// A process-unique request id: the process start time and a counter, in hex.
pub fn new_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(|| super::clock::unix_now().as_micros() as u64);
    format!("{epoch:x}-{:x}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}
