//! Readiness probes, paced so that a held request is released within a few milliseconds of
//! the backend becoming ready, whatever its start takes, at bounded cost: until the port
//! accepts, a TCP connect every 2 ms (refused at once, a few microseconds each); then the
//! health check every 5 ms (one request on a kept-alive connection). A container's own
//! HEALTHCHECK status is asked of the engine, less often.

use std::time::Duration;

use axum::body::Body;
use hyper::{Request, Uri};

use crate::base::http::HttpClient;
use crate::config::Health;

/// Between TCP connect checks while the port does not accept yet.
pub const PORT_EVERY: Duration = Duration::from_millis(2);
/// Between health checks once the port accepts.
pub const HEALTH_EVERY: Duration = Duration::from_millis(5);
/// Between asks of the container engine for a HEALTHCHECK status.
pub const ENGINE_EVERY: Duration = Duration::from_millis(50);
/// One probe may not hang on a port that accepts but never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether something accepts connections at `upstream` (a base URL, "http://host:port").
pub async fn port_open(upstream: &str) -> bool {
    let Some(authority) = crate::base::http::at(upstream, "/").and_then(|u| u.authority().cloned()) else {
        return false;
    };
    let addr = (authority.host(), authority.port_u16().unwrap_or(80));
    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await.is_ok_and(|r| r.is_ok())
}

/// llama-server's slot count (`GET /props` → `total_slots`): how many requests it serves at
/// once. None for servers that do not say.
pub async fn slots(client: &HttpClient, upstream: &str) -> Option<u32> {
    let uri: Uri = crate::base::http::at(upstream, "/props")?;
    let req = Request::get(uri).body(Body::empty()).ok()?;
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await.ok()?.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body =
        tokio::time::timeout(PROBE_TIMEOUT, http_body_util::BodyExt::collect(resp.into_body())).await.ok()?.ok()?;
    let props: serde_json::Value = serde_json::from_slice(&body.to_bytes()).ok()?;
    props["total_slots"].as_u64().filter(|&n| n > 0).and_then(|n| u32::try_from(n).ok())
}

/// One probe: true when the service answers its health check.
/// `upstream` is "host:port". `Health::Docker` is the container driver's to answer.
pub async fn probe(client: &HttpClient, health: &Health, upstream: &str) -> bool {
    match health {
        Health::Port | Health::Docker => port_open(upstream).await,
        Health::Path(path) => {
            let Some(uri) = crate::base::http::at(upstream, path) else { return false };
            let req = Request::get(uri).body(Body::empty()).expect("valid request");
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            )
        }
    }
}
