//! End to end: models inside multi-model servers (Ollama's API, llama.cpp router's API, spoken
//! by the fake backend), keep-alive unloads, and single-model keep-alive.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn multi(api: &str) -> String {
    format!(
        r#"
[idle]
check_interval = "50ms"

[services.mm]
kind = "process"
api = "{api}"
command = ["FAKE", "--port", "${{PORT}}", "--model-mb", "48", "--load-delay-ms", "200"]
models = ["m-a", "m-b"]
idle_timeout = "700ms"

[models.m-a]
service = "mm"
keep_alive = "400ms"

[models.m-b]
service = "mm"
keep_alive = "60m"
"#
    )
}

async fn loaded_on_server(w: &Warden, api: &str) -> Vec<String> {
    if api == "ollama" {
        let ps = w.get("/svc/mm/api/ps").await;
        ps["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    } else {
        let list = w.get("/svc/mm/models").await;
        let loaded = list["data"].as_array().unwrap().iter().filter(|m| m["status"]["value"] == "loaded");
        loaded.map(|m| m["id"].as_str().unwrap().to_string()).collect()
    }
}

async fn model_status(w: &Warden, model: &str) -> Value {
    w.get("/admin/idle-status").await["models"][model].clone()
}

async fn keep_alive_cycle(api: &str) {
    let w = Warden::start(&multi(api));
    // Twenty concurrent requests for an unloaded model: one start, one load, all answered.
    let client = reqwest::Client::new();
    let requests = (0..20).map(|_| client.post(w.url("/v1/chat/completions")).json(&chat("m-a")).send());
    for resp in futures_util::future::join_all(requests).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    assert_eq!(w.log().matches("Loading model m-a").count(), 1, "{}", w.log());
    assert_eq!(loaded_on_server(&w, api).await, vec!["m-a"]);
    let a = model_status(&w, "m-a").await;
    assert_eq!(a["loaded"], true);
    assert_eq!(a["provider"], api);
    assert!(a["keep_alive_until"].as_u64().is_some());
    assert_eq!(model_status(&w, "m-b").await["loaded"], false);

    assert_eq!(w.post("/v1/chat/completions", chat("m-b")).await.status(), 200);
    let both = w.service("mm").await["rss_bytes"].as_u64().unwrap();
    assert!(both > 96 << 20, "two 48 MiB models resident: {both}");

    // m-a's keep-alive (400ms) runs out; m-b's (60m) does not; the server stays up.
    assert!(eventually(Duration::from_secs(5), || async { model_status(&w, "m-a").await["loaded"] == false }).await);
    assert!(w.wait_log("Model m-a keep-alive expired, unloading...", Duration::from_secs(1)));
    assert!(w.wait_log("Successfully unloaded idle model m-a", Duration::from_secs(1)));
    assert_eq!(loaded_on_server(&w, api).await, vec!["m-b"]);
    let one = w.service("mm").await["rss_bytes"].as_u64().unwrap();
    assert!(one + (40 << 20) < both, "memory measured down after the unload: {both} -> {one}");
    assert_eq!(w.service("mm").await["state"], "running");
    assert_eq!(w.service("mm").await["loaded_models"], serde_json::json!(["m-b"]));

    // An admin unload of the last model lets the server sleep after its own idle timeout.
    let resp = reqwest::Client::new().post(w.url("/admin/models/m-b/unload")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(model_status(&w, "m-b").await["loaded"], false);
    assert!(loaded_on_server(&w, api).await.is_empty());
    assert!(w.wait_state("mm", "stopped", Duration::from_secs(5)).await, "{}", w.log());
    assert!(w.wait_log("Successfully stopped idle service mm", Duration::from_secs(5)), "{}", w.log());

    // And everything comes back on the next request.
    assert_eq!(w.post("/v1/chat/completions", chat("m-b")).await.status(), 200);
    assert_eq!(model_status(&w, "m-b").await["loaded"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_models_load_on_demand_and_unload_after_keep_alive() {
    keep_alive_cycle("ollama").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_models_load_on_demand_and_unload_after_keep_alive() {
    keep_alive_cycle("llamacpp-router").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_evicted_by_its_server_is_noticed() {
    let w = Warden::start(&multi("ollama"));
    assert_eq!(w.post("/v1/chat/completions", chat("m-b")).await.status(), 200);
    // Ollama unloads on its own (its own keep_alive, or memory pressure).
    let resp = w.post("/svc/mm/api/generate", serde_json::json!({"model": "m-b", "keep_alive": 0})).await;
    assert_eq!(resp.status(), 200);
    assert!(eventually(Duration::from_secs(3), || async { model_status(&w, "m-b").await["loaded"] == false }).await);
    // The next request loads it again instead of hitting an unloaded model.
    assert_eq!(w.post("/v1/chat/completions", chat("m-b")).await.status(), 200);
    assert_eq!(loaded_on_server(&w, "ollama").await, vec!["m-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_model_service_stops_when_its_model_keep_alive_ends() {
    let w = Warden::start(
        r#"
[idle]
check_interval = "50ms"
timeout = "60m"

[services.one]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]

[models.solo]
service = "one"
keep_alive = "300ms"
"#,
    );
    assert_eq!(w.post("/v1/chat/completions", chat("solo")).await.status(), 200);
    assert_eq!(model_status(&w, "solo").await["loaded"], true);
    assert_eq!(model_status(&w, "solo").await["provider"], "openai");
    assert!(w.wait_state("one", "stopped", Duration::from_secs(5)).await);
    assert!(w.wait_log("Model solo keep-alive expired, unloading...", Duration::from_secs(1)), "{}", w.log());
    assert!(w.wait_log("Successfully unloaded idle model solo", Duration::from_secs(1)));
    assert!(!w.log().contains("Service one has been idle"));
    assert_eq!(model_status(&w, "solo").await["loaded"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_a_server_offers_are_discovered_once_it_has_run() {
    for api in ["ollama", "llamacpp-router"] {
        let w = Warden::start(&format!(
            r#"
[services.mm]
kind = "process"
api = "{api}"
command = ["FAKE", "--port", "${{PORT}}", "--models", "found-a,found-b:latest"]
models = ["named"]
"#
        ));
        // Asleep, the server's own models are not known yet.
        assert_eq!(w.post("/v1/chat/completions", chat("found-a")).await.status(), 404);
        let resp = reqwest::Client::new().post(w.url("/admin/services/mm/start")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            eventually(Duration::from_secs(3), || async {
                let list = w.get("/v1/models").await;
                let ids: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
                ids.contains(&"found-a") && ids.contains(&"found-b:latest") && ids.contains(&"named")
            })
            .await,
            "{api}: {}",
            w.log()
        );
        // The log is read from warden's stderr by another thread: wait for the line, bounded.
        assert!(w.wait_log("Discovered model found-a on service mm", Duration::from_secs(5)), "{}", w.log());
        // A discovered model is routed, loaded on demand and reported like a configured one.
        assert_eq!(w.post("/v1/chat/completions", chat("found-a")).await.status(), 200);
        assert_eq!(loaded_on_server(&w, api).await, vec!["found-a"]);
        let status = model_status(&w, "found-a").await;
        assert_eq!((status["loaded"].clone(), status["discovered"].clone()), (Value::Bool(true), Value::Bool(true)));
        if api == "ollama" {
            // "found-b" reaches "found-b:latest".
            assert_eq!(w.post("/v1/chat/completions", chat("found-b")).await.status(), 200);
        }
    }
}
