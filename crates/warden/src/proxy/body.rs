//! A response body that holds the request's lease until it ends (or the client goes away).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::service::lease::Lease;

pub struct LeaseBody {
    inner: Incoming,
    /// Dropped when the stream ends, fails, or this body is dropped (client disconnect).
    lease: Option<Lease>,
    /// The client's concurrency slot, released with the lease.
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LeaseBody {
    pub fn new(inner: Incoming, lease: Lease, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        LeaseBody { inner, lease: Some(lease), slot }
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.lease = None;
            self.slot = None;
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
