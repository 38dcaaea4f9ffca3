//! A response body that holds the request's lease until it ends (or the client goes away).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::account::usage::Scanner;
use crate::admission::gate::Ticket;
use crate::service::lease::Lease;

/// The request's admission ticket, and what reads the answer's usage for it.
pub struct Meter {
    pub ticket: Ticket,
    pub scanner: Option<Scanner>,
}

pub struct LeaseBody {
    inner: Incoming,
    /// Dropped when the stream ends, fails, or this body is dropped (client disconnect).
    lease: Option<Lease>,
    /// Settled with the lease: with the usage read if the answer ended, else as reserved.
    meter: Option<Meter>,
}

impl LeaseBody {
    pub fn new(inner: Incoming, lease: Lease, meter: Option<Meter>) -> Self {
        LeaseBody { inner, lease: Some(lease), meter }
    }
}

impl LeaseBody {
    /// The answer ended whole: settle with the usage it reported, and free the lease.
    fn finish(&mut self) {
        if let Some(mut m) = self.meter.take() {
            m.ticket.usage = m.scanner.take().and_then(Scanner::finish);
        }
        self.lease = None;
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(Meter { scanner: Some(s), .. })) = (frame.data_ref(), self.meter.as_mut()) {
                    s.feed(data);
                }
                // The last bytes of a sized answer: settle before the client can see them, so
                // its next request already finds the budget and slots freed.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => {
                self.meter = None;
                self.lease = None;
            }
            Poll::Pending => {}
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
