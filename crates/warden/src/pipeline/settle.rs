//! Stage 9: settling. The answer's body holds the request's lease and admission ticket until
//! it ends (or the client goes away); it reads the answer's `usage` on the way through, and
//! when it ends the ticket settles the real cost, corrects the pools, frees the slots and
//! records the usage (`admission::gate::Ticket`'s drop), and the lease frees the service.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::account::usage::{Framing, Scanner};
use std::time::Instant;

use super::forward::Probe;
use crate::account::performance::Sample;
use crate::admission::gate::Ticket;
use crate::base::errors::ApiError;
use crate::service::lease::Lease;

/// The request's admission ticket, and what reads the answer's usage for it.
pub struct Meter {
    ticket: Box<Ticket>,
    /// Reads `usage` from a successful model answer (JSON or server-sent events).
    scanner: Option<Scanner>,
}

impl Meter {
    /// For an answer with this head, framed so; `usage`: read what it reports using (model
    /// requests).
    pub fn new(mut ticket: Box<Ticket>, answer: &http::response::Parts, framing: Framing, usage: bool) -> Meter {
        ticket.status = Some(answer.status.as_u16());
        // The usage is read only where it is accounted (a price, pools, or clients).
        let scanner = (usage && ticket.accounted && answer.status.is_success()).then(|| Scanner::new(framing));
        Meter { ticket, scanner }
    }
}

/// A server-sent event stream (whose end can still carry an error event).
pub fn framing(answer: &http::response::Parts) -> Framing {
    let content_type = answer.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Framing::of(content_type.unwrap_or(""))
}

pub struct LeaseBody {
    inner: Incoming,
    /// Dropped when the stream ends, fails, or this body is dropped (client disconnect).
    lease: Option<Lease>,
    /// Settled with the lease: with the usage read if the answer ended, else as reserved.
    meter: Option<Meter>,
    /// How the answer is framed: a stream (server-sent events, or Ollama's NDJSON) whose
    /// service dies mid-way still ends with an error event in its own framing and a clean
    /// end of the body, so a client can tell why.
    framing: Framing,
    /// The service, for that error's message.
    service: String,
    /// The body has ended (after the error event of a cut stream).
    ended: bool,
    /// The answer's timing, recorded when it ends (model requests), with whether its status
    /// was a success and when its first bytes came.
    perf: Option<(Probe, bool, Option<Instant>)>,
}

impl LeaseBody {
    pub fn new(inner: Incoming, lease: Lease, meter: Meter, framing: Framing) -> Self {
        let service = lease.service().to_string();
        LeaseBody { inner, lease: Some(lease), meter: Some(meter), framing, service, ended: false, perf: None }
    }

    /// Records the answer's timing in the performance tracker when it ends.
    pub fn timed(mut self, probe: Option<Probe>, status_ok: bool) -> Self {
        self.perf = probe.map(|p| (p, status_ok, None));
        self
    }

    /// The answer ended (whole, or cut): its timing goes to the tracker.
    fn record(&mut self, whole: bool, tokens: Option<u64>) {
        let Some((probe, status_ok, first)) = self.perf.take() else { return };
        let ms = |t: Instant| t.duration_since(probe.sent).as_millis().min(u32::MAX as u128) as u32;
        // One reading of the clock for all three (in a VM each is a fair part of a microsecond).
        let now = Instant::now();
        probe.metrics.answered(
            &probe.label,
            now.duration_since(probe.sent),
            first.map(|f| f.duration_since(probe.sent)),
        );
        probe.tracker.record(Sample {
            at: now,
            model: probe.model,
            task: probe.task,
            ok: status_ok && whole,
            total_ms: ms(now),
            first_byte_ms: first.map(ms),
            tokens: tokens.map(|t| t.min(u64::from(u32::MAX)) as u32),
            weight: 1,
        });
    }

    /// The answer ended whole: settle with the usage it reported, and free the lease.
    fn finish(&mut self) {
        let mut tokens = None;
        if let Some(mut m) = self.meter.take() {
            m.ticket.usage = m.scanner.take().and_then(Scanner::finish);
            tokens = m.ticket.usage.map(|u| u.completion_tokens);
        }
        self.record(true, tokens);
        self.lease = None;
    }

    /// The service failed mid-answer: settle for what reached the client, free the lease.
    fn cut(&mut self) {
        if let Some(mut m) = self.meter.take() {
            m.ticket.cut_after = Some(m.scanner.as_ref().map_or(0, Scanner::delivered_tokens));
        }
        self.record(false, None);
        self.lease = None;
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((_, _, first @ None)) = self.perf.as_mut() {
                    *first = Some(Instant::now());
                }
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
            Poll::Ready(Some(Err(e))) => {
                self.cut();
                if self.framing.streams() {
                    self.ended = true;
                    let error = ApiError::BadGateway {
                        service: std::mem::take(&mut self.service),
                        detail: format!("the stream was cut: {e}"),
                    };
                    let event = match self.framing {
                        Framing::Sse => format!("data: {}\n\n", error.body()),
                        // Ollama ends a failed stream with a line `{"error": "…"}`.
                        _ => format!("{}\n", serde_json::json!({"error": error.message()})),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
