//! The proxy's own connections to local services (`base/pool.rs`): kept and reused, new ones
//! opened as concurrency needs, a service that closes after each answer served all the same,
//! and a refused connect said as such.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use warden::base::http::SendFailure;
use warden::base::pool::{direct, send};

/// A service on a free port that counts the connections it accepts and answers each
/// request with its Host header; with `close`, it closes each connection after one answer.
async fn service(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, accepted) = (listener.local_addr().unwrap(), Arc::new(AtomicUsize::new(0)));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_string()).unwrap_or_default();
                let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from(host)));
                if close {
                    resp.headers_mut().insert("connection", "close".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), answer));
        }
    });
    (addr, accepted)
}

async fn ask(addr: SocketAddr) -> Result<String, SendFailure> {
    let req = Request::builder().uri("/v1/models").header("host", "the-client-asked-here").body(Body::empty()).unwrap();
    let resp = send(addr, req).await?;
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    let (addr, accepted) = service(false).await;
    for _ in 0..5 {
        assert_eq!(ask(addr).await.ok().unwrap(), addr.to_string(), "the Host header is the service's address");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_open_more_and_reuse_them() {
    let (addr, accepted) = service(false).await;
    for _ in 0..3 {
        let answers = futures_util::future::join_all((0..4).map(|_| ask(addr))).await;
        assert!(answers.iter().all(Result::is_ok));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "four at a time need four connections, then reuse them");
}

#[tokio::test]
async fn a_service_that_closes_after_each_answer_gets_a_new_connection_each_time() {
    let (addr, accepted) = service(true).await;
    for _ in 0..3 {
        assert!(ask(addr).await.is_ok());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let failed = ask(addr).await.err().unwrap();
    assert!(failed.connect && failed.tls.is_none(), "{}", failed.detail);
    assert!(failed.detail.contains("refused"), "{}", failed.detail);
}

#[test]
fn only_plain_http_at_an_ip_address_is_direct() {
    assert_eq!(direct("http://127.0.0.1:8080"), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(direct("http://[::1]:8080"), Some("[::1]:8080".parse().unwrap()));
    for other in ["https://127.0.0.1:8080", "http://localhost:8080", "http://127.0.0.1:8080/openai", "http://10.0.0.1"]
    {
        assert_eq!(direct(other), None, "{other}");
    }
}
