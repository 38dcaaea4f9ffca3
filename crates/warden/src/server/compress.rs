//! Answers to clients compressed (gzip, br or zstd, by `Accept-Encoding`) when over 1 KiB,
//! by tower-http; never event streams or NDJSON streams (each event must reach the client as
//! it is made). The bytes this saves are counted (`/metrics`): the answer's size is counted
//! inside the compression layer and what was sent outside it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::FutureExt;
use hyper::body::{Frame, SizeHint};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

use crate::app::App;
use crate::base::caller::Caller;

/// Smaller answers are sent as they are: compressing them saves little and costs a frame.
const MIN_SIZE: u16 = 1024;

/// What is compressed (for a client that accepts an encoding).
fn rule() -> impl Predicate {
    SizeAbove::new(MIN_SIZE)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::const_new("text/event-stream"))
        .and(NotForContentType::const_new("application/x-ndjson"))
}

/// The compression layer with warden's rule of what to compress.
fn layer() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new().compress_when(rule())
}

/// `inner` behind the compression layer, the answer's own bytes counted inside it (`count_raw`);
/// `Counting` or `count_saved` outside it adds up what was saved.
pub fn stack<S>(inner: S) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    ServiceBuilder::new()
        .map_response(|r: Response<_>| r.map(Body::new))
        .layer(layer())
        .map_response(count_raw)
        .service(inner)
}

/// A model answer for a client that accepts an encoding (`accept`, its `Accept-Encoding`):
/// through the compression stack only when the layer may compress it, so the usual small answer
/// is sent as it is with nothing wrapped; what compression saved goes to `caller`'s figures.
pub fn answer(resp: Response, accept: Option<HeaderValue>, caller: Caller, app: &Arc<App>) -> Response {
    let Some(accept) = accept.filter(|_| may_compress(&resp)) else {
        return resp;
    };
    // The stack's services are `Clone` (the router's stack is cloned per request); this one
    // is called once.
    let resp = Arc::new(std::sync::Mutex::new(Some(resp)));
    let this = tower::service_fn(move |_: Request| {
        let taken = resp.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        std::future::ready(Ok::<_, Infallible>(taken.expect("called once")))
    });
    let mut asked = Request::new(Body::empty());
    asked.headers_mut().insert(header::ACCEPT_ENCODING, accept);
    // Every service in the stack answers at once: the answer is ready when first polled.
    let Some(Ok(mut packed)) = stack(this).oneshot(asked).now_or_never() else {
        unreachable!("the compression stack answers at once")
    };
    packed.extensions_mut().insert(caller);
    count_saved(packed, app)
}

/// Whether the layer may compress this answer: one it will pass as it is (most model answers
/// are under 1 KiB and say so) needs nothing counted.
fn may_compress(resp: &Response) -> bool {
    rule().should_compress(resp)
}

/// The answer's bytes before compression, counted by `count_raw` for `Counting`.
#[derive(Clone)]
struct Raw(Arc<AtomicU64>);

pin_project_lite::pin_project! {
    /// Outside the compression layer: the compressed stack's answer, whose saving (once its
    /// body is done) is added to warden's total and the client's.
    pub struct Counting<F> {
        #[pin]
        inner: F,
        app: Arc<App>,
    }
}

impl<F> Counting<F> {
    pub fn new(inner: F, app: Arc<App>) -> Counting<F> {
        Counting { inner, app }
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Counting<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(resp) = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(count_saved(resp, this.app)))
    }
}

/// A compressed answer's body, counted to add what compression saved when it is done.
fn count_saved(resp: Response, app: &Arc<App>) -> Response {
    let raw = match resp.extensions().get::<Raw>() {
        Some(Raw(raw)) if resp.headers().contains_key(header::CONTENT_ENCODING) => raw.clone(),
        _ => return resp,
    };
    let client = resp.extensions().get::<crate::base::caller::Caller>().map(|c| app.gate.client_name(c.client));
    let done = Done { raw, app: app.clone(), client };
    resp.map(|inner| Body::new(Counted { inner, count: Arc::new(AtomicU64::new(0)), done: Some(done) }))
}

/// Inside the compression layer: counts the answer's own bytes, and leaves the count on the
/// answer for `counted` (the compression layer keeps a response's extensions).
fn count_raw(resp: Response) -> Response {
    if !may_compress(&resp) {
        return resp;
    }
    let count = Arc::new(AtomicU64::new(0));
    let (mut parts, inner) = resp.into_parts();
    parts.extensions.insert(Raw(count.clone()));
    Response::from_parts(parts, Body::new(Counted { inner, count, done: None }))
}

/// A body whose data bytes are counted; with `done`, it adds `raw - sent` to the saved totals
/// (warden's, and the client's when one is known) when dropped (whole or cut short).
struct Counted {
    inner: Body,
    count: Arc<AtomicU64>,
    done: Option<Done>,
}

/// Where a compressed answer's saving goes.
struct Done {
    /// The answer's bytes before compression.
    raw: Arc<AtomicU64>,
    app: Arc<App>,
    /// The client it was for (None: a route without a caller, as `/metrics`).
    client: Option<String>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let (raw, sent) = (done.raw.load(Ordering::Relaxed), self.count.load(Ordering::Relaxed));
            let saved = raw.saturating_sub(sent);
            done.app.compression_saved.fetch_add(saved, Ordering::Relaxed);
            if let Some(client) = &done.client {
                done.app.client_savings.compressed(client, saved);
            }
        }
    }
}
