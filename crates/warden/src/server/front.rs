//! The first thing every request meets, written as one service rather than a stack of
//! middlewares: the head's size limits (414 and 431 in the JSON error shape), then the router,
//! through the compression layer only for a client that accepts an encoding.
//!
//! Why one service: each `from_fn` middleware boxed a future and cloned the stack below it for
//! every request, and a held request kept each of those futures alive while it waited. Most API
//! traffic (and every request of a client that sends no `Accept-Encoding`) now goes straight to
//! the router with nothing boxed on the way.
//!
//! The model endpoints (`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) skip
//! the router: the caller is checked as `ClientAuth` does and the pipeline runs at once. axum's
//! route boxed two futures and kept the path's parameters for each such request, about 1 KB for
//! every request held through a cold start; every other request goes through the router. Their
//! answer meets the compression stack only when it may be compressed (`compress::answer`): most
//! are under 1 KiB, and wrapping each in the stack's futures and bodies cost about a tenth of a
//! proxied request's instructions.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::{BoxFuture, Either, Ready};
use futures_util::FutureExt;
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::Service;

use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::pipeline::{self, Endpoint, Inbound, Target};
use crate::server::{auth, compress};

/// A request target longer than this is refused (414).
const MAX_URI: usize = 8 << 10;
/// Request headers larger than this together are refused (431).
const MAX_HEADERS: usize = 64 << 10;

/// The router, also behind compression, and the app for the model endpoints.
#[derive(Clone)]
pub struct Front {
    plain: Router,
    compressed: BoxCloneSyncService<Request, Response, Infallible>,
    app: Arc<App>,
}

impl Front {
    pub fn new(router: Router, app: Arc<App>) -> Front {
        Front { compressed: behind_compression(router.clone()), plain: router, app }
    }
}

/// `inner` behind the compression layer, with the bytes it saves counted.
fn behind_compression<S>(inner: S) -> BoxCloneSyncService<Request, Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(compress::stack(inner))
}

/// A refusal, the router's answer, or a model request run straight through the pipeline.
type Plain = Either<
    Either<Ready<Result<Response, Infallible>>, axum::routing::future::RouteFuture<Infallible>>,
    BoxFuture<'static, Result<Response, Infallible>>,
>;

/// hyper's own service trait, taken by `&self`: hyper calls it once per request, and nothing is
/// cloned for a request but the router's handle (an `Arc`), and the compression stack for a
/// client that accepts an encoding (a model answer meets it only when large enough to compress).
impl hyper::service::Service<hyper::Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Plain, compress::Counting<BoxFuture<'static, Result<Response, Infallible>>>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let req = req.map(Body::new);
        let refuse =
            |e: ApiError| Either::Left(Either::Left(Either::Left(futures_util::future::ready(Ok(e.into_response())))));
        if let Err(refused) = head_limits(&req) {
            return refuse(refused);
        }
        let model_request = req.method() == Method::POST && Endpoint::from_path(req.uri().path()).is_some();
        if model_request {
            // As `ClientAuth` does on the router's routes.
            let Some(caller) = auth::caller(&self.app, req.headers()) else {
                return refuse(ApiError::Unauthorized);
            };
            // Compressed (and counted) after the pipeline answers, if at all: most model answers
            // are too small for it and go as they are.
            // Copied, not cloned: a clone shares hyper's read buffer and would keep it for as
            // long as the request is held (a cold start, the queue).
            let accept =
                req.headers().get(header::ACCEPT_ENCODING).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
            return Either::Left(Either::Right(models(self.app.clone(), caller, req, accept)));
        }
        // The router and the compression stack are always ready, so they are called without
        // asking. A client that accepts no encoding gets nothing compressed and nothing counted.
        if !req.headers().contains_key(header::ACCEPT_ENCODING) {
            return Either::Left(Either::Left(Either::Right(self.plain.clone().call(req))));
        }
        Either::Right(compress::Counting::new(self.compressed.clone().call(req), self.app.clone()))
    }
}

/// The pipeline's answer to a model request, compressed for a client that accepts an encoding
/// (`accept`) when it is large enough.
fn models(
    app: Arc<App>,
    caller: Caller,
    req: Request,
    accept: Option<HeaderValue>,
) -> BoxFuture<'static, Result<Response, Infallible>> {
    // Only the endpoints' own paths come here.
    let endpoint = Endpoint::from_path(req.uri().path()).unwrap_or(Endpoint::Chat);
    let run = pipeline::run(app.clone(), Inbound::new(caller, req, Target::Model(endpoint)));
    Box::pin(run.map(move |answer| Ok(compress::answer(answer.into_response(), accept, caller, &app))))
}

/// 414 and 431 in the JSON error shape (the HTTP layer's own refusals, for heads larger still,
/// have no body).
fn head_limits(req: &Request) -> Result<(), ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI {
        return Err(ApiError::UriTooLong { limit: MAX_URI });
    }
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > MAX_HEADERS {
        return Err(ApiError::HeadersTooLarge { limit: MAX_HEADERS });
    }
    Ok(())
}
