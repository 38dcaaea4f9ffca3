//! `kind = "remote"` over https: a local TLS server with a certificate made at test time by a
//! private CA (`ca_file`), plain and streamed, HTTP/2 by ALPN, and the ways trust fails — a
//! wrong host name, an unknown issuer — each a clear 502 and an alert, never a hang.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A private CA, and a certificate it signed for "localhost" only (not 127.0.0.1), written as
/// ca.pem, cert.pem and key.pem in `dir`.
fn make_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "warden test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

struct Setup {
    warden: Warden,
    _upstream: Upstream,
    _certs: tempfile::TempDir,
}

/// One TLS upstream, reached four ways: trusting the private CA (by its name and by an address
/// the certificate does not name), trusting only Mozilla's roots, and not verifying at all.
fn setup() -> Setup {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let upstream = Upstream::start_with(&["--tls-cert", &file("cert.pem"), "--tls-key", &file("key.pem")]);
    let port = upstream.1;
    let ca = file("ca.pem");
    let warden = Warden::start(&format!(
        r#"
[services.hosted]
kind = "remote"
url = "https://localhost:{port}/"
ca_file = "{ca}"
models = ["gpt-4"]

[services.misnamed]
kind = "remote"
url = "https://127.0.0.1:{port}"
ca_file = "{ca}"
models = ["misnamed-model"]

[services.public]
kind = "remote"
url = "https://localhost:{port}"
models = ["public-model"]

[services.unverified]
kind = "remote"
url = "https://127.0.0.1:{port}"
tls_insecure = true
models = ["unverified-model"]
"#
    ));
    Setup { warden, _upstream: upstream, _certs: certs }
}

/// Bounded: an answer that never comes fails the test instead of hanging it.
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn ask(w: &Warden, body: Value) -> reqwest::Response {
    client().post(w.url("/v1/chat/completions")).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_upstream_answers_plain_and_streamed_over_http2() {
    let s = setup();
    let resp = ask(&s.warden, chat("gpt-4")).await;
    assert_eq!(resp.status(), 200);
    // The upstream offered h2 and http/1.1 by ALPN; warden took HTTP/2.
    assert_eq!(resp.headers()["x-fake-http-version"], "HTTP/2.0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 8, "{body}");

    let mut streamed = chat("gpt-4");
    streamed["stream"] = json!(true);
    let resp = ask(&s.warden, streamed).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut text = String::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = text.matches("data: {").count();
    assert!(events >= 8, "one event per token at least: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Many at once share the pooled connection(s) and all succeed.
    let many = (0..20).map(|_| ask(&s.warden, chat("gpt-4")));
    for resp in futures_util::future::join_all(many).await {
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_fit_is_a_clear_502_and_an_alert() {
    let s = setup();
    let cases = [
        // The certificate names "localhost", not 127.0.0.1.
        ("misnamed-model", "misnamed", "not valid for name"),
        // Signed by a CA Mozilla never heard of.
        ("public-model", "public", "UnknownIssuer"),
    ];
    for (model, service, reason) in cases {
        let resp = ask(&s.warden, chat(model)).await;
        assert_eq!(resp.status(), 502, "{model}");
        let body: Value = resp.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(body["error"]["code"], "upstream_tls_error", "{body}");
        assert!(msg.contains(&format!("service {service}")), "{msg}");
        assert!(msg.contains("invalid peer certificate") && msg.contains(reason), "{msg}");
    }
    let alerts = s.warden.get("/admin/alerts").await;
    for service in ["misnamed", "public"] {
        let found =
            alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "upstream_tls" && a["subject"] == service);
        assert!(found, "{service}: {alerts}");
    }
    // The service that trusts the CA was not disturbed by its neighbours' failures.
    assert_eq!(ask(&s.warden, chat("gpt-4")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_insecure_is_an_explicit_logged_opt_in() {
    let s = setup();
    assert!(s.warden.wait_log("unverified: tls_insecure = true", Duration::from_secs(5)), "{}", s.warden.log());
    let resp = ask(&s.warden, chat("unverified-model")).await;
    assert_eq!(resp.status(), 200);
}

#[test]
fn bad_tls_settings_are_refused_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = dir.path().join("junk.pem").display().to_string();
    let cases = [
        (
            format!("url = \"http://127.0.0.1:9\"\nca_file = \"{junk}\""),
            "services.r.ca_file",
            "only applies to an https url",
        ),
        ("url = \"https://h\"\nca_file = \"/nonexistent/ca.pem\"".to_string(), "services.r.ca_file", "cannot read"),
        (format!("url = \"https://h\"\nca_file = \"{junk}\""), "services.r.ca_file", "no usable CA certificate"),
        (
            format!("url = \"https://h\"\nca_file = \"{junk}\"\ntls_insecure = true"),
            "services.r.tls_insecure",
            "cannot be combined",
        ),
        ("url = \"ftp://h\"".to_string(), "services.r.url", "must look like"),
    ];
    for (service, key, says) in cases {
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, format!("[services.r]\nkind = \"remote\"\n{service}\n")).unwrap();
        let out = std::process::Command::new(warden_bin()).args(["config", "check"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{service}");
        assert!(err.contains(key) && err.contains(says), "{service}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_and_never_speaks_tls_is_a_bounded_502() {
    // The kernel completes the TCP handshake into the backlog; nothing ever answers the hello.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let w = Warden::start(&format!(
        "[services.silent]\nkind = \"remote\"\nurl = \"https://localhost:{port}\"\nmodels = [\"silent-model\"]\n"
    ));
    let resp = ask(&w, chat("silent-model")).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("service silent") && msg.contains("within 5 s"), "{msg}");
    drop(silent);
}
