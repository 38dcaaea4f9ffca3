//! End to end: wake on demand, held requests, idle sleep, leases, pinned services.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

fn service(name: &str, extra_args: &str, settings: &str) -> String {
    format!(
        "[services.{name}]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${{PORT}}\"{extra_args}]\nmodels = [\"{name}-model\"]\n{settings}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cold_requests_cause_one_start_and_all_are_answered() {
    // max_concurrent above 50: all of them are sent on together once it runs (the default
    // paces a burst; see tests/hardening.rs).
    let w =
        Warden::start(&service("llm", ", \"--startup-delay-ms\", \"400\"", "max_queue = 100\nmax_concurrent = 100"));
    let client = reqwest::Client::new();
    let requests = (0..50).map(|_| {
        let client = client.clone();
        let url = w.url("/v1/chat/completions");
        async move { client.post(url).json(&chat("llm-model")).send().await.unwrap() }
    });
    let responses = futures_util::future::join_all(requests).await;
    // The header is how long that request waited; a request that arrived late in
    // the start waited less than the whole 400 ms, but the first waited all of it.
    let mut waits = Vec::new();
    for resp in responses {
        assert_eq!(resp.status(), 200);
        if let Some(ms) = resp.headers().get("x-warden-cold-start-ms") {
            waits.push(ms.to_str().unwrap().parse::<u64>().unwrap());
        }
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7");
    }
    let cold = waits.len();
    assert!(cold >= 40, "most requests waited for the start: {cold}");
    assert!(waits.iter().max().copied().unwrap_or(0) >= 400, "{waits:?}");
    assert_eq!(w.log().matches("Starting service llm").count(), 1, "{}", w.log());
    // The backend saw all 50 requests, on one process.
    let stats = w.get("/svc/llm/stats").await;
    assert_eq!(stats["requests"], 50);
    assert_eq!(stats["pid"], w.service("llm").await["pid"]);
    // A warm request carries no cold-start header.
    let warm = w.post("/v1/chat/completions", chat("llm-model")).await;
    assert!(warm.headers().get("x-warden-cold-start-ms").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_service_sleeps_after_its_timeout_and_its_process_is_gone() {
    let w = Warden::start(&format!(
        "[idle]\ncheck_interval = \"50ms\"\n{}",
        service("llm", "", "idle_timeout = \"400ms\"")
    ));
    assert_eq!(w.post("/v1/chat/completions", chat("llm-model")).await.status(), 200);
    let pid = w.service("llm").await["pid"].as_u64().unwrap() as u32;
    assert!(process_alive(pid));
    let status = w.get("/admin/idle-status").await;
    let sleeps_in = status["services"]["llm"]["will_sleep_in_minutes"].as_f64().unwrap();
    assert!(sleeps_in > 0.0 && sleeps_in <= 0.4 / 60.0, "{sleeps_in}");
    assert!(w.wait_state("llm", "stopped", Duration::from_secs(5)).await, "{}", w.log());
    assert!(wait_until(Duration::from_secs(2), || !process_alive(pid)), "process {pid} still alive");
    assert!(w.wait_log("Service llm has been idle for 0 seconds, stopping...", Duration::from_secs(1)), "{}", w.log());
    assert!(w.wait_log("Successfully stopped idle service llm", Duration::from_secs(5)), "{}", w.log());
    // It wakes again on the next request, as a new process.
    assert_eq!(w.post("/v1/chat/completions", chat("llm-model")).await.status(), 200);
    assert_ne!(w.service("llm").await["pid"].as_u64().unwrap() as u32, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_and_no_sleep_services_never_sleep() {
    let w = Warden::start(&format!(
        "[idle]\ncheck_interval = \"50ms\"\ntimeout = \"100ms\"\n{}{}{}",
        service("pinned", "", "desired = \"on\""),
        service("awake", "", "idle_sleep = false"),
        service("sleepy", "", ""),
    ));
    // desired = "on" starts at boot, without a request.
    assert!(w.wait_state("pinned", "running", Duration::from_secs(5)).await);
    assert_eq!(w.post("/v1/chat/completions", chat("awake-model")).await.status(), 200);
    assert_eq!(w.post("/v1/chat/completions", chat("sleepy-model")).await.status(), 200);
    let pinned_pid = w.service("pinned").await["pid"].clone();
    assert!(w.wait_state("sleepy", "stopped", Duration::from_secs(5)).await, "control service should sleep");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.service("pinned").await["state"], "running");
    assert_eq!(w.service("pinned").await["pid"], pinned_pid);
    assert_eq!(w.service("awake").await["state"], "running");
    let status = w.get("/admin/idle-status").await;
    assert_eq!(status["services"]["pinned"]["will_sleep_in_minutes"], json!(null));
    assert_eq!(status["services"]["pinned"]["desired"], "on");
    assert_eq!(status["services"]["awake"]["idle_sleep_enabled"], false);
    assert!(!w.log().contains("Service pinned has been idle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_keeps_its_service_awake_past_the_timeout() {
    let w = Warden::start(&format!(
        "[idle]\ncheck_interval = \"50ms\"\n{}",
        service("llm", ", \"--tokens-per-sec\", \"8\", \"--tokens\", \"12\"", "idle_timeout = \"300ms\"")
    ));
    let body = json!({"model": "llm-model", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a b c"}]});
    let resp = w.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let started = std::time::Instant::now();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        chunks += 1;
        if started.elapsed() > Duration::from_millis(900) && chunks < 1000 {
            // Three idle timeouts in: the stream is still open, so the service must be up.
            let svc = w.service("llm").await;
            assert_eq!(svc["state"], "running");
            assert_eq!(svc["in_flight"], 1);
            chunks = 1000;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1200), "the stream really was slow");
    assert!(chunks >= 1000, "checked the state mid-stream");
    assert!(text.contains(r#""usage":{"completion_tokens":12,"prompt_tokens":3,"total_tokens":15}"#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    // Once the stream ended, the idle clock runs and the service sleeps.
    assert!(w.wait_state("llm", "stopped", Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let w = Warden::start(&service("slow", ", \"--startup-delay-ms\", \"1500\"", ""));
    let url = w.url("/v1/chat/completions");
    let pending = tokio::spawn(async move { reqwest::Client::new().post(url).json(&chat("slow-model")).send().await });
    assert!(eventually(Duration::from_secs(3), || async { w.service("slow").await["queued"] == 1 }).await);
    pending.abort();
    assert!(eventually(Duration::from_secs(2), || async { w.service("slow").await["queued"] == 0 }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_programs_and_dirs_mean_the_config_files_folder() {
    // The config names its program relative to its own folder; warden runs from elsewhere
    // (the test's working directory is the crate), as `warden serve --config examples/…` does.
    let w = Warden::start_relative(
        "[services.rel]\nkind = \"process\"\ncommand = [\"bin/fake\", \"--port\", \"${PORT}\"]\nmodels = [\"rel\"]\n",
    );
    std::fs::create_dir_all(w.dir.path().join("bin")).unwrap();
    std::os::unix::fs::symlink(fake_backend(), w.dir.path().join("bin/fake")).unwrap();
    assert_ne!(std::env::current_dir().unwrap(), w.dir.path());
    let resp = w.post("/v1/chat/completions", chat("rel")).await;
    assert_eq!(resp.status(), 200, "{}", w.log());
    assert!(w.dir.path().join("state/logs/rel.log").exists());
}
