//! Who is asking: the admin token for /admin/*, and client API keys for the front door.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use crate::app::App;

pub async fn admin_auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.config.server.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// The client a front-door request comes from: `None` when warden runs open (no `[clients]`).
#[derive(Clone)]
pub struct Caller(pub Option<usize>);

/// With clients configured, every front-door request needs `Authorization: Bearer KEY` of one
/// of them (401 otherwise); the client is passed on to the handlers.
pub async fn client_auth(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let caller = if app.config.clients.is_empty() {
        Caller(None)
    } else {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| crate::config::sha256(k.trim().as_bytes()));
        match given.and_then(|h| app.config.clients.iter().position(|c| c.key_sha256 == h)) {
            Some(i) => Caller(Some(i)),
            None => return ApiError::Unauthorized.into_response(),
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Compares without an early exit, so response time does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
