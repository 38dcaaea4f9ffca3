//! The front door's accept loop: HTTP/1 connections with bounded header reads and idle
//! keep-alives (`header_timeout`), a cap on connections open at once (`max_connections`,
//! 503 past it), `TCP_NODELAY`, and a graceful drain on shutdown.
//!
//! axum's own `serve` sets no header timeout, so a client that sends half a request would hold
//! its connection (and a file descriptor) forever; 300 such clients were enough to matter.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use futures_util::FutureExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::base::errors::ApiError;
use crate::server::front::Front;
use crate::server::workers::Spread;

/// Bounds on client connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Headers must arrive within this, and an idle keep-alive connection closes after it.
    pub header_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
}

/// The accept backlog asked for (the kernel caps it at net.core.somaxconn): a burst of
/// thousands of clients, as when many requests arrive for a sleeping service, must not sit in
/// SYN retransmits before warden even sees them (tokio's default is 1024).
const BACKLOG: u32 = 65_535;

/// The front door's socket.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A refused connection gets this long to read its 503.
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);

/// Serves `front` on `listener` until `stop`, then lets open requests finish; connections
/// still open are cut when this future is dropped (the caller bounds the drain).
pub async fn serve(listener: TcpListener, front: Front, limits: Limits, workers: Arc<Spread>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Every connection's task: dropped with this future, so a cut drain leaves none behind.
    let mut conns = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, say: back off rather than spin.
                        warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without it a stream's small SSE chunks wait for the client's delayed ACK
                // (Nagle), which added ~40 ms to the end of every streamed answer.
                let _ = tcp.set_nodelay(true);
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        // The connection moves to a worker's runtime: registered with its
                        // reactor, served by its thread (workers.rs says why).
                        let placed = workers.place();
                        let tcp = match tcp.into_std() {
                            Ok(std) => {
                                let _on = placed.handle.enter();
                                TcpStream::from_std(std)
                            }
                            Err(e) => Err(e),
                        };
                        let tcp = match tcp {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                warn!("handing a connection to a worker failed: {e}");
                                continue;
                            }
                        };
                        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), front.clone()));
                        let handle = placed.handle.clone();
                        // A map, not an async block: `async move { conn.await }` keeps the
                        // connection twice (captured, and as the awaited future), 0.8 KB more
                        // for every open connection.
                        conns.spawn_on(conn.map(move |_| drop((permit, placed))), &handle);
                    }
                    Err(_) => {
                        conns.spawn(refuse(tcp, limits.max_connections));
                    }
                }
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    while conns.join_next().await.is_some() {}
}

/// Answers one request on a connection over the cap with 503 and closes it.
async fn refuse(tcp: TcpStream, limit: usize) {
    let service = hyper::service::service_fn(move |_req| async move {
        Ok::<_, Infallible>(ApiError::TooManyConnections { limit }.into_response().map(Body::new))
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(REFUSAL_WITHIN).keep_alive(false);
    let _ = tokio::time::timeout(REFUSAL_WITHIN, builder.serve_connection(TokioIo::new(tcp), service)).await;
}
