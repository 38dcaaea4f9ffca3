//! End to end: embeddings coalescing (`[models.X] coalesce`). Concurrent requests for the
//! same model go upstream as one call and each gets exactly the vectors, indices and usage it
//! would have got alone; a combined call that fails sends everyone alone.

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[services.emb]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["emb", "emb-alone"]

[models.emb]
service = "emb"
# The widest allowed, so a burst meets within it however loaded the machine; a full batch
# (32) goes at once without waiting it out.
coalesce = "1s"
coalesce_max = 32
"#;

async fn embed(w: &Warden, model: &str, input: Value) -> (Value, Option<u64>) {
    let body = json!({"model": model, "input": input});
    let resp = reqwest::Client::new().post(w.url("/v1/embeddings")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{input}");
    let together = resp.headers().get("x-warden-coalesced").map(|v| v.to_str().unwrap().parse().unwrap());
    (resp.json().await.unwrap(), together)
}

/// What a client compares: its vectors with their indices, and its usage.
fn essence(v: &Value) -> (Value, Value) {
    (v["data"].clone(), v["usage"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_embeddings_share_upstream_calls_and_each_gets_its_own_answer() {
    let w = Warden::start(CONFIG);
    assert_eq!(w.post("/admin/services/emb/start", json!({})).await.status(), 200);
    let before = w.get("/svc/emb/stats").await["requests"].as_u64().unwrap();

    // 64 single-input requests at once (same size, so their usage shares are exact).
    let inputs: Vec<String> = (0..64).map(|i| format!("text number {i:02}")).collect();
    let sent = inputs.iter().map(|t| embed(&w, "emb", json!(t)));
    let answers = futures_util::future::join_all(sent).await;
    let calls = w.get("/svc/emb/stats").await["requests"].as_u64().unwrap() - before;
    assert!(calls <= 4, "64 requests reached the upstream in {calls} calls");
    assert!(answers.iter().all(|(_, together)| together.is_some_and(|n| n > 1)), "every one shared a call");
    // Each is exactly what it would have got alone.
    for (text, (got, _)) in inputs.iter().zip(&answers) {
        let (alone, together) = embed(&w, "emb-alone", json!(text)).await;
        assert_eq!(together, None);
        assert_eq!(essence(got), essence(&alone), "{text}");
    }
    let saved = w.get("/api/optimize/stats/anonymous").await["coalesce"]["upstream_calls_saved"].as_u64().unwrap();
    assert_eq!(saved, 64 - calls, "one call saved per request that shared another's");

    // Requests of several inputs keep their own order and indices; the usage adds up.
    let lists = [json!(["alpha beta", "gamma"]), json!("delta epsilon zeta"), json!(["eta", "theta iota", "kappa"])];
    let got = futures_util::future::join_all(lists.iter().map(|i| embed(&w, "emb", i.clone()))).await;
    let mut total = 0;
    for (input, (answer, _)) in lists.iter().zip(&got) {
        let (alone, _) = embed(&w, "emb-alone", input.clone()).await;
        assert_eq!(answer["data"], alone["data"], "{input}");
        total += answer["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    assert_eq!(total, 10, "the shares add up to what the upstream counted (3 + 3 + 4 words)");
    assert!(got.iter().all(|(_, together)| *together == Some(3)), "one call for the three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_input_costs_no_one_else_an_answer() {
    let w = Warden::start(CONFIG);
    let client = reqwest::Client::new();
    let send = |input: &str| {
        let req = client.post(w.url("/v1/embeddings")).json(&json!({"model": "emb", "input": input}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // The combined call fails on the bad input: each request is then sent on its own.
    let statuses = futures_util::future::join_all(["fine one", "FAIL", "fine two"].map(send)).await;
    assert_eq!(statuses, [200, 400, 200]);
}
