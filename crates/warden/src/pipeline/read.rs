//! Stage 1: the body, bounded by `max_body`. A body larger than declared or allowed is 413.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};

use crate::base::errors::ApiError;

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads the whole body (model requests: the model is in it), refusing more than `limit`.
pub async fn whole(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if declared_len(headers).is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        use std::error::Error;
        if e.source().is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
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
