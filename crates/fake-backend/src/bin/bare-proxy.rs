//! bare-proxy: hyper alone, as warden's serving thread uses it, and nothing else. One thread,
//! HTTP/1 in (the same header read timeout and keep-alive), keep-alive HTTP/1 connections to
//! one backend out (a list per thread, as warden's `base/pool.rs`), the request's body streamed
//! through unread: no routing, admission, accounting or anything else warden does.
//!
//! A peer in the proxy benchmark (BENCHMARKS.md, P1): what the HTTP library itself costs per
//! proxied request, the floor under warden's own figure.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

#[derive(Parser)]
#[command(about = "hyper alone as a reverse proxy, for the benchmarks")]
struct Args {
    /// Where it listens (127.0.0.1).
    #[arg(long)]
    port: u16,
    /// The backend's address (ip:port).
    #[arg(long)]
    upstream: SocketAddr,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// Connections to the backend, busy or not; a request takes the first that is ready.
    static CONNS: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Incoming>, Error> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(upstream)).await??;
    stream.set_nodelay(true)?;
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

async fn forward(
    upstream: SocketAddr,
    host: HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, Error> {
    req.headers_mut().insert(HOST, host);
    let mut req = Some(req);
    loop {
        let ready = CONNS.with_borrow_mut(|conns| {
            conns.retain(|c| !c.is_closed());
            conns.iter_mut().find(|c| c.is_ready()).map(|c| c.try_send_request(req.take().expect("kept")))
        });
        let (sent, reused) = match ready {
            Some(sent) => (sent, true),
            None => {
                let mut tx = connect(upstream).await?;
                let sent = tx.try_send_request(req.take().expect("kept"));
                CONNS.with_borrow_mut(|conns| conns.push(tx));
                (sent, false)
            }
        };
        match sent.await {
            Ok(resp) => return Ok(resp),
            // A kept connection the backend closed before it took the request: the next one.
            Err(mut e) => match e.take_message() {
                Some(r) if reused => req = Some(r),
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
        let host = HeaderValue::try_from(args.upstream.to_string())?;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).keep_alive(true);
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let (upstream, host) = (args.upstream, host.clone());
            let service = hyper::service::service_fn(move |req| forward(upstream, host.clone(), req));
            tokio::spawn(builder.serve_connection(TokioIo::new(tcp), service));
        }
    })
}
