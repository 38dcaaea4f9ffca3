//! Keep-alive HTTP/1 connections from one thread to plain-http services at an IP address (every
//! process and container service): the proxy's hot path.
//!
//! hyper-util's pooled client, which reaches everything else (https, host names, a base path),
//! hashes the authority byte by byte with SipHash on each checkout and return, boxes the request
//! future and spawns a task per request to put the connection back once it is idle: about a
//! tenth of a proxied request's instructions (callgrind). Here a connection stays in its
//! thread's list for its whole life, busy or not, and a request takes the first one that is
//! ready for another; nothing is handed back.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::http::{SendFailure, CONNECT_TIMEOUT};

/// A connection unused this long is closed (what hyper-util's pool did too).
const IDLE: Duration = Duration::from_secs(30);
/// Connections kept per service and thread; past it a connection serves one request and closes.
const KEEP: usize = 256;
/// How often a thread's lists are swept of closed and idle connections (on a request's way).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Conn {
    tx: SendRequest<Body>,
    used: Instant,
}

struct Upstream {
    addr: SocketAddr,
    /// Its address as the Host header, made once (a clone shares its bytes).
    host: HeaderValue,
    conns: Vec<Conn>,
}

#[derive(Default)]
struct Pool {
    upstreams: Vec<Upstream>,
    swept: Option<Instant>,
}

thread_local! {
    /// This thread's connections: a serving thread runs a request, its connection and that
    /// connection's task, so they never need a lock or another thread.
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// The address of a service base URL this pool serves: "http://" and an IP address with a port,
/// nothing after. Anything else goes through hyper-util's client.
pub fn direct(base: &str) -> Option<SocketAddr> {
    base.strip_prefix("http://")?.parse().ok()
}

impl Pool {
    fn upstream(&mut self, addr: SocketAddr) -> &mut Upstream {
        let i = match self.upstreams.iter().position(|u| u.addr == addr) {
            Some(i) => i,
            None => {
                let host = HeaderValue::try_from(addr.to_string()).expect("an address is a header value");
                self.upstreams.push(Upstream { addr, host, conns: Vec::new() });
                self.upstreams.len() - 1
            }
        };
        &mut self.upstreams[i]
    }

    /// Drops closed connections and those idle past [`IDLE`], and services left with none.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|t| now.duration_since(t) < SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        for u in &mut self.upstreams {
            u.conns.retain(|c| !(c.tx.is_closed() || (c.tx.is_ready() && now.duration_since(c.used) > IDLE)));
        }
        self.upstreams.retain(|u| !u.conns.is_empty());
    }
}

/// Sends `req` (origin-form URI; its Host header is set here, to `addr`) on a connection of this
/// thread's, opening one (bounded by [`CONNECT_TIMEOUT`]) when none is ready. A request a
/// connection closed on as it went idle goes out on another; one it took is never sent twice.
pub async fn send(addr: SocketAddr, mut req: Request<Body>) -> Result<Response<Incoming>, SendFailure> {
    let host = POOL.with_borrow_mut(|pool| pool.upstream(addr).host.clone());
    req.headers_mut().insert(header::HOST, host);
    let mut req = Some(req);
    loop {
        let now = Instant::now();
        let ready = POOL.with_borrow_mut(|pool| {
            pool.sweep(now);
            let conns = &mut pool.upstream(addr).conns;
            let mut i = 0;
            while i < conns.len() {
                let c = &mut conns[i];
                if c.tx.is_ready() {
                    c.used = now;
                    return req.take().map(|r| c.tx.try_send_request(r));
                }
                if c.tx.is_closed() {
                    // A service that closes after each answer (HTTP/1.0) leaves one per request.
                    conns.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            None
        });
        let reused = ready.is_some();
        let sent = match ready {
            Some(sent) => sent,
            None => {
                // Boxed: a new connection is the rare case, and its future would otherwise make
                // every request's larger (and a request's future is moved whole as it is built).
                let mut tx = Box::pin(connect(addr)).await?;
                let sent = tx.try_send_request(req.take().expect("kept when no connection took it"));
                POOL.with_borrow_mut(|pool| {
                    let up = pool.upstream(addr);
                    if up.conns.len() < KEEP {
                        up.conns.push(Conn { tx, used: now });
                    }
                });
                sent
            }
        };
        match sent.await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // A kept connection closed before it took the request (the service closed it
                // as it went idle): try the next one. A new one that does is the service's
                // failure, said as it is, as hyper-util's client did.
                Some(r) if reused => req = Some(r),
                _ => return Err(SendFailure::of(false, e.into_error())),
            },
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, SendFailure> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendFailure::of(true, e)),
        Err(_) => return Err(SendFailure::of(true, "no connection within the bound")),
    };
    // Small writes (a request head, a chunk) go out at once, as hyper-util's connector did.
    let _ = stream.set_nodelay(true);
    let (tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| SendFailure::of(true, e))?;
    // The connection's own task, on this thread's runtime: it ends when the service closes
    // the connection or the pool drops its sender (after the answer in flight, if any).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}
