//! Stage 9: settling. The answer's body holds the request's lease and admission ticket until
//! it ends (or the client goes away); it reads the answer's `usage` on the way through, and
//! when it ends the ticket settles the real cost, corrects the pools, frees the slots and
//! records the usage (`admission::gate::Ticket`'s drop), and the lease frees the service.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::account::usage::Scanner;
use crate::admission::gate::Ticket;
use crate::service::lease::Lease;

/// The request's admission ticket, and what reads the answer's usage for it.
pub struct Meter {
    ticket: Ticket,
    /// Reads `usage` from a successful model answer (JSON or server-sent events).
    scanner: Option<Scanner>,
}

impl Meter {
    /// For an answer with these headers; `usage`: read what it reports using (model requests).
    pub fn new(mut ticket: Ticket, answer: &http::response::Parts, usage: bool) -> Meter {
        ticket.status = Some(answer.status.as_u16());
        let content_type = answer.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let stream = content_type.unwrap_or("").contains("event-stream");
        let scanner = (usage && answer.status.is_success()).then(|| Scanner::new(stream));
        Meter { ticket, scanner }
    }
}

pub struct LeaseBody {
    inner: Incoming,
    /// Dropped when the stream ends, fails, or this body is dropped (client disconnect).
    lease: Option<Lease>,
    /// Settled with the lease: with the usage read if the answer ended, else as reserved.
    meter: Option<Meter>,
}

impl LeaseBody {
    pub fn new(inner: Incoming, lease: Lease, meter: Meter) -> Self {
        LeaseBody { inner, lease: Some(lease), meter: Some(meter) }
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
