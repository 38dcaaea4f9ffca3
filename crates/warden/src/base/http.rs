//! The pooled HTTP client warden uses to reach services (health probes, model APIs, and
//! proxying to any service not at a plain `http://IP:port`: those go through `base/pool.rs`),
//! why a request to a service failed (`SendFailure`, for both), and request ids.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;

/// A service that has not accepted a connection (and, over https, finished the TLS handshake)
/// in this long gets a clear 502, not a hang: a backend whose accept backlog is full drops
/// connection attempts, SYN retransmits grow, and a TLS peer may accept and never speak.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pooled client to services, http and https: keep-alive connections make the hot path one
/// write and one read on an open socket; over https, HTTP/2 is used where the upstream offers
/// it by ALPN, so concurrent requests share one connection.
pub type HttpClient = Client<Bounded, Body>;

thread_local! {
    /// Which serving thread this is (`server/workers.rs`); None on the main runtime's threads.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks this thread as serving thread `i`: its requests use its own pools ([`Clients::here`]).
pub fn serve_here(i: usize) {
    WORKER.with(|w| w.set(Some(i)));
}

/// Serving threads with pools of their own; more share them round.
const WORKER_POOLS: usize = 64;

/// The pools to services with one trust setting: one for the main runtime's tasks (probes,
/// model loads) and one per serving thread, built there on first use, so that a request, its
/// upstream connection and that connection's task run on one thread and hand work to each
/// other without waking another (`server/workers.rs` says why that matters).
pub struct Clients {
    main: HttpClient,
    /// Whom the pools trust, as [`client_trusting`] takes it.
    cas: Option<Arc<Vec<CertificateDer<'static>>>>,
    verify: bool,
    workers: Box<[OnceLock<HttpClient>]>,
}

impl Clients {
    /// Pools trusting only `cas` (None: Mozilla's roots), or with `verify = false` anyone.
    pub fn new(cas: Option<Arc<Vec<CertificateDer<'static>>>>, verify: bool) -> Arc<Clients> {
        let workers = (0..WORKER_POOLS).map(|_| OnceLock::new()).collect();
        Arc::new(Clients { main: client_trusting(cas.as_deref().map(Vec::as_slice), verify), cas, verify, workers })
    }

    /// The pool for the thread this runs on.
    pub fn here(&self) -> &HttpClient {
        match WORKER.with(Cell::get) {
            None => &self.main,
            Some(i) => self.workers[i % WORKER_POOLS]
                .get_or_init(|| client_trusting(self.cas.as_deref().map(Vec::as_slice), self.verify)),
        }
    }
}

/// The client for services trusted the public way: Mozilla's roots (compiled in, so a fresh
/// machine needs no CA bundle).
pub fn client() -> HttpClient {
    client_trusting(None, true)
}

/// A client that trusts only `cas` (a private CA; None = Mozilla's roots), or with
/// `verify = false` no one at all (`tls_insecure`).
fn client_trusting(cas: Option<&[CertificateDer<'static>]>, verify: bool) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let tls = tls_config(cas, verify);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(Bounded(https))
}

fn tls_config(cas: Option<&[CertificateDer<'static>]>, verify: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    if !verify {
        return builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AnyCertificate(provider)))
            .with_no_client_auth();
    }
    let mut roots = rustls::RootCertStore::empty();
    match cas {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        // Validation parsed each one already (config::validate).
        Some(cas) => _ = roots.add_parsable_certificates(cas.iter().cloned()),
    }
    builder.with_root_certificates(roots).with_no_client_auth()
}

/// The https-or-http connector, with the connect and the TLS handshake bounded together by
/// [`CONNECT_TIMEOUT`].
#[derive(Clone)]
pub struct Bounded(HttpsConnector<HttpConnector>);

type Connected = <HttpsConnector<HttpConnector> as tower::Service<Uri>>::Response;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Bounded {
    type Response = Connected;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Connected, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(done) => done,
                Err(_) => Err("no connection (and TLS handshake) within the bound".into()),
            }
        })
    }
}

/// Why a service gave no answer, for the 502 the request gets.
pub struct SendFailure {
    /// No connection (or, over https, no handshake) within [`CONNECT_TIMEOUT`], or refused.
    pub connect: bool,
    /// A certificate problem, said plainly: it does not fix itself.
    pub tls: Option<String>,
    /// The error and its causes, one after the other.
    pub detail: String,
}

impl SendFailure {
    pub fn of(connect: bool, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        SendFailure { connect, tls: tls_failure(e.as_ref()), detail: with_causes(e.as_ref()) }
    }
}

impl From<hyper_util::client::legacy::Error> for SendFailure {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        let connect = e.is_connect();
        SendFailure::of(connect, e)
    }
}

fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The TLS failure in a client error's causes, said plainly ("invalid peer certificate:
/// certificate not valid for name …"), or None when TLS was not what failed.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An io::Error's source() skips the error it wraps (and the connector wraps io errors
        // in io errors): step into it instead.
        cause = match c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// The URI of `path_and_query` at a service's base URL ("http://127.0.0.1:8080",
/// "https://api.example.com/openai").
pub fn at(base: &str, path_and_query: &str) -> Option<Uri> {
    // Not `format!`: its machinery was about 1 % of a warm request's instructions.
    let mut s = String::with_capacity(base.len() + path_and_query.len());
    s.push_str(base);
    s.push_str(path_and_query);
    Uri::try_from(s).ok()
}

mod insecure {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// Accepts any certificate, still checking the handshake's signatures (so the peer holds
    /// the key of the certificate it showed). Only for `tls_insecure = true`.
    #[derive(Debug)]
    pub struct AnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// A `HeaderName` made once: inserting by a `&str` name copies a custom name into a new
/// allocation every time.
pub static REQUEST_ID_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` (kept for correlation), or a new one.
/// Shared, not copied: admission, the forward stage and settling each keep it.
pub fn request_id(headers: &HeaderMap) -> Arc<str> {
    match headers.get(&REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        Some(given) if !given.is_empty() && given.len() <= 128 => given.into(),
        _ => new_request_id().into(),
    }
}

/// A process-unique request id: the process start time and a counter, in hex.
pub fn new_request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| format!("{:x}-", super::clock::unix_now().as_micros() as u64));
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    push_hex(&mut id, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    id
}

/// `n` in lower-case hex, as `{:x}` writes it. By hand: `format!` was about 1 % of a warm
/// request's instructions (callgrind, P1's request).
fn push_hex(s: &mut String, n: u64) {
    let digits = (64 - n.leading_zeros() as usize).div_ceil(4).max(1);
    s.extend((0..digits).rev().map(|i| char::from(b"0123456789abcdef"[(n >> (4 * i)) as usize & 15])));
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_written_as_format_writes_it() {
        for n in [0, 1, 9, 10, 15, 16, 255, 256, 0xabc_def, u64::MAX >> 4, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
        let (a, b) = (super::new_request_id(), super::new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.split_once('-').map(|(p, _)| p), b.split_once('-').map(|(p, _)| p));
    }
}
