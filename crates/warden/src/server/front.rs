//! The first thing every request meets, written as one service rather than a stack of
//! middlewares: the head's size limits (414 and 431 in the JSON error shape), then the router,
//! through the compression layer only for a client that accepts an encoding.
//!
//! Why one service: each `from_fn` middleware boxed a future and cloned the stack below it for
//! every request, and a held request kept each of those futures alive while it waited. Most API
//! traffic (and every request of a client that sends no `Accept-Encoding`) now goes straight to
//! the router with nothing boxed on the way.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::{BoxFuture, Either, Ready};
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::server::compress;

/// A request target longer than this is refused (414).
const MAX_URI: usize = 8 << 10;
/// Request headers larger than this together are refused (431).
const MAX_HEADERS: usize = 64 << 10;

/// The router, and the same router behind compression.
#[derive(Clone)]
pub struct Front {
    plain: Router,
    compressed: BoxCloneSyncService<Request, Response, Infallible>,
    app: Arc<App>,
}

impl Front {
    pub fn new(router: Router, app: Arc<App>) -> Front {
        let compressed = ServiceBuilder::new()
            .map_response(|r: Response<_>| r.map(Body::new))
            .layer(compress::layer())
            .map_response(compress::count_raw)
            .service(router.clone());
        Front { plain: router, compressed: BoxCloneSyncService::new(compressed), app }
    }
}

/// A refusal of the head, or the router's own answer.
type Plain = Either<Ready<Result<Response, Infallible>>, axum::routing::future::RouteFuture<Infallible>>;

/// hyper's own service trait, taken by `&self`: hyper calls it once per request, and nothing is
/// cloned for a request but the router's handle (an `Arc`), and the compression stack for a
/// client that accepts an encoding.
impl hyper::service::Service<hyper::Request<Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Plain, compress::Counting<BoxFuture<'static, Result<Response, Infallible>>>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let req = req.map(Body::new);
        if let Err(refused) = head_limits(&req) {
            return Either::Left(Either::Left(futures_util::future::ready(Ok(refused.into_response()))));
        }
        // The router and the compression stack are always ready, so they are called without
        // asking. A client that accepts no encoding gets nothing compressed and nothing counted.
        if !req.headers().contains_key(header::ACCEPT_ENCODING) {
            return Either::Left(Either::Right(self.plain.clone().call(req)));
        }
        Either::Right(compress::Counting::new(self.compressed.clone().call(req), self.app.clone()))
    }
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
