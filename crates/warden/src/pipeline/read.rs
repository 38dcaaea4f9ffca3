//! Stage 1: the body, bounded by `max_body`. A body larger than declared or allowed is 413.
//!
//! A model request's head and body are copied out of hyper's read buffers (`own`): hyper hands
//! them out as slices of its 8 KiB buffer, and a slice kept alive keeps the whole buffer, so a
//! request held through a cold start or in the queue pinned one or two of them, and hyper
//! reserved another to watch for the client hanging up. Copying costs a few small allocations.

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Uri};

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
/// read buffer (see the module's note).
pub fn own(parts: &mut Parts) {
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("a header value stays valid");
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse::<Uri>() {
        parts.uri = uri;
    }
}

/// Leaves the body streaming (passthrough), cut off past `limit`; a declared length over the
/// limit is refused before anything is sent.
pub fn streamed(headers: &HeaderMap, body: Body, limit: usize) -> Result<Body, ApiError> {
    if declared_len(headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Body::new(http_body_util::Limited::new(body, limit)))
}
