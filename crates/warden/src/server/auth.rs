//! Who is asking: the admin token for /admin/*, and client API keys for the front door.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::future::{ready, Either, Ready};
use tower::{Layer, Service};

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;

pub async fn admin_auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if !is_admin(&app, req.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// The request carries the admin token, or none is configured.
pub fn is_admin(app: &App, headers: &HeaderMap) -> bool {
    match &app.config().server.admin_token {
        None => true,
        Some(token) => holds(headers, token),
    }
}

/// The request's bearer token is `token` (compared in constant time).
fn holds(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

/// The token of an `Authorization: Bearer …` header. The scheme is case-insensitive (RFC 9110
/// §11.1): `bearer` works as well as `Bearer`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// With clients configured, every front-door request needs `Authorization: Bearer KEY` of one
/// of them, or the admin token (401 otherwise); the caller is passed on to the handlers.
///
/// A layer of its own rather than a `from_fn` middleware: it runs on every model request, and
/// `from_fn` boxes a future and clones the routes below it for each one.
#[derive(Clone)]
pub struct ClientAuth(pub Arc<App>);

impl<S> Layer<S> for ClientAuth {
    type Service = ClientAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAuthService { app: self.0.clone(), inner }
    }
}

/// `ClientAuth` around one route.
#[derive(Clone)]
pub struct ClientAuthService<S> {
    app: Arc<App>,
    inner: S,
}

impl<S> Service<Request> for ClientAuthService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, WithCaller<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(caller) = caller(&self.app, req.headers()) else {
            return Either::Left(ready(Ok(ApiError::Unauthorized.into_response())));
        };
        req.extensions_mut().insert(caller);
        // Compression (outside) counts what it saved per client: it needs the caller on the
        // answer, but only for a client that accepts an encoding (an extension costs an
        // allocation on every answer).
        let compressible = req.headers().contains_key(header::ACCEPT_ENCODING);
        Either::Right(WithCaller { inner: self.inner.call(req), caller: compressible.then_some(caller) })
    }
}

/// Who a front-door request is from; None: not allowed in.
pub(crate) fn caller(app: &App, headers: &HeaderMap) -> Option<Caller> {
    // One look at the config for the whole decision (this runs on every request).
    let config = app.config();
    let token = config.server.admin_token.as_ref();
    // Without an admin token, only open mode (no clients) makes everyone the admin.
    let is_admin = match token {
        Some(token) => holds(headers, token),
        None => config.clients.is_empty(),
    };
    if config.clients.is_empty() || is_admin {
        let warden_key = is_admin && token.is_some();
        return Some(Caller { client: None, admin: is_admin, warden_key });
    }
    let hash = crate::config::sha256(bearer(headers)?.as_bytes());
    let i = config.clients.iter().position(|c| !c.retired && c.key_sha256 == hash)?;
    Some(Caller { client: Some(i), admin: false, warden_key: true })
}

pin_project_lite::pin_project! {
    /// The route's answer, with the caller put on it when `caller` is set.
    pub struct WithCaller<F> {
        #[pin]
        inner: F,
        caller: Option<Caller>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for WithCaller<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if let Some(caller) = this.caller.take() {
            resp.extensions_mut().insert(caller);
        }
        Poll::Ready(Ok(resp))
    }
}

/// Compares without an early exit, so response time does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let with = |v: &str| {
            let mut h = super::HeaderMap::new();
            h.insert(super::header::AUTHORIZATION, v.parse().unwrap());
            super::bearer(&h).map(str::to_string)
        };
        assert_eq!(with("Bearer k1").as_deref(), Some("k1"));
        assert_eq!(with("bearer k2").as_deref(), Some("k2"));
        assert_eq!(with("BEARER  k3 ").as_deref(), Some("k3"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer"), None);
    }

    #[test]
    fn eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
