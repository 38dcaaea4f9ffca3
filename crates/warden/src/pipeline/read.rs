//! Stage 1: the body, bounded by `max_body`. A body larger than declared or allowed is 413.
//!
//! A model request's body, and its head once it has to wait, are copied out of hyper's read
//! buffer (`own`): hyper hands them out as slices of its 8 KiB buffer, and a slice kept alive
//! keeps the whole buffer. The patched hyper (`vendor/README.md`) frees that buffer while the
//! request waits for its answer, which only helps if nothing of ours still points into it. A
//! request that does not wait sends its head on at once (and hyper's client drops it once
//! written), so its head is not copied: that copy was 5 % of a warm request's instructions.

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Uri};

use std::future::Future;

use crate::base::errors::ApiError;

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads the whole body (model requests: the model is in it), refusing more than `limit`.
pub async fn whole(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if declared_len(headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        use std::error::Error;
        if e.source().is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })?;
    Ok(Bytes::copy_from_slice(&bytes))
}

/// Makes the request's head its own: header values and the target no longer share hyper's
/// read buffer (see the module's note). They share one allocation of their own instead of one
/// each: a held request keeps its head for as long as it waits.
pub fn own(parts: &mut Parts) {
    use bytes::BytesMut;
    let target = parts.uri.to_string();
    let size = target.len() + parts.headers.values().map(|v| v.len()).sum::<usize>();
    let mut copy = BytesMut::with_capacity(size);
    copy.extend_from_slice(target.as_bytes());
    for value in parts.headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let copy = copy.freeze();
    if let Ok(uri) = Uri::from_maybe_shared(copy.slice(..target.len())) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    let mut at = target.len();
    for (name, value) in &parts.headers {
        let bytes = copy.slice(at..at + value.len());
        at += value.len();
        let mut value_copy = HeaderValue::from_maybe_shared(bytes).expect("a header value stays valid");
        value_copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), value_copy);
    }
    parts.headers = headers;
}

/// Awaits `waiting`, making the request's head its own (`own`) first if it has to wait (for its
/// turn, or its service): a waiting request must not keep hyper's read buffer alive, and one
/// that goes straight through need not pay for the copy. `owned` says it was done already.
pub fn owned_if_waiting<'a, F: Future + Unpin + 'a>(
    parts: &'a mut Parts,
    owned: &'a mut bool,
    mut waiting: F,
) -> impl Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        let polled = std::pin::Pin::new(&mut waiting).poll(cx);
        if polled.is_pending() && !*owned {
            *owned = true;
            own(parts);
        }
        polled
    })
}

/// Leaves the body streaming (passthrough), cut off past `limit`; a declared length over the
/// limit is refused before anything is sent.
pub fn streamed(headers: &HeaderMap, body: Body, limit: usize) -> Result<Body, ApiError> {
    if declared_len(headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Body::new(http_body_util::Limited::new(body, limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_head_keeps_every_header_and_the_target() {
        let req = axum::http::Request::post("/v1/chat/completions?x=1")
            .header("content-type", "application/json")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("authorization", "Bearer k")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        parts.headers.get_mut("authorization").unwrap().set_sensitive(true);
        let before = parts.headers.clone();
        own(&mut parts);
        assert_eq!(parts.uri, "/v1/chat/completions?x=1");
        assert_eq!(parts.headers, before);
        let multi: Vec<_> = parts.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert!(parts.headers["authorization"].is_sensitive());
    }
}
