//! End to end: the response cache (`[cache]`) against the fake backend, stored in SQLite on
//! disk: hits cost nothing and never reach the backend, every field of the body is in the key,
//! streams are stored only whole and replayed event by event, Cache-Control, client scope,
//! and entries that survive a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A priced model ($1 per output token, $1 per 1k prompt tokens) answering 4 tokens.
fn config(cache: &str, args: &str) -> String {
    format!(
        r#"
[cache]
enabled = true
{cache}

[services.llm]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--tokens", "4"{args}]
models = ["llm"]

[models.llm]
price = {{ input_per_1k = 1.0, output_per_1k = 1000.0 }}
"#
    )
}

fn ask(extra: Value) -> Value {
    let mut body = json!({"model": "llm", "messages": [{"role": "user", "content": "hello"}], "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// (x-warden-cache, status, body text)
async fn send(w: &Warden, body: &Value, headers: &[(&str, &str)]) -> (String, u16, String) {
    let mut req = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let mark = resp.headers().get("x-warden-cache").map_or("-", |v| v.to_str().unwrap()).to_string();
    let status = resp.status().as_u16();
    (mark, status, resp.text().await.unwrap())
}

async fn backend_requests(w: &Warden) -> u64 {
    w.get("/svc/llm/stats").await["requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_answer_is_served_again_for_nothing_and_cache_control_is_obeyed() {
    let w = Warden::start(&config("", ""));
    let (mark, status, first) = send(&w, &ask(json!({})), &[]).await;
    assert_eq!((mark.as_str(), status), ("miss", 200), "{first}");
    let (mark, _, again) = send(&w, &ask(json!({})), &[]).await;
    assert_eq!(mark, "hit");
    assert_eq!(again, first, "the same answer");
    let before = backend_requests(&w).await;
    assert_eq!(before, 1, "the hit never reached the backend (this /stats call is not counted yet)");

    // Charged once; the hit is on record as cached, free, with what it saved.
    let usage = w.get("/api/usage/anonymous").await;
    let paid: Value = serde_json::from_str(&first).unwrap();
    let cost = 4_000_000 + paid["usage"]["prompt_tokens"].as_i64().unwrap() * 1_000;
    assert_eq!(usage["cost_micros"], cost, "{usage}");
    let latest = &usage["recent"][0];
    assert_eq!((latest["cached"].as_bool(), latest["cost_micros"].as_i64()), (Some(true), Some(0)), "{usage}");
    assert_eq!(latest["saved_micros"], cost, "{usage}");

    // Not deterministic: bypassed, every time.
    let warm = ask(json!({"temperature": 0.7}));
    for _ in 0..2 {
        assert_eq!(send(&w, &warm, &[]).await.0, "bypass");
    }
    // no-cache skips the lookup and stores the fresh answer; no-store keeps it out.
    assert_eq!(send(&w, &ask(json!({})), &[("cache-control", "no-cache")]).await.0, "miss");
    assert_eq!(send(&w, &ask(json!({})), &[]).await.0, "hit");
    let private = ask(json!({"messages": [{"role": "user", "content": "private"}]}));
    assert_eq!(send(&w, &private, &[("cache-control", "no-store")]).await.0, "miss");
    assert_eq!(send(&w, &private, &[]).await.0, "miss", "no-store kept it out");
    assert_eq!(send(&w, &private, &[]).await.0, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_the_request_is_in_the_key() {
    let w = Warden::start(&config("when = \"always\"", ""));
    assert_eq!(send(&w, &ask(json!({})), &[]).await.0, "miss");
    assert_eq!(send(&w, &ask(json!({})), &[]).await.0, "hit");
    let variations = [
        json!({"messages": [{"role": "user", "content": "hello!"}]}),
        json!({"temperature": 0.5}),
        json!({"max_tokens": 3}),
        json!({"seed": 7}),
        json!({"n": 2}),
        json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        json!({"response_format": {"type": "json_object"}}),
        json!({"reasoning_effort": "low"}),
        json!({"reasoning_effort": "high"}),
        json!({"logit_bias": {"50256": -100}}),
    ];
    for v in variations {
        let (mark, status, body) = send(&w, &ask(v.clone()), &[]).await;
        assert_eq!((mark.as_str(), status), ("miss", 200), "{v} must miss: {body}");
    }
    // Field order does not matter.
    let reordered: Value = serde_json::from_str(
        r#"{"temperature": 0, "messages": [{"content": "hello", "role": "user"}], "model": "llm"}"#,
    )
    .unwrap();
    assert_eq!(send(&w, &reordered, &[]).await.0, "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_stored_only_whole_and_replayed_event_by_event() {
    let w = Warden::start(&config("", ""));
    let stream = ask(json!({"stream": true}));
    let (mark, _, first) = send(&w, &stream, &[]).await;
    assert_eq!(mark, "miss");
    assert!(first.ends_with("data: [DONE]\n\n"), "{first}");
    let resp = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&stream).send().await.unwrap();
    assert_eq!(resp.headers()["x-warden-cache"], "hit");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut chunks = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(c) = futures_util::StreamExt::next(&mut body).await {
        chunks.push(c.unwrap());
    }
    assert_eq!(chunks.concat(), first.as_bytes(), "the same events");
    assert!(chunks.len() >= 5, "replayed event by event, not one blob: {} chunks", chunks.len());
    // The JSON answer is stored apart from the stream.
    assert_eq!(send(&w, &ask(json!({})), &[]).await.0, "miss");

    // A stream cut by a dying backend is never stored.
    let cut = Warden::start(&config("", ", \"--cut-stream-after\", \"2\""));
    for i in 0..2 {
        if i > 0 {
            // The backend exited with the cut. A request sent before warden has seen the exit
            // finds the old port closed (a 502 naming it, by design); this test is about the
            // cache, so it waits for warden to see the exit and start the backend again.
            let gone = fetch_until(Duration::from_secs(10), || cut.service("llm"), |s| s["state"] != "running").await;
            assert_ne!(gone["state"], "running", "{gone}");
        }
        let (mark, _, text) = send(&cut, &stream, &[]).await;
        assert_eq!(mark, "miss", "{text}");
        assert!(text.contains("\"error\""), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_gets_another_client_s_answer_and_entries_survive_a_restart() {
    let clients = format!(
        "[clients.acme]\nkey_sha256 = \"{}\"\ntier = \"enterprise\"\n[clients.bob]\nkey_sha256 = \"{}\"\ntier = \"enterprise\"\n",
        hex(warden::config::sha256(b"acme-key")),
        hex(warden::config::sha256(b"bob-key"))
    );
    let mut w = Warden::start(&format!("{}{clients}", config("", "")));
    let send_as = |key: &'static str| {
        let url = w.url("/v1/chat/completions");
        async move {
            let resp = reqwest::Client::new().post(url).bearer_auth(key).json(&ask(json!({}))).send().await.unwrap();
            resp.headers()["x-warden-cache"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(send_as("acme-key").await, "miss");
    assert_eq!(send_as("bob-key").await, "miss", "bob does not get acme's answer");
    assert_eq!(send_as("acme-key").await, "hit");
    w.restart();
    let url = w.url("/v1/chat/completions");
    let resp = reqwest::Client::new().post(url).bearer_auth("acme-key").json(&ask(json!({}))).send().await.unwrap();
    assert_eq!(resp.headers()["x-warden-cache"], "hit", "kept in state_dir/cache.db across a restart");
    assert!(w.dir.path().join("state/cache.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_semantic_cache_serves_a_near_identical_question_and_nothing_else() {
    let w = Warden::start(
        r#"
[cache]
enabled = true
semantic = { model = "embed", threshold = 0.95 }

[services.llm]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--tokens", "4"]
models = ["llm", "embed"]
"#,
    );
    let question = |q: &str, extra: Value| {
        let mut body = json!({"model": "llm", "temperature": 0,
            "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": q}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (mark, status, first) = send(&w, &question("What is the capital of France?", json!({})), &[]).await;
    assert_eq!((mark.as_str(), status), ("miss", 200), "{first}");
    let (mark, status, near) = send(&w, &question("what is the capital of france", json!({})), &[]).await;
    assert_eq!((mark.as_str(), status), ("semantic", 200), "{near}\n{}", w.log());
    assert_eq!(near, first, "the stored answer, as it was");
    // Another question in the same context, and the same question with another parameter.
    let (mark, _, _) = send(&w, &question("What is the capital of Spain?", json!({})), &[]).await;
    assert_eq!(mark, "miss", "a different question is not the same one");
    let (mark, _, _) = send(&w, &question("what is the capital of france", json!({"max_tokens": 2})), &[]).await;
    assert_eq!(mark, "miss", "the rest of the request must be identical");
    let stats = w.get("/svc/llm/stats").await;
    assert_eq!(stats["completions"], 3, "the semantic hit never reached the model: {stats}");
}
