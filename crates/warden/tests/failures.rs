//! End to end: what clients get when things go wrong, and that nothing is left broken.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn service(name: &str, extra_args: &str, settings: &str) -> String {
    format!(
        "[services.{name}]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${{PORT}}\"{extra_args}]\nmodels = [\"{name}-model\"]\n{settings}\n"
    )
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_request_gives_502_and_the_next_request_restarts_cleanly() {
    let w = Warden::start(&service("crashy", ", \"--crash-after\", \"1\"", ""));
    assert_eq!(w.post("/v1/chat/completions", chat("crashy-model")).await.status(), 200);
    let first_pid = w.service("crashy").await["pid"].clone();
    let (status, body) = error_of(w.post("/v1/chat/completions", chat("crashy-model")).await).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "backend_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("service crashy failed mid-request"));
    assert!(w.wait_state("crashy", "failed", Duration::from_secs(3)).await);
    assert!(w.service("crashy").await["last_error"].as_str().unwrap().contains("exited unexpectedly"));
    let resp = w.post("/v1/chat/completions", chat("crashy-model")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-warden-cold-start-ms"));
    let svc = w.service("crashy").await;
    assert_eq!(svc["state"], "running");
    assert_ne!(svc["pid"], first_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_timeout_answers_503_with_the_log_tail_and_kills_the_attempt() {
    let w = Warden::start(&service("stuck", ", \"--startup-delay-ms\", \"60000\"", "start_timeout = \"500ms\""));
    let t0 = std::time::Instant::now();
    let resp = w.post("/v1/chat/completions", chat("stuck-model")).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(resp.headers().contains_key("retry-after"));
    let (status, body) = error_of(resp).await;
    assert_eq!(status, 503);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("service stuck failed to start: not healthy within start_timeout"), "{msg}");
    assert!(msg.contains("fake-backend: loading model fake"), "log tail in message: {msg}");
    assert_eq!(body["error"]["code"], "service_start_failed");
    // The abandoned process is gone (no fake-backend left in warden's tree).
    let svc = w.service("stuck").await;
    assert_eq!(svc["state"], "failed");
    assert_eq!(svc["pid"], Value::Null);
    assert!(wait_until(Duration::from_secs(2), || children_of(w.pid()).is_empty()), "{:?}", children_of(w.pid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_reports_why_backs_off_and_may_be_retried() {
    let w = Warden::start(&service("broken", ", \"--fail-start\"", ""));
    let (status, body) = error_of(w.post("/v1/chat/completions", chat("broken-model")).await).await;
    assert_eq!(status, 503);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited before becoming healthy (exit status: 1)"), "{msg}");
    assert!(msg.contains("failing to start as asked"), "{msg}");
    // Within the backoff the answer comes at once, without another start.
    let resp = w.post("/v1/chat/completions", chat("broken-model")).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(error_of(resp).await.1["error"]["message"].as_str().unwrap().contains("next try in"));
    assert_eq!(w.log().matches("Starting service broken").count(), 1);
    // After the backoff a new attempt is made.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.post("/v1/chat/completions", chat("broken-model")).await.status(), 503);
    assert_eq!(w.log().matches("Starting service broken").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_exist_is_a_clear_permanent_error() {
    let w = Warden::start(
        "[services.ghost]\nkind = \"process\"\ncommand = [\"/nonexistent/llama-server\"]\nmodels = [\"g\"]\n",
    );
    // Not a 503 with Retry-After: retrying cannot help until the config changes (issue 15.6).
    let resp = w.post("/v1/chat/completions", chat("g")).await;
    assert!(!resp.headers().contains_key("retry-after"));
    let (status, body) = error_of(resp).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("service_cannot_start")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot run /nonexistent/llama-server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_errors_and_change_nothing() {
    let w = Warden::start_with_server(&service("llm", "", ""), "max_body = \"1KiB\"");
    let client = reqwest::Client::new();
    let post_raw = |body: &'static str| client.post(w.url("/v1/chat/completions")).body(body).send();

    let (status, body) = error_of(post_raw("{not json").await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")));
    let (status, body) = error_of(post_raw(r#"{"messages": []}"#).await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("missing_model")));
    let (status, body) = error_of(w.post("/v1/chat/completions", chat("nope")).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("known models: llm-model"));
    let big = json!({"model": "llm-model", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let (status, body) = error_of(w.post("/v1/chat/completions", big).await).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")));
    let (status, body) = error_of(client.get(w.url("/svc/nope/x")).send().await.unwrap()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("service_not_found")));
    assert_eq!(client.post(w.url("/svc/llm/upload")).body(vec![b'x'; 4096]).send().await.unwrap().status(), 413);
    assert_eq!(client.get(w.url("/nowhere")).send().await.unwrap().status(), 404);
    assert_eq!(client.get(w.url("/health")).send().await.unwrap().status(), 200);
    // None of that started anything.
    assert_eq!(w.service("llm").await["state"], "stopped");
    assert!(!w.log().contains("Starting service"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_queue_requests_get_503_with_retry_after() {
    let w = Warden::start(&service("slow", ", \"--startup-delay-ms\", \"800\"", "max_queue = 3"));
    let client = reqwest::Client::new();
    let requests = (0..10).map(|_| client.post(w.url("/v1/chat/completions")).json(&chat("slow-model")).send());
    let responses = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    let mut full = 0;
    for resp in responses {
        let resp = resp.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(resp.headers()["retry-after"], "1");
                assert_eq!(error_of(resp).await.1["error"]["code"], "queue_full");
                full += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, full), (3, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_reaches_any_path_with_method_query_and_body() {
    let w = Warden::start(
        "[services.qdrant]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\", \"--health-path\", \"/healthz\"]\nhealth = \"/healthz\"\n",
    );
    let resp = reqwest::Client::new()
        .put(w.url("/svc/qdrant/collections/c1/points?wait=true"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-warden-cold-start-ms"));
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/collections/c1/points");
    assert_eq!(echo["query"], "wait=true");
    assert_eq!(echo["body_bytes"], 10);
    let root: Value = reqwest::get(w.url("/svc/qdrant")).await.unwrap().json().await.unwrap();
    assert_eq!(root["path"], "/");
}

/// A service's output is drained whatever it holds: bytes that are not UTF-8 and lines longer
/// than any buffer. A pipe left undrained fills (64 KiB) and the service blocks on its next
/// write, so a server that once printed a stray byte would hang mid-start or mid-request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_is_not_text_or_has_no_line_ends_is_drained_and_kept() {
    // A byte that is not UTF-8, a 300 KB "line" (a progress bar without line ends), then more
    // than a pipe holds in ordinary lines, and only then the server.
    let script = r#"printf 'bad \377\376 byte\n'; head -c 300000 /dev/zero | tr '\0' '.'; echo; i=0; while [ $i -lt 3000 ]; do echo "chatty line $i ................................................"; i=$((i+1)); done; exec FAKE --port ${PORT}"#;
    let w = Warden::start(&format!(
        "[services.noisy]\nkind = \"process\"\ncommand = [\"sh\", \"-c\", {script:?}]\nmodels = [\"noisy-model\"]\nstart_timeout = \"30s\"\n"
    ));
    let resp = w.post("/v1/chat/completions", chat("noisy-model")).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // The pumps copy what the service wrote as it comes: the last of it may land just after
    // the answer.
    let has =
        |v: &Value, start: &str| v["lines"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().starts_with(start));
    let got = fetch_until(
        Duration::from_secs(10),
        || w.get("/admin/services/noisy/logs?lines=5000"),
        |v| has(v, "chatty line 2999") && has(v, "fake-backend: listening on"),
    )
    .await;
    let lines: Vec<&str> = got["lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.starts_with("chatty line 2999")), "{:?}", &lines[lines.len().saturating_sub(5)..]);
    assert!(lines.iter().any(|l| l.starts_with("fake-backend: listening on")), "{lines:?}");
    // The stray bytes are replaced, the line kept; the long line is cut into bounded pieces.
    assert!(lines.iter().any(|l| l == &"bad \u{fffd}\u{fffd} byte"), "{:?}", &lines[..lines.len().min(3)]);
    assert!(lines.iter().all(|l| l.len() <= 16 * 1024), "a line over the bound");
}

/// A fixed port that something else already answers on: the start is refused, saying so. Were
/// it not, the health check would find the other program, and the service's requests would go
/// to it while the service itself failed to bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_port_another_program_answers_on_is_refused_not_borrowed() {
    struct Foreign(std::process::Child);
    impl Drop for Foreign {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let foreign = std::process::Command::new(fake_backend())
        .args(["--port", &port.to_string(), "--model", "foreign"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let foreign = Foreign(foreign);
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    assert!(wait_until(Duration::from_secs(10), listening), "the other program listens");
    let w = Warden::start(&service("fixed", "", &format!("port = {port}\nhealth = \"/health\"")));
    let (status, body) = error_of(w.post("/v1/chat/completions", chat("fixed-model")).await).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("port {port} is already in use by a program warden did not start")), "{msg}");
    assert!(children_of(w.pid()).is_empty(), "nothing was started: {:?}", children_of(w.pid()));
    drop(foreign);
}
