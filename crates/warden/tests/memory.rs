//! End to end: memory orchestration with fake backends that hold known resident memory and a
//! small configured RAM capacity (offload, run, reload; pinned; in flight; impossible; thrash;
//! exclusive groups).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Two 300 MiB services in 500 MiB: they never fit together.
fn two(extra_a: &str, extra_b: &str, min_residency: &str) -> String {
    format!(
        r#"
[idle]
check_interval = "100ms"

[resources]
ram = "500MiB"
threshold = 1.0
reserve = "0"
min_residency = "{min_residency}"

[services.a]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--rss-mb", "300"{extra_a}]
models = ["a"]
memory = "310MiB"

[services.b]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--rss-mb", "300"]
models = ["b"]
memory = "310MiB"
{extra_b}
"#
    )
}

async fn plan(w: &Warden, service: &str) -> Value {
    w.get(&format!("/admin/plan/{service}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_fit_offloads_the_idle_one_which_is_reloaded_afterwards() {
    let w = Warden::start(&two("", "", "0s"));
    assert_eq!(w.post("/v1/chat/completions", chat("a")).await.status(), 200);
    let a_pid = w.service("a").await["pid"].as_u64().unwrap() as u32;
    let a_rss = w.service("a").await["rss_bytes"].as_u64().unwrap();
    assert!(a_rss > 300 << 20, "a holds its 300 MiB: {a_rss}");

    // The dry run names the victim and changes nothing.
    let p = plan(&w, "b").await;
    assert_eq!(
        (p["fits"].clone(), p["would_offload"].clone(), p["victims"].clone()),
        (json!(true), json!(true), json!(["a"]))
    );
    assert!(p["need_bytes"].as_u64().unwrap() >= 310 << 20);
    assert_eq!(w.service("a").await["state"], "running");

    // B is answered; A was offloaded first: its processes are gone, its memory returned.
    assert_eq!(w.post("/v1/chat/completions", chat("b")).await.status(), 200);
    assert!(!process_alive(a_pid), "a's process must be gone");
    assert_eq!(w.service("a").await["state"], "stopped", "{}", w.log());
    assert!(w.wait_log("Offloading service a", Duration::from_secs(5)), "{}", w.log());
    let saved = w.get("/admin/saved-state").await;
    assert_eq!(saved[0]["service"], "a");
    assert_eq!(saved[0]["was_running"], true);
    assert!(saved[0]["saved_at"].as_u64().unwrap() > 1_700_000_000);

    // Once B sleeps there is room again: A comes back by itself. (Stopped here rather than by an
    // idle timeout, so a slow machine cannot let B sleep before the checks above.)
    assert_eq!(w.post("/admin/services/b/stop", json!({})).await.status(), 200);
    let resp = reqwest::Client::new().post(w.url("/admin/reload/wait?timeout=15")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"done": true, "pending": 0}));
    assert!(w.wait_state("a", "running", Duration::from_secs(5)).await, "{}", w.log());
    assert_eq!(w.service("b").await["state"], "stopped");
    assert!(w.wait_log("Reloading service a (offloaded to make room for b)", Duration::from_secs(5)), "{}", w.log());
    assert_eq!(w.get("/admin/saved-state").await, json!([]));

    // What was measured is shown, and remembered for the next run.
    let r = w.get("/admin/resources").await;
    assert_eq!(r["devices"]["ram"]["capacity_bytes"], 500u64 << 20);
    assert!(r["services"]["a"]["measured_bytes"].as_u64().unwrap() > 300 << 20);
    assert_eq!(r["services"]["a"]["estimate_bytes"], 310u64 << 20);
    let remembered = std::fs::read_to_string(w.dir.path().join("state/footprints.json")).unwrap();
    assert!(remembered.contains("\"a\""), "{remembered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measured_footprint_replaces_the_estimate_and_survives_a_restart() {
    let mut w = Warden::start(&two("", "", "0s").replace("memory = \"310MiB\"", "memory = \"100MiB\""));
    assert_eq!(w.get("/admin/resources").await["services"]["a"]["need_bytes"], 100u64 << 20);
    assert_eq!(w.post("/v1/chat/completions", chat("a")).await.status(), 200);
    // Measured (300 MiB held) now rules: with it, b no longer fits beside a.
    let need = w.get("/admin/resources").await["services"]["a"]["need_bytes"].as_u64().unwrap();
    assert!(need > 300 << 20, "{need}");
    w.restart();
    let after = w.get("/admin/resources").await["services"]["a"].clone();
    assert_eq!(after["state"], "stopped");
    assert_eq!(after["need_bytes"].as_u64().unwrap(), need, "remembered across the restart");
    assert_eq!(after["estimate_bytes"], 100u64 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_services_are_never_offloaded() {
    let w = Warden::start(&two("", "", "0s").replace("models = [\"a\"]", "models = [\"a\"]\ndesired = \"on\""));
    assert!(w.wait_state("a", "running", Duration::from_secs(5)).await);
    let resp = w.post("/v1/chat/completions", chat("b")).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("may not be offloaded"), "{msg}");
    assert_eq!(w.service("a").await["state"], "running");
    assert_eq!(plan(&w, "b").await["fits"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_fit_alone_fails_at_once_and_evicts_nothing() {
    let w = Warden::start(&format!(
        "{}\n[services.huge]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${{PORT}}\"]\nmodels = [\"huge\"]\nmemory = \"2GiB\"\n",
        two("", "", "0s")
    ));
    assert_eq!(w.post("/v1/chat/completions", chat("a")).await.status(), 200);
    for _ in 0..3 {
        let t0 = Instant::now();
        let resp = w.post("/v1/chat/completions", chat("huge")).await;
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Permanent until the config changes (issue 15.6): 500, no Retry-After.
        assert_eq!(resp.status(), 500);
        assert!(!resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "service_cannot_start");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("needs 2048 MiB but at most 500 MiB") && msg.contains("cannot fit even alone"), "{msg}");
    }
    assert_eq!(w.service("a").await["state"], "running", "nothing was evicted");
    assert!(!w.log().contains("Offloading"));
    let p = plan(&w, "huge").await;
    assert_eq!((p["fits"].clone(), p["would_offload"].clone()), (json!(false), json!(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_is_never_cut_to_make_room() {
    let w = Warden::start(&two(", \"--tokens-per-sec\", \"10\", \"--tokens\", \"15\"", "", "0s"));
    let body = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "go"}]});
    let resp = w.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // While A streams (1.5 s), B is asked for: it must wait for the stream, not cut it.
    let url = w.url("/v1/chat/completions");
    let b = tokio::spawn(async move {
        let resp = reqwest::Client::new().post(url).json(&chat("b")).send().await.unwrap();
        (resp.status(), Instant::now())
    });
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let stream_end = Instant::now();
    assert!(text.contains("tok14") && text.trim_end().ends_with("data: [DONE]"), "the stream was cut: {text}");
    let (status, b_done) = b.await.unwrap();
    assert_eq!(status, 200);
    assert!(b_done >= stream_end, "B answered only after A's stream ended");
    assert_eq!(w.service("a").await["state"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_traffic_is_batched_instead_of_thrashing() {
    let w = Warden::start(&two("", "", "1500ms"));
    let client = reqwest::Client::new();
    // Ten requests for each, interleaved, all at once.
    let requests = (0..20).map(|i| {
        let model = if i % 2 == 0 { "a" } else { "b" };
        client.post(w.url("/v1/chat/completions")).json(&chat(model)).send()
    });
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.unwrap().status(), 200, "{}", w.log());
    }
    let starts = w.log().matches("Starting service").count();
    assert!(starts <= 3, "swapped {starts} times for 20 interleaved requests:\n{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_in_one_exclusive_group_never_run_together() {
    let w = Warden::start(
        r#"
[resources]
ram = "8GiB"
threshold = 1.0
reserve = "0"
min_residency = "0s"

[services.img]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["img"]
group = "gpu-big"

[services.llm]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["llm"]
group = "gpu-big"

[services.small]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["small"]
"#,
    );
    assert_eq!(w.post("/v1/chat/completions", chat("img")).await.status(), 200);
    assert_eq!(w.post("/v1/chat/completions", chat("small")).await.status(), 200);
    assert_eq!(plan(&w, "llm").await["victims"], json!(["img"]));
    assert_eq!(w.post("/v1/chat/completions", chat("llm")).await.status(), 200);
    assert_eq!(w.service("img").await["state"], "stopped");
    assert_eq!(w.service("small").await["state"], "running", "outside the group: untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_services_are_planned_against_vram_from_estimates_without_nvml() {
    // No NVIDIA driver here: GPU footprints cannot be measured, so the estimates rule, against
    // the configured VRAM; RAM-side services are not involved.
    let w = Warden::start(
        r#"
[resources]
ram = "8GiB"
vram = "1GiB"
threshold = 1.0
reserve = "0"
min_residency = "0s"

[services.sd]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["sd"]
memory = "600MiB"
device = "gpu"

[services.llm]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["llm"]
memory = "600MiB"
device = "gpu"

[services.cpu]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["cpu"]
"#,
    );
    for m in ["sd", "cpu"] {
        assert_eq!(w.post("/v1/chat/completions", chat(m)).await.status(), 200);
    }
    let r = w.get("/admin/resources").await;
    assert_eq!(r["devices"]["vram"]["capacity_bytes"], 1u64 << 30);
    assert_eq!(r["services"]["sd"]["device"], "gpu");
    assert_eq!(r["services"]["sd"]["need_bytes"], 600u64 << 20, "no NVML: the estimate stands");
    assert_eq!(w.get("/admin/plan/llm").await["victims"], json!(["sd"]));
    assert_eq!(w.post("/v1/chat/completions", chat("llm")).await.status(), 200);
    assert_eq!(w.service("sd").await["state"], "stopped");
    assert_eq!(w.service("cpu").await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_swap_does_not_wait_and_a_protected_plan_names_its_victims() {
    let w = Warden::start(&two("", "", "30s"));
    assert_eq!(w.post("/v1/chat/completions", chat("a")).await.status(), 200);
    // a started without displacing anyone: b takes its place at once, not 30 s later.
    let t0 = Instant::now();
    assert_eq!(w.post("/v1/chat/completions", chat("b")).await.status(), 200);
    assert!(t0.elapsed() < Duration::from_secs(10), "the first swap waited {:?}", t0.elapsed());
    assert!(w.wait_state("a", "stopped", Duration::from_secs(5)).await);
    // b displaced a: swapping back is held off by the minimum residency, and the plan says so
    // (who would go, and when) instead of hiding it.
    let p = plan(&w, "a").await;
    assert_eq!(
        (p["fits"].clone(), p["would_offload"].clone(), p["victims"].clone()),
        (json!(false), json!(true), json!(["b"])),
        "{p}"
    );
    let after = p["after_ms"].as_u64().expect("after_ms");
    assert!(after > 0 && after <= 30_000, "{p}");
}
