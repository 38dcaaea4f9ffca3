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

/// The most a body's buffer is given before its bytes arrive (it grows past it as they come).
const PREALLOCATE_AT_MOST: u64 = 64 << 10;

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads the whole body (model requests: the model is in it), refusing more than `limit`.
/// Copied into one buffer of its own (see the module's note), sized by the declared length:
/// for most bodies one allocation and one copy, where collecting the frames first and copying
/// them out again cost a queue of frames and a copy more.
pub async fn whole(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared = declared_len(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = body;
    // Sized by the declared length only up to a bound: a client that declares a large body and
    // sends it slowly (or never) must not make warden reserve it all up front.
    let mut bytes = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(PREALLOCATE_AT_MOST) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            bytes.extend_from_slice(&data);
        }
    }
    // A held request keeps its body: one that outgrew its first buffer (or came shorter than
    // declared) is copied to its own size rather than kept with the room to spare.
    if bytes.capacity() - bytes.len() > bytes.len() / 8 {
        return Ok(Bytes::copy_from_slice(&bytes));
    }
    Ok(bytes.freeze())
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

    fn read_whole(
        declared: Option<usize>,
        chunks: Vec<Result<&'static str, &'static str>>,
        limit: usize,
    ) -> Result<Bytes, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(n) = declared {
            headers.insert(header::CONTENT_LENGTH, n.into());
        }
        let stream =
            futures_util::stream::iter(chunks.into_iter().map(|c| c.map(|s| Bytes::from_static(s.as_bytes()))));
        let body = Body::from_stream(stream);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(whole(&headers, body, limit))
    }

    #[test]
    fn a_whole_body_is_read_in_one_piece_and_bounded() {
        assert_eq!(read_whole(Some(6), vec![Ok("ab"), Ok("cd"), Ok("ef")], 6).unwrap(), "abcdef");
        // No declared length (chunked): bounded all the same, as it arrives.
        assert_eq!(read_whole(None, vec![Ok("ab"), Ok("cd")], 6).unwrap(), "abcd");
        assert!(matches!(read_whole(None, vec![Ok("abcd"), Ok("efg")], 6), Err(ApiError::BodyTooLarge { limit: 6 })));
        // A declared length past the limit is refused before anything is read.
        assert!(matches!(read_whole(Some(7), vec![Err("never read")], 6), Err(ApiError::BodyTooLarge { limit: 6 })));
        // A client that lies about its length is bounded by what it sends.
        assert!(matches!(read_whole(Some(2), vec![Ok("abcdefgh")], 6), Err(ApiError::BodyTooLarge { limit: 6 })));
        assert!(
            matches!(read_whole(None, vec![Ok("ab"), Err("reset")], 6), Err(ApiError::BadRequest(m)) if m.contains("reset"))
        );
        assert_eq!(read_whole(Some(0), vec![], 6).unwrap(), "");
    }

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
