//! End to end against the real llama.cpp llama-server (single-model and router mode) on tiny
//! GGUF models generated at test time. Needs scripts/test (it builds llama-server once).

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn llama_server_wakes_answers_streams_and_sleeps() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let service = llama.service(
        "llama",
        &model,
        &["-np", "2"],
        &["tiny", "tiny-alias"],
        "env = { LLAMA_ARG_CTX_SIZE = \"512\" }\nidle_timeout = \"1500ms\"",
    );
    let w = Warden::start(&format!("[idle]\ncheck_interval = \"100ms\"\n{service}"));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
        // The model's weights are random: without this it may pick its end token early.
        "ignore_eos": true});
    let resp = w.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-warden-cold-start-ms"));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["usage"]["completion_tokens"], 8);
    // llama-server says how many requests it serves at once (-np 2): warden sends it no more.
    let svc = fetch_until(Duration::from_secs(5), || w.service("llama"), |s| s["max_concurrent"] == 2).await;
    assert_eq!(svc["max_concurrent"], 2, "{svc}");
    let pid = w.service("llama").await["pid"].as_u64().unwrap() as u32;
    assert!(w.service("llama").await["rss_bytes"].as_u64().unwrap() > 5 << 20);

    // Streaming through the alias, with usage in the last chunk.
    let body = json!({"model": "tiny-alias", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "ignore_eos": true});
    let resp = w.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut text = String::new();
    let mut chunks = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        chunks += 1;
    }
    assert!(chunks > 1, "streamed in pieces");
    assert!(text.contains("\"usage\""), "{text}");
    assert!(text.contains("\"completion_tokens\":6"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // Idle sleep ends the process.
    assert!(w.wait_state("llama", "stopped", Duration::from_secs(10)).await, "{}", w.log());
    assert!(wait_until(Duration::from_secs(3), || !process_alive(pid)), "llama-server {pid} still running");
    assert!(w.wait_log("Successfully stopped idle service llama", Duration::from_secs(5)), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn llama_router_loads_models_on_demand_and_unloads_them() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    llama.make_model(models.path(), "tiny-a", 64);
    llama.make_model(models.path(), "tiny-b", 256);
    let w = Warden::start(&format!(
        r#"
[idle]
check_interval = "100ms"
keep_alive = "1h"

[services.router]
kind = "process"
api = "llamacpp-router"
command = ["{server}", "--models-dir", "{dir}", "--models-max", "4", "--port", "${{PORT}}", "-c", "512", "-t", "1"]
start_timeout = "60s"
idle_timeout = "1s"

[models.tiny-a]
service = "router"

[models.tiny-b]
service = "router"
keep_alive = "60m"
"#,
        server = llama.server,
        dir = models.path().display()
    ));
    for model in ["tiny-a", "tiny-b"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": true});
        let resp = w.post("/v1/chat/completions", body).await;
        assert_eq!(resp.status(), 200, "{model}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["usage"]["completion_tokens"], 4);
    }
    let svc = w.service("router").await;
    assert_eq!(svc["loaded_models"], json!(["tiny-a", "tiny-b"]));
    let router_pid = svc["pid"].as_u64().unwrap() as u32;
    assert_eq!(children_of(router_pid).len(), 2, "one child process per loaded model");
    let both = svc["rss_bytes"].as_u64().unwrap();

    // tiny-a's keep-alive (the global one, tiny-b has its own) is cut to about 1 s: its child
    // process goes, measured memory goes down. (Set only now: with a 1 s keep-alive from the
    // start, tiny-a could be unloaded before both were seen loaded on a busy machine.)
    let resp = reqwest::Client::new()
        .post(w.url("/admin/settings"))
        .json(&json!({"modelKeepAlive": 0.0003}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(w.wait_log("Successfully unloaded idle model tiny-a", Duration::from_secs(10)), "{}", w.log());
    assert!(w.wait_log("Model tiny-a keep-alive expired, unloading...", Duration::from_secs(5)), "{}", w.log());
    assert!(wait_until(Duration::from_secs(5), || children_of(router_pid).len() == 1));
    let svc = w.service("router").await;
    assert_eq!(svc["loaded_models"], json!(["tiny-b"]));
    let one = svc["rss_bytes"].as_u64().unwrap();
    assert!(one + (5 << 20) < both, "memory down after the unload: {both} -> {one}");
    let status = w.get("/admin/idle-status").await;
    assert_eq!(status["models"]["tiny-a"]["loaded"], false);
    assert_eq!(status["models"]["tiny-b"]["loaded"], true);
    assert_eq!(status["models"]["tiny-b"]["provider"], "llamacpp-router");

    // Admin unload of the last model; then the router itself sleeps.
    let resp = reqwest::Client::new().post(w.url("/admin/models/tiny-b/unload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(Duration::from_secs(5), || children_of(router_pid).is_empty()));
    assert!(w.wait_state("router", "stopped", Duration::from_secs(10)).await);
    assert!(wait_until(Duration::from_secs(3), || !process_alive(router_pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn llama_servers_that_do_not_fit_together_are_offloaded_and_reloaded() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let big = llama.make_model(models.path(), "big", 1024);
    // 137 MB and 105 MB of weights: about 160 and 130 MiB resident; either fits in 250 MiB alone.
    let small = llama.make_model(models.path(), "small", 896);
    let big_file = std::fs::metadata(&big).unwrap().len();
    let w = Warden::start(&format!(
        r#"
[idle]
check_interval = "100ms"

[resources]
ram = "250MiB"
threshold = 1.0
reserve = "0"
min_residency = "0s"

{big}{small}"#,
        big = llama.service("big", &big, &[], &["big"], "memory = \"auto\""),
        small = llama.service("small", &small, &[], &["small"], "memory = \"auto\"\nidle_timeout = \"1s\""),
    ));
    // Before anything ran, the plan uses the GGUF estimate: file size x 1.2 on CPU.
    let r = w.get("/admin/resources").await;
    assert_eq!(r["services"]["big"]["estimate_bytes"], (big_file as f64 * 1.2) as u64);

    let body = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": true});
    assert_eq!(w.post("/v1/chat/completions", body("big")).await.status(), 200);
    let big_pid = w.service("big").await["pid"].as_u64().unwrap() as u32;
    let r = w.get("/admin/resources").await;
    let measured = r["services"]["big"]["measured_bytes"].as_u64().unwrap();
    assert!(measured > big_file, "llama-server holds at least its weights: {measured} vs {big_file}");

    let p = w.get("/admin/plan/small").await;
    assert_eq!(p["victims"], json!(["big"]), "{p}");
    assert_eq!(w.post("/v1/chat/completions", body("small")).await.status(), 200);
    assert!(wait_until(Duration::from_secs(3), || !process_alive(big_pid)), "big was offloaded: its process is gone");
    assert_eq!(w.service("big").await["state"], "stopped");

    // small sleeps after 1 s idle; big comes back by itself.
    let resp = reqwest::Client::new().post(w.url("/admin/reload/wait?timeout=30")).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["done"], true);
    assert!(w.wait_state("big", "running", Duration::from_secs(30)).await, "{}", w.log());
    assert_eq!(w.post("/v1/chat/completions", body("big")).await.status(), 200);
    let footprints = std::fs::read_to_string(w.dir.path().join("state/footprints.json")).unwrap();
    assert!(footprints.contains("\"big\"") && footprints.contains("\"small\""), "{footprints}");
}

/// Money against the real server: warden bounds a request without max_tokens, asks a stream
/// for its usage, and charges exactly what llama-server reports, to the micro-dollar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn a_priced_llama_model_is_charged_what_llama_server_reports() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let w = Warden::start(&format!(
        r#"
[scheduler]
default_max_tokens = 3
{service}
[models.tiny]
service = "llama"
price = {{ input_per_1k = 1.0, output_per_1k = 2.0 }}
"#,
        service = llama.service("llama", &model, &[], &["tiny"], "")
    ));
    let cost_of = |id: String| {
        let w = &w;
        async move {
            let path = format!("/api/cost/{id}");
            fetch_until(Duration::from_secs(5), || w.get(&path), |c| c["request_id"] == id.as_str()).await
        }
    };
    // No max_tokens: warden sets default_max_tokens, so the answer stops at 3 tokens.
    let resp = w
        .post(
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "ignore_eos": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let answer: Value = resp.json().await.unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
    let cost = cost_of(id).await;
    assert_eq!((cost["prompt_tokens"].as_u64(), cost["completion_tokens"].as_u64()), (Some(prompt), Some(3)), "{cost}");
    // $1 per 1k prompt tokens = 1,000 micro-dollars a token; $2 per 1k output = 2,000.
    assert_eq!(cost["cost_micros"].as_u64(), Some(prompt * 1000 + 3 * 2000), "{cost}");
    assert_eq!(cost["estimated"], false);

    // A stream that did not ask for usage is asked for it by warden, and charged by it.
    let body = json!({"model": "tiny", "stream": true, "max_tokens": 5, "ignore_eos": true,
            "messages": [{"role": "user", "content": "hello"}]});
    let resp = w.post("/v1/chat/completions", body).await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"completion_tokens\":5"), "{text}");
    let cost = cost_of(id).await;
    assert_eq!((cost["completion_tokens"].as_u64(), cost["estimated"].as_bool()), (Some(5), Some(false)), "{cost}");
    assert_eq!(cost["cost_micros"].as_u64(), Some(cost["prompt_tokens"].as_u64().unwrap() * 1000 + 5 * 2000));
    let usage = w.get("/api/usage/anonymous").await;
    assert_eq!((usage["requests"].as_u64(), usage["completion_tokens"].as_u64()), (Some(2), Some(8)), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server and root (a memory cgroup): run scripts/test"]
async fn under_real_memory_pressure_llama_is_served_by_its_smaller_rung_and_comes_back() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let big = llama.make_model(models.path(), "big", 1024);
    let small = llama.make_model(models.path(), "small", 64);
    // warden and everything it starts live in an 800 MiB memory cgroup; "auto" reads the limit.
    let cgroup = MemoryCgroup::new("warden-pressure", 800 << 20).expect("a memory cgroup (run as root)");
    let w = Warden::start_in_cgroup(
        &format!(
            r#"
[idle]
check_interval = "100ms"

[pressure]
enabled = true
sample_interval = "200ms"
window = "4s"
tier = "small"
degrade_at = 0.60
upgrade_below = 0.45
stop_idle_at = 0.97
stabilization = "2s"
horizon = "1s"

[resources]
ram = "auto"
threshold = 1.0

{big}{small}
[services.hog]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}"]

[models.big]
smaller = "small"
"#,
            big = llama.service("big", &big, &[], &["big"], "idle_timeout = \"1s\""),
            small = llama.service("small", &small, &[], &["small"], ""),
        ),
        &cgroup.0,
    );
    let p = w.get("/admin/pressure").await;
    assert_eq!(p["devices"][0]["capacity_bytes"], 800u64 << 20, "the cgroup's limit is the capacity: {p}");
    let ask = |max_tokens: u32, stream: bool| {
        let body = json!({"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream, "ignore_eos": true});
        reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body).send()
    };
    let model_of = |r: &reqwest::Response| r.headers().get("x-warden-model").map(|v| v.to_str().unwrap().to_string());
    let resp = ask(4, false).await.unwrap();
    assert_eq!((resp.status().as_u16(), model_of(&resp).as_deref()), (200, Some("big")));

    // A long stream on the big model is under way when the hog takes 560 MiB (model weights are mapped file pages, which the working set leaves out).
    let mut stream = ask(200, true).await.unwrap().bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).to_string();
    assert_eq!(w.post("/svc/hog/allocate/560", json!({})).await.status(), 200);
    let p = fetch_until(Duration::from_secs(15), || w.get("/admin/pressure"), |p| p["devices"][0]["degraded"] == true)
        .await;
    assert_eq!(p["devices"][0]["degraded"], true, "{p}");

    // New requests for big are served by the small model, and say so.
    let resp = ask(4, false).await.unwrap();
    assert_eq!((resp.status().as_u16(), model_of(&resp).as_deref()), (200, Some("small")));
    assert!(resp.headers()["x-warden-degraded"].to_str().unwrap().starts_with("big -> small ("));
    // The stream on big finishes whole.
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // Nothing asks for big now: it idles and sleeps.
    assert!(w.wait_state("big", "stopped", Duration::from_secs(15)).await, "{}", w.log());

    // The hog goes; after the stabilization the big model answers again (woken for it).
    let resp = reqwest::Client::new().post(w.url("/admin/services/hog/stop")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let back = fetch_until(
        Duration::from_secs(60),
        || async {
            let resp = ask(4, false).await.unwrap();
            let model = model_of(&resp);
            json!({"model": model, "status": resp.status().as_u16(), "body": resp.text().await.unwrap()})
        },
        |m| m["model"] == "big",
    )
    .await;
    assert_eq!(back["model"], "big", "{back}\n{}\n{}", w.get("/admin/pressure").await, w.log());
    let p = w.get("/admin/pressure").await;
    let actions: Vec<&str> = p["decisions"].as_array().unwrap().iter().map(|d| d["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["degrade", "upgrade"], "{p}");
    assert!(
        p["decisions"][1]["at_unix_ms"].as_u64().unwrap() - p["decisions"][0]["at_unix_ms"].as_u64().unwrap() >= 2000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn the_official_ollama_client_chats_generates_embeds_and_lists_through_warden() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let w = Warden::start(&format!(
        "{}{}",
        llama.service("llama", &model, &[], &["tiny"], ""),
        llama.service("embed", &model, &["--embeddings", "--pooling", "mean"], &["tiny-embed"], "")
    ));
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ollama_client.py");
    let out = std::process::Command::new(&llama.python).arg(script).arg(w.url("")).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("OK"), "{said}\n{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn llama_server_answers_are_cached_and_its_embeddings_coalesced() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let w = Warden::start(&format!(
        r#"
[cache]
enabled = true
{llama}{embed}
[models.tiny-embed]
service = "embed"
coalesce = "1s"
"#,
        llama = llama.service("llama", &model, &[], &["tiny"], ""),
        embed = llama.service(
            "embed",
            &model,
            &["--embeddings", "--pooling", "mean"],
            &["tiny-embed", "tiny-embed-alone"],
            ""
        )
    ));
    // Cache: the same deterministic stream twice; the second never reaches llama-server.
    let body = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "temperature": 0, "stream": true});
    let send = || reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body).send();
    let first = send().await.unwrap();
    assert_eq!(first.headers()["x-warden-cache"], "miss");
    let first = first.text().await.unwrap();
    assert!(first.ends_with("data: [DONE]\n\n"), "{first}");
    let leases = || async {
        let text = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("warden_service_requests_total{service=\"llama\"}"));
        line.unwrap_or_else(|| panic!("{text}")).to_string()
    };
    let before = leases().await;
    let again = send().await.unwrap();
    assert_eq!(again.headers()["x-warden-cache"], "hit");
    assert_eq!(again.text().await.unwrap(), first);
    assert_eq!(leases().await, before, "the hit took no lease on llama-server");

    // Coalescing: four requests at once are one call; each gets what it would alone.
    let texts = ["the cat", "a dog runs", "hello there world", "x"];
    let embed = |model: &'static str, input: &'static str| {
        let req = reqwest::Client::new().post(w.url("/v1/embeddings"));
        async move {
            let resp = req.json(&serde_json::json!({"model": model, "input": input})).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let together = resp.headers().get("x-warden-coalesced").map(|v| v.to_str().unwrap().to_string());
            (resp.json::<serde_json::Value>().await.unwrap(), together)
        }
    };
    let together = futures_util::future::join_all(texts.map(|t| embed("tiny-embed", t))).await;
    let mut tokens = 0;
    for (text, (got, shared)) in texts.iter().zip(&together) {
        assert_eq!(shared.as_deref(), Some("4"), "{text}");
        let (alone, _) = embed("tiny-embed-alone", text).await;
        let (a, b) =
            (got["data"][0]["embedding"].as_array().unwrap(), alone["data"][0]["embedding"].as_array().unwrap());
        assert_eq!((got["data"][0]["index"].as_u64(), a.len()), (Some(0), b.len()), "{text}");
        let off = a.iter().zip(b).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        assert!(off < 1e-3, "{text}: vectors differ by {off}");
        tokens += got["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    assert!(tokens > 0, "llama-server's count, shared out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn a_batch_wakes_llama_server_and_every_line_gets_its_answer() {
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let w = Warden::start(&llama.service("llama", &model, &["-np", "2"], &["tiny"], ""));
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("q{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "tiny", "messages": [{"role": "user", "content": format!("hello {i}")}],
                            "max_tokens": 4, "ignore_eos": true}})
            .to_string()
        })
        .collect();
    let part = reqwest::multipart::Part::text(lines.join("\n")).file_name("in.jsonl");
    let form = reqwest::multipart::Form::new().text("purpose", "batch").part("file", part);
    let file: Value =
        reqwest::Client::new().post(w.url("/v1/files")).multipart(form).send().await.unwrap().json().await.unwrap();
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let batch: Value = w.post("/v1/batches", create).await.json().await.unwrap();
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let done = fetch_until(
        Duration::from_secs(60),
        || w.get(&path),
        |b| b["status"] == "completed" || b["status"] == "failed",
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}\n{}", w.log());
    assert_eq!(done["request_counts"], json!({"total": 3, "completed": 3, "failed": 0}));
    let out_id = done["output_file_id"].as_str().unwrap();
    let text = reqwest::get(w.url(&format!("/v1/files/{out_id}/content"))).await.unwrap().text().await.unwrap();
    let answers: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = answers.iter().map(|a| a["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["q0", "q1", "q2"]);
    for a in &answers {
        assert_eq!(a["response"]["status_code"], 200, "{a}");
        // llama-server's own answer and count, as it gave them.
        assert_eq!(a["response"]["body"]["usage"]["completion_tokens"], 4, "{a}");
    }
    // The lines ran in the batch class: the activity list says so.
    let recent = w.get("/admin/requests?limit=3").await;
    assert!(recent["requests"].as_array().unwrap().iter().all(|r| r["class"] == "batch"), "{recent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs llama-server: run scripts/test"]
async fn a_large_llama_server_answer_is_compressed_and_a_small_one_is_not() {
    use std::io::Read;
    let llama = llama();
    let models = tempfile::tempdir().unwrap();
    let model = llama.make_model(models.path(), "tiny", 64);
    let w = Warden::start(&llama.service("llama", &model, &[], &["tiny"], ""));
    let chat = |tokens: u64| {
        let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": tokens, "ignore_eos": true});
        reqwest::Client::new().post(w.url("/v1/chat/completions")).header("accept-encoding", "gzip").json(&body).send()
    };
    // 300 tokens: an answer of well over 1 KiB, compressed after the pipeline answered.
    let resp = chat(300).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip", "{:?}", resp.headers());
    let packed = resp.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut text).unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 300, "{answer}");
    // A few tokens: under 1 KiB, sent as llama-server wrote it.
    let resp = chat(3).await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none(), "{:?}", resp.headers());
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");
}
