//! Readiness probes: fast at first (a few ms), backing off to a short cap, so a held request
//! is released within milliseconds of the backend becoming healthy.

use std::time::Duration;

use axum::body::Body;
use hyper::{Request, Uri};

use crate::base::http::HttpClient;
use crate::config::Health;

pub const FIRST_DELAY: Duration = Duration::from_millis(2);
pub const MAX_DELAY: Duration = Duration::from_millis(50);
/// One probe may not hang on a port that accepts but never answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The delay after `d`: ×1.5, capped.
pub fn next_delay(d: Duration) -> Duration {
    (d * 3 / 2).min(MAX_DELAY)
}

/// llama-server's slot count (`GET /props` → `total_slots`): how many requests it serves at
/// once. None for servers that do not say.
pub async fn slots(client: &HttpClient, upstream: &str) -> Option<u32> {
    let uri: Uri = format!("http://{upstream}/props").parse().ok()?;
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
        Health::Port | Health::Docker => {
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(upstream)).await.is_ok_and(|r| r.is_ok())
        }
        Health::Path(path) => {
            let Ok(uri) = format!("http://{upstream}{path}").parse::<Uri>() else { return false };
            let req = Request::get(uri).body(Body::empty()).expect("valid request");
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, client.request(req)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap() {
        let mut d = FIRST_DELAY;
        let mut total = Duration::ZERO;
        for _ in 0..8 {
            total += d;
            d = next_delay(d);
        }
        assert!(total < Duration::from_millis(100), "early probes stay dense: {total:?}");
        for _ in 0..20 {
            d = next_delay(d);
        }
        assert_eq!(d, MAX_DELAY);
    }
}
