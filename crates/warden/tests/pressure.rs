//! Adapting under memory pressure, end to end: a big model and its smaller rung, and a hog that
//! takes memory from under them.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

/// A 600 MiB budget for the managed services, the big model (150 MiB, streams slowly), its
/// smaller rung (20 MiB), and a hog whose memory can be raised on demand.
fn ladder() -> String {
    r#"
[pressure]
enabled = true
sample_interval = "100ms"
window = "2s"
tier = "medium"
degrade_at = 0.80
upgrade_below = 0.70
stop_idle_at = 0.99
stabilization = "2s"
horizon = "1s"

[resources]
ram = "600MiB"
threshold = 1.0
reserve = "0"

[services.big]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--rss-mb", "150", "--tokens-per-sec", "20", "--tokens", "40"]
models = ["big"]

[services.small]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--rss-mb", "20"]
models = ["small"]

[services.hog]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
# Load from outside the models: never offloaded to make room for them.
idle_sleep = false

[models.big]
smaller = "small"
"#
    .into()
}

async fn ask(w: &Warden, session: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&chat("big"));
    if let Some(s) = session {
        req = req.header("x-warden-session", s);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_serves_the_smaller_rung_then_comes_back_after_stabilization() {
    let w = Warden::start(&ladder());
    let resp = ask(&w, None).await;
    assert_eq!((resp.status().as_u16(), header(&resp, "x-warden-model")), (200, Some("big".into())));
    assert!(header(&resp, "x-warden-degraded").is_none());

    // A long stream on the big model is under way when the pressure comes.
    let body = json!({"model": "big", "stream": true, "messages": [{"role": "user", "content": "a long answer"}]});
    let stream = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut stream = stream.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();

    // The hog takes 400 MiB: with big's 150 MiB that is past 80 % of 600 MiB.
    assert_eq!(w.post("/svc/hog/allocate/400", json!({})).await.status(), 200);
    let p = fetch_until(Duration::from_secs(10), || w.get("/admin/pressure"), |p| p["devices"][0]["degraded"] == true)
        .await;
    assert_eq!(p["devices"][0]["degraded"], true, "{p}");
    assert_eq!(p["level"], "elevated", "{p}");
    assert_eq!(p["models"][0]["rung"], "small", "{p}");

    // People can see it: the CLI and the metrics.
    let out = std::process::Command::new(warden_bin()).args(["--url", &w.base, "pressure"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("model big -> served by small"), "{text}");
    assert!(text.starts_with("level elevated, tier medium"), "{text}");
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_pressure_degraded{device=\"cpu\"} 1"), "{metrics}");

    // New requests go to the smaller rung, and say so.
    let resp = ask(&w, Some("conversation-1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-warden-model").as_deref(), Some("small"));
    let why = header(&resp, "x-warden-degraded").expect("x-warden-degraded");
    assert!(why.starts_with("big -> small (") && why.contains("% of capacity in use"), "{why}");

    // The stream that started on the big model finishes there, whole.
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(text.matches("\"content\"").count(), 40, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // The hog goes: use falls below upgrade_below, and after the stabilization the big model
    // answers again; the pinned conversation stays on its rung.
    let resp = reqwest::Client::new().post(w.url("/admin/services/hog/stop")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let back = fetch_until(
        Duration::from_secs(15),
        || async { json!(header(&ask(&w, None).await, "x-warden-model")) },
        |m| m == "big",
    )
    .await;
    assert_eq!(back, "big");
    let p = w.get("/admin/pressure").await;
    let actions: Vec<&str> = p["decisions"].as_array().unwrap().iter().map(|d| d["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["degrade", "upgrade"], "{p}");
    let upgrade = &p["decisions"][1];
    assert!(upgrade["reasons"][0].as_str().unwrap().contains("for 2 s"), "{upgrade}");
    let degrade_ms = p["decisions"][0]["at_unix_ms"].as_u64().unwrap();
    let upgrade_ms = upgrade["at_unix_ms"].as_u64().unwrap();
    assert!(upgrade_ms - degrade_ms >= 2000, "upgraded {} ms after degrading", upgrade_ms - degrade_ms);
    let pinned = ask(&w, Some("conversation-1")).await;
    assert_eq!(header(&pinned, "x-warden-model").as_deref(), Some("small"), "the conversation keeps its rung");
    assert!(w.wait_log("Memory pressure on RAM: serving smaller models", Duration::from_secs(5)), "{}", w.log());
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_pressure_switches_total 2"), "{metrics}");
    assert!(!metrics.contains("warden_degraded_requests_total 0"), "{metrics}");
    let alerts = w.get("/admin/alerts").await;
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "degraded"), "{alerts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_preset_fills_in_what_the_request_does_not_set() {
    let w = Warden::start(
        "[services.svc]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\"]\nmodels = [\"m\"]\n\n\
         [tasks.summarization]\nmax_tokens = 3\ntemperature = 0.2\n",
    );
    let send = |body: serde_json::Value, task: Option<&'static str>| {
        let mut req = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body);
        if let Some(t) = task {
            req = req.header("x-warden-task", t);
        }
        req.send()
    };
    let tokens = |v: serde_json::Value| v["usage"]["completion_tokens"].as_u64();
    let preset: serde_json::Value = send(chat("m"), Some("summarization")).await.unwrap().json().await.unwrap();
    assert_eq!(tokens(preset), Some(3), "the preset's max_tokens applies");
    let mut own = chat("m");
    own["max_tokens"] = json!(5);
    let own: serde_json::Value = send(own, Some("summarization")).await.unwrap().json().await.unwrap();
    assert_eq!(tokens(own), Some(5), "the request's own value wins");
    let other: serde_json::Value = send(chat("m"), Some("something else")).await.unwrap().json().await.unwrap();
    assert_eq!(tokens(other), Some(8), "an unknown task changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_answered_by_its_fallback_and_charged_once() {
    let w = Warden::start(
        r#"
[services.gone]
kind = "process"
command = ["no-such-program-warden-test"]
models = ["primary"]

[services.five]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--answer-status", "500"]
models = ["five"]

[services.busy]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--answer-status", "429"]
models = ["busy"]

[services.good]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["backup"]

[models.primary]
fallback = ["five", "backup"]

[models.five]
fallback = ["backup"]
price = { input_per_1k = 1.0, output_per_1k = 1.0 }

[models.busy]
fallback = ["backup"]

[models.backup]
price = { input_per_1k = 1.0, output_per_1k = 1.0 }
"#,
    );
    for (model, tried) in [
        ("primary", "primary: service_cannot_start; five: answered 500"),
        ("five", "five: answered 500"),
        ("busy", "busy: answered 429"),
    ] {
        let resp = reqwest::Client::new()
            .post(w.url("/v1/chat/completions"))
            .header("x-request-id", format!("fb-{model}"))
            .json(&chat(model))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        assert_eq!(header(&resp, "x-warden-model").as_deref(), Some("backup"), "{model}");
        assert_eq!(header(&resp, "x-warden-fallbacks").as_deref(), Some(tried), "{model}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["model"], "backup", "the fallback was asked for itself");
    }
    // Charged once, on the model that answered: the 500 was charged nothing.
    let cost = fetch_until(Duration::from_secs(5), || w.get("/api/cost/fb-five"), |c| c["model"] == "backup").await;
    assert_eq!(cost["model"], "backup", "{cost}");
    let usage = w.get("/api/usage/anonymous").await;
    let by: Vec<(String, i64)> = usage["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["model"].as_str().unwrap().to_string(), m["cost_micros"].as_i64().unwrap()))
        .collect();
    let five = by.iter().find(|(m, _)| m == "five").map_or(0, |(_, c)| *c);
    assert_eq!(five, 0, "{usage}");
    assert!(by.iter().any(|(m, c)| m == "backup" && *c > 0), "{usage}");
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_fallbacks_total 4"), "{metrics}");
    // Without a fallback left, the failure is the client's answer.
    let resp = w.post("/v1/chat/completions", chat("backup")).await;
    assert!(header(&resp, "x-warden-fallbacks").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_slower_than_its_bound_counts_as_pressured_and_performance_is_tracked() {
    let mut w = Warden::start(
        r#"
[pressure]
enabled = true

[services.slowpoke]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--tokens-per-sec", "20"]
models = ["slowpoke"]

[services.quick]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["quick"]

[models.slowpoke]
smaller = "quick"
max_p95 = "100ms"
"#,
    );
    let ask = |task: &'static str| {
        reqwest::Client::new()
            .post(w.url("/v1/chat/completions"))
            .header("x-warden-task", task)
            .json(&chat("slowpoke"))
            .send()
    };
    // 8 tokens at 20 a second: 400 ms each, over the 100 ms bound.
    for _ in 0..5 {
        let resp = ask("draft").await.unwrap();
        assert_eq!(header(&resp, "x-warden-model").as_deref(), Some("slowpoke"));
        resp.bytes().await.unwrap();
    }
    let resp = ask("draft").await.unwrap();
    assert_eq!(header(&resp, "x-warden-model").as_deref(), Some("quick"));
    let why = header(&resp, "x-warden-degraded").unwrap();
    assert!(why.starts_with("slowpoke -> quick (p95 latency") && why.contains("over max_p95 100 ms"), "{why}");
    resp.bytes().await.unwrap();

    let perf = w.get("/admin/performance?since=1h").await;
    let slow = &perf["models"]["slowpoke"];
    assert_eq!(slow["requests"], 5, "{perf}");
    assert_eq!(slow["success_rate"], 1.0, "{perf}");
    assert!(slow["p50_ms"].as_u64().unwrap() >= 300, "{perf}");
    assert!(slow["p50_first_byte_ms"].as_u64().is_some(), "{perf}");
    assert_eq!(perf["models"]["quick"]["requests"], 1, "{perf}");
    assert_eq!(perf["tasks"]["draft"]["requests"], 6, "{perf}");
    assert_eq!(reqwest::get(w.url("/admin/performance?since=soon")).await.unwrap().status(), 400);

    // Kept in SQLite: a restarted warden has the same figures, both from the last day it reads
    // back into memory and from the database itself for a longer period.
    w.restart();
    for since in ["1h", "7d"] {
        let again = w.get(&format!("/admin/performance?since={since}")).await;
        assert_eq!(again["models"], perf["models"], "{since}: {again}");
        assert_eq!(again["tasks"], perf["tasks"], "{since}: {again}");
    }
}
