//! End to end: answers over 1 KiB are compressed for clients that accept it (gzip, br, zstd),
//! never event streams; small answers go as they are; the bytes saved are counted.

mod common;

use std::io::Read;

use common::*;
use serde_json::{json, Value};

async fn chat_with(w: &Warden, encoding: &str, stream: bool) -> reqwest::Response {
    let body = json!({"model": "llm", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    let req = reqwest::Client::new().post(w.url("/v1/chat/completions")).header("accept-encoding", encoding);
    req.json(&body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_compressed_streams_never() {
    // 400 tokens: a JSON answer of about 3 KiB.
    let w = Warden::start(
        "[services.llm]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\", \"--tokens\", \"400\"]\nmodels = [\"llm\"]\n",
    );
    let resp = chat_with(&w, "gzip", false).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let packed = resp.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&packed[..]).read_to_string(&mut text).unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(answer["choices"][0]["message"]["content"].as_str().unwrap().ends_with("tok399"));
    assert!(packed.len() * 2 < text.len(), "{} bytes for {}", packed.len(), text.len());
    for enc in ["br", "zstd"] {
        assert_eq!(chat_with(&w, enc, false).await.headers()["content-encoding"], enc);
    }

    // A stream is never compressed: each event must reach the client as it is made.
    let resp = chat_with(&w, "gzip", true).await;
    assert!(resp.headers().get("content-encoding").is_none());
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // Small answers go as they are; so do answers to clients that accept no encoding.
    let small = reqwest::Client::new().get(w.url("/health")).header("accept-encoding", "gzip").send().await.unwrap();
    assert!(small.headers().get("content-encoding").is_none());
    assert!(chat_with(&w, "identity", false).await.headers().get("content-encoding").is_none());

    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    let saved: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warden_compression_saved_bytes_total "))
        .and_then(|v| v.parse().ok())
        .expect("the counter is exported");
    assert!(saved as usize >= text.len() - packed.len(), "saved {saved}");
    // The client's own share: every answer here went to the anonymous client, except what
    // compression saved on routes without a caller (none here: /health is too small).
    // (An answer's saving is added when its body is dropped, just after its last bytes left.)
    let same = |s: &Value| s["compression"]["bytes_saved"] == s["compression"]["bytes_saved_all_clients"];
    let stats = fetch_until(std::time::Duration::from_secs(5), || w.get("/api/optimize/stats/anonymous"), same).await;
    assert!(same(&stats), "{stats}");
    assert!(stats["compression"]["bytes_saved"].as_u64().unwrap() >= saved, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_compressed_to_a_service_that_asks_for_it() {
    let up = Upstream::start();
    let w = Warden::start(&format!(
        "[services.api]\nkind = \"remote\"\nurl = \"http://127.0.0.1:{}\"\nmodels = [\"gpt\"]\ncompress_upstream = \"gzip\"\n",
        up.1
    ));
    // 600 words (~3 KiB): sent compressed; the upstream reads every word of it.
    let long = vec!["word"; 600].join(" ");
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": long}]});
    let resp = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["usage"]["prompt_tokens"], 600, "{answer}");
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json().await.unwrap();
    assert_eq!(stats["gzipped"], 1);
    // A small body goes as it is.
    let small = json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]});
    let resp = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&small).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json().await.unwrap();
    assert_eq!((stats["gzipped"].as_u64(), stats["requests"].as_u64()), (Some(1), Some(2)));
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    let saved: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warden_upstream_compression_saved_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(saved > 2000, "600 repeated words pack well: saved {saved}");
}
