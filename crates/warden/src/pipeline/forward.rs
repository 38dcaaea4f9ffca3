//! Stage 8: the request goes to the leased service and the answer streams back untouched.
//! Its body carries the lease and the ticket (stage 9, `settle`), so the service counts as busy
//! and the capacity as held until the body ends.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};

use super::settle::{framing, LeaseBody, Meter};
use crate::admission::gate::Ticket;
use crate::base::errors::ApiError;
use crate::base::http::{SendFailure, REQUEST_ID_HEADER};
use crate::config::{RemoteSpec, ServiceKind};
use crate::service::Acquired;

/// A `HeaderName` made once: inserting by a `&str` name copies a custom name into a new
/// allocation every time.
pub static COLD_START_HEADER: HeaderName = HeaderName::from_static("x-warden-cold-start-ms");

/// What a request carries besides its lease.
pub struct Extras {
    /// Its admission: capacity held (like the lease) until the body ends, then settled. Boxed:
    /// it is large, and a future that waits for the service before it is used keeps its room.
    pub ticket: Box<Ticket>,
    /// The client's Authorization is its warden key: never forwarded.
    pub strip_client_auth: bool,
    pub request_id: Arc<str>,
    /// Read the answer's `usage` for the ticket (OpenAI routes).
    pub usage: bool,
    /// The model that answers, told to the client (`x-warden-model`).
    pub model: Option<Arc<str>>,
    /// `x-warden-degraded`: another rung than asked for answers, and why.
    pub degraded: Option<String>,
    /// `x-warden-optimized`: what the optimizer did ("downgrade gpt-4→gpt-3.5 (batch class)").
    pub optimized: Option<String>,
    /// Where the answer's timing goes when it ends (model requests).
    pub perf: Option<Probe>,
}

impl Probe {
    /// The request failed before any answer: a failure in the model's figures.
    pub fn failed(self) {
        let ms = self.sent.elapsed().as_millis().min(u32::MAX as u128) as u32;
        let sample = crate::account::performance::Sample {
            at: std::time::Instant::now(),
            model: self.model,
            task: self.task,
            ok: false,
            total_ms: ms,
            first_byte_ms: None,
            tokens: None,
            weight: 1,
        };
        self.tracker.record(sample);
    }
}

/// What a model answer's timing is recorded with.
pub struct Probe {
    pub tracker: std::sync::Arc<crate::account::performance::Tracker>,
    /// The request duration and first-byte histograms.
    pub metrics: std::sync::Arc<crate::base::metrics::Metrics>,
    /// The model's label there: its name if configured, else `other` (labels stay bounded).
    pub label: std::sync::Arc<str>,
    pub model: std::sync::Arc<str>,
    pub task: Option<std::sync::Arc<str>>,
    /// When the request was sent to the service.
    pub sent: std::time::Instant,
}

pub static MODEL_HEADER: HeaderName = HeaderName::from_static("x-warden-model");
pub static DEGRADED_HEADER: HeaderName = HeaderName::from_static("x-warden-degraded");
pub use super::downgrade::OPTIMIZED_HEADER;

/// Hop-by-hop headers (RFC 9110 §7.6.1) are for one connection and never forwarded.
fn strip_hop_headers(headers: &mut HeaderMap) {
    const HOP: [HeaderName; 7] = [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
    ];
    // One pass over the names, then removals only for what is there: most messages carry
    // none of these, and each removal hashes its name.
    let found: Vec<HeaderName> =
        headers.keys().filter(|h| HOP.contains(h) || h.as_str() == "keep-alive").cloned().collect();
    for h in found {
        headers.remove(h);
    }
}

/// Sends `req` (with `path_and_query` as its target) to the leased service.
pub(super) async fn forward(
    req: Request<Body>,
    path_and_query: &str,
    acquired: Acquired,
    mut extras: Extras,
) -> Result<Response<Body>, ApiError> {
    let Acquired { lease, cold_start } = acquired;
    // The id goes upstream and back.
    let id = std::mem::take(&mut extras.request_id);
    let resp = send(req, path_and_query, &lease, &mut extras, &id).await?;
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_headers(&mut parts.headers);
    if let Some(waited) = cold_start {
        parts.headers.insert(COLD_START_HEADER.clone(), HeaderValue::from(waited.as_millis() as u64));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        parts.headers.insert(REQUEST_ID_HEADER.clone(), v);
    }
    let told = [
        (&MODEL_HEADER, extras.model.as_deref()),
        (&DEGRADED_HEADER, extras.degraded.as_deref()),
        (&OPTIMIZED_HEADER, extras.optimized.as_deref()),
    ];
    for (name, value) in told {
        // From bytes: a model's name or the arrow in a downgrade may be UTF-8.
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            parts.headers.insert(name.clone(), v);
        }
    }
    let framing = framing(&parts);
    let meter = Meter::new(extras.ticket, &parts, framing, extras.usage);
    let ok = parts.status.is_success();
    let body = LeaseBody::new(incoming, lease, meter, framing).timed(extras.perf, ok);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The request to the leased service, and its answer's head: headers set for the service (its
/// key for a hosted API, never the client's warden key), bounded by the service's
/// response_timeout, each failure a specific error (and what the upstream says of its rate
/// limits adopted).
pub(super) async fn send(
    mut req: Request<Body>,
    path_and_query: &str,
    lease: &crate::service::lease::Lease,
    extras: &mut Extras,
    id: &str,
) -> Result<Response<hyper::body::Incoming>, ApiError> {
    // A local service at an IP address is reached on this thread's own connections (origin
    // form); anything else through the pooled client (absolute form).
    let direct = lease.direct();
    // The client's own target (origin form) is usually what goes: kept, not parsed again.
    let as_sent = req.uri().scheme().is_none() && req.uri().path_and_query().is_some_and(|p| p == path_and_query);
    if direct.is_none() || !as_sent {
        let uri = match direct {
            Some(_) => Uri::try_from(path_and_query).ok(),
            None => crate::base::http::at(lease.upstream(), path_and_query),
        };
        *req.uri_mut() = uri.ok_or_else(|| ApiError::BadRequest(format!("invalid path {path_and_query:?}")))?;
    }
    strip_hop_headers(req.headers_mut());
    let headers = req.headers_mut();
    // Host is the service's own address: set by the pool for a direct service, by the client
    // from the absolute URI otherwise.
    headers.remove(header::HOST);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID_HEADER.clone(), v);
    }
    if extras.strip_client_auth {
        headers.remove(header::AUTHORIZATION);
    }
    let config = lease.config();
    // A hosted API gets warden's key for it instead of anything the client sent.
    if let ServiceKind::Remote(RemoteSpec { api_key: Some(key), .. }) = &config.kind {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", key.0)) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    let within = config.response_timeout;
    // Not held across the wait below: a guard is meant to live briefly.
    drop(config);
    if let Some(p) = extras.perf.as_mut() {
        p.sent = std::time::Instant::now();
    }
    let answer = match direct {
        Some(addr) => tokio::time::timeout(within, crate::base::pool::send(addr, req)).await,
        None => tokio::time::timeout(within, async { Ok(lease.client().request(req).await?) }).await,
    };
    let service = || lease.service().to_string();
    let resp = match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(SendFailure { connect, tls, detail })) => {
            if let Some(p) = extras.perf.take() {
                p.failed();
            }
            if let Some(reason) = tls {
                // A certificate problem does not fix itself: say which, and raise an alert.
                let detail = format!("TLS with {} failed: {reason}", lease.upstream());
                extras.ticket.upstream_failed("upstream_tls", &service(), &detail);
                return Err(ApiError::UpstreamTls { service: service(), detail });
            }
            // Refused, or no answer to the connect within its bound (5 s): say so rather
            // than leave the client guessing.
            let detail = if connect {
                let within = crate::base::http::CONNECT_TIMEOUT.as_secs();
                format!("could not connect to {} within {within} s: {detail}", lease.upstream())
            } else {
                detail
            };
            return Err(ApiError::BadGateway { service: service(), detail });
        }
        Err(_) => {
            extras.ticket.backend_timed_out(&service(), within);
            if let Some(p) = extras.perf.take() {
                p.failed();
            }
            return Err(ApiError::BackendTimeout { service: service(), after: within });
        }
    };
    let limits = super::limits::read(resp.status(), resp.headers());
    if !limits.is_empty() {
        extras.ticket.upstream_said(&limits);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("content-type", "application/json"),
            ("x-request-id", "r1"),
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);
        // Nothing to strip: nothing changes.
        let before = h.clone();
        strip_hop_headers(&mut h);
        assert_eq!(h, before);
    }
}
