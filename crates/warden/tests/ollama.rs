//! The Ollama dialect against the fake backend (fast; the official `ollama` Python client
//! against llama-server is in llama.rs): listing, chat and generate plain and streamed as
//! NDJSON, embeddings, errors as `{"error": …}`, and 501 for model management.

mod common;

use common::*;
use serde_json::{json, Value};

const LOCAL: &str =
    "[services.local]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\"]\nmodels = [\"small\"]\n";

fn start() -> Warden {
    Warden::start(LOCAL)
}

async fn post(w: &Warden, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(w.url(path)).json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_clients_list_chat_generate_and_embed_through_the_pipeline() {
    let w = start();
    assert_eq!(reqwest::get(w.url("/")).await.unwrap().text().await.unwrap(), "Ollama is running");
    let version = w.get("/api/version").await;
    let parts: Vec<u32> = version["version"].as_str().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert!((parts[0], parts[1]) >= (0, 9), "clients that check want at least 0.9: {version}");
    let tags = w.get("/api/tags").await;
    assert_eq!(tags["models"][0]["name"], "small", "{tags}");
    assert_eq!(w.get("/api/ps").await["models"], json!([]), "nothing loaded while asleep");

    // Plain chat: one JSON answer with counts; it woke the service.
    let chat = json!({"model": "small", "messages": [{"role": "user", "content": "hi"}], "stream": false});
    let resp = post(&w, "/api/chat", chat.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-warden-model"], "small");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["done"], true, "{body}");
    assert_eq!(body["message"]["role"], "assistant");
    assert!(!body["message"]["content"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["eval_count"], 8, "{body}");
    let ps = w.get("/api/ps").await;
    assert_eq!(ps["models"][0]["name"], "small", "{ps}");
    assert!(ps["models"][0]["size"].as_u64().unwrap() > 0 && ps["models"][0]["expires_at"].is_string(), "{ps}");

    // Streamed (Ollama's default): NDJSON, one line per token, then the closing line.
    let mut streamed = chat.clone();
    streamed.as_object_mut().unwrap().remove("stream");
    let resp = post(&w, "/api/chat", streamed).await;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9, "8 tokens and the closing line: {text}");
    assert!(lines[..8].iter().all(|l| l["done"] == false && l["message"]["content"].is_string()));
    assert_eq!(lines[8]["done"], true);
    assert_eq!(lines[8]["eval_count"], 8, "usage asked of the stream and reported: {text}");

    let gen = post(&w, "/api/generate", json!({"model": "small", "prompt": "why", "stream": false})).await;
    let gen: Value = gen.json().await.unwrap();
    assert!(gen["response"].as_str().is_some_and(|r| !r.is_empty()), "{gen}");
    assert_eq!(gen["done_reason"], "stop");

    let embed: Value =
        post(&w, "/api/embed", json!({"model": "small", "input": ["a", "b"]})).await.json().await.unwrap();
    assert_eq!(embed["embeddings"].as_array().map(Vec::len), Some(2), "{embed}");
    let old: Value = post(&w, "/api/embeddings", json!({"model": "small", "prompt": "a"})).await.json().await.unwrap();
    assert!(old["embedding"].is_array(), "{old}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_errors_say_what_is_wrong_in_ollamas_shape() {
    let w = start();
    let cases = [
        ("/api/chat", json!({"model": "nope", "messages": []}), 404, "nope"),
        ("/api/chat", json!({"model": "small"}), 400, "messages"),
        ("/api/pull", json!({"model": "llama3"}), 501, "warden manages models through its config"),
        ("/api/show", json!({"model": "nope"}), 404, "not found"),
        ("/api/generate", json!({"model": "small", "prompt": "x", "keep_alive": "soon"}), 400, "keep_alive"),
    ];
    for (path, body, status, says) in cases {
        let resp = post(&w, path, body).await;
        assert_eq!(resp.status(), status, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|e| e.contains(says)), "{path}: {v}");
    }
    let bad = reqwest::Client::new().post(w.url("/api/generate")).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let shown: Value = post(&w, "/api/show", json!({"model": "small"})).await.json().await.unwrap();
    assert_eq!(shown["capabilities"], json!(["completion"]), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_unloads_the_model_once_answered() {
    let w = Warden::start(&format!("[idle]\ncheck_interval = \"50ms\"\n\n{LOCAL}"));
    let body = json!({"model": "small", "prompt": "why", "stream": false, "keep_alive": 0});
    assert_eq!(post(&w, "/api/generate", body).await.status(), 200);
    assert!(w.wait_state("local", "stopped", std::time::Duration::from_secs(10)).await, "{}", w.log());
    // The next request wakes it again, as a request to any sleeping model does.
    let body = json!({"model": "small", "prompt": "again", "stream": false});
    assert_eq!(post(&w, "/api/generate", body).await.status(), 200);
    assert_eq!(w.service("local").await["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_refused_in_ollamas_shape() {
    let key = hex(warden::config::sha256(b"ollama-key"));
    let w = Warden::start(&format!("[clients.tool]\nkey_sha256 = \"{key}\"\nmodels = [\"*\"]\n\n{LOCAL}"));
    let resp = reqwest::get(w.url("/api/tags")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let resp = reqwest::Client::new().get(w.url("/api/tags")).bearer_auth("ollama-key").send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// An Ollama server behind warden (the fake backend speaking Ollama's API), its model priced.
const OLLAMA_SERVER: &str = r#"
[scheduler]
default_max_tokens = 4

[services.ol]
kind = "process"
api = "ollama"
command = ["FAKE", "--port", "${PORT}", "--tokens", "5"]
models = ["ol-m"]

[models.ol-m]
service = "ol"
price = { input_per_1k = 1.0, output_per_1k = 1000.0 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ollama_server_gets_ollama_requests_as_they_are_and_is_charged_its_counts() {
    let w = Warden::start(OLLAMA_SERVER);
    // Plain chat: the Ollama server's own answer (its created_at), not a translation.
    let chat = json!({"model": "ol-m", "messages": [{"role": "user", "content": "one two three"}], "stream": false});
    let resp = post(&w, "/api/chat", chat.clone()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["created_at"], "2025-01-01T00:00:00Z", "passed through: {body}");
    assert_eq!(body["message"]["content"], "tok0 tok1 tok2 tok3", "bounded by default_max_tokens, set by warden");
    assert_eq!((body["prompt_eval_count"].as_u64(), body["eval_count"].as_u64()), (Some(3), Some(4)), "{body}");
    // Charged what the server counted: 3 prompt tokens at $1/1k, 4 output tokens at $1 each.
    let usage = w.get("/api/usage/anonymous").await;
    assert_eq!(usage["cost_micros"], 4_003_000, "{usage}");

    // Streamed (Ollama's default): the server's NDJSON, line by line, charged from its last line.
    let mut streamed = chat.clone();
    streamed.as_object_mut().unwrap().remove("stream");
    let resp = post(&w, "/api/chat", streamed).await;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines.iter().all(|l| l["created_at"] == "2025-01-01T00:00:00Z"), "{text}");
    assert_eq!(lines[4]["done"], true);
    let usage = w.get("/api/usage/anonymous").await;
    assert_eq!(usage["cost_micros"], 8_006_000, "{usage}");

    // Generate, bounded by num_predict: the server got the bound as sent.
    let gen = json!({"model": "ol-m", "prompt": "hello there", "stream": false, "options": {"num_predict": 2}});
    let body: Value = post(&w, "/api/generate", gen).await.json().await.unwrap();
    assert_eq!((body["response"].as_str(), body["eval_count"].as_u64()), (Some("tok0 tok1"), Some(2)), "{body}");
    // Without a bound, warden sets one (default_max_tokens, 4 here) so the cost can be reserved.
    let gen = json!({"model": "ol-m", "prompt": "hello", "stream": false});
    let body: Value = post(&w, "/api/generate", gen).await.json().await.unwrap();
    assert_eq!(body["eval_count"], 4, "{body}");

    // The translated path still serves OpenAI-compatible servers: warden writes that answer.
    assert_eq!(w.get("/api/tags").await["models"][0]["name"], "ol-m");
}
