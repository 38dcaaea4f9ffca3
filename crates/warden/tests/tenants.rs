//! End to end: clients with API keys and tiers (401, 403, max_concurrent), `kind = "remote"`
//! against a local upstream standing in for a hosted API, and `x-request-id`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn config(upstream: u16) -> String {
    format!(
        r#"
[tiers.solo]
priority = 15
max_concurrent = 1

[clients.acme]
key_sha256 = "{acme}"
tier = "premium"
models = ["*"]

[clients.bob]
key_env = "WARDEN_TEST_BOB_KEY"
tier = "basic"
models = ["small-*"]

[clients.carol]
key_sha256 = "{carol}"
tier = "solo"

[services.openai]
kind = "remote"
url = "http://127.0.0.1:{upstream}"
api_key_env = "WARDEN_TEST_UPSTREAM_KEY"
models = ["gpt-4"]

[services.local]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--tokens-per-sec", "10", "--tokens", "10"]
models = ["small-a"]

[services.envcheck]
kind = "process"
command = ["sh", "-c", "echo \"keys: bob=[$WARDEN_TEST_BOB_KEY] up=[$WARDEN_TEST_UPSTREAM_KEY]\"; exec FAKE --port $PORT"]
env = {{ WARDEN_TEST_UPSTREAM_KEY = "set for it" }}
models = ["small-env"]
"#,
        acme = hex(warden::config::sha256(b"acme-key")),
        carol = hex(warden::config::sha256(b"carol-key"))
    )
}

fn start(upstream: u16) -> Warden {
    // Both variables are only read by the warden started below (each test sets the same values).
    std::env::set_var("WARDEN_TEST_BOB_KEY", "bob-key");
    std::env::set_var("WARDEN_TEST_UPSTREAM_KEY", "upstream-secret");
    Warden::start(&config(upstream))
}

async fn send(w: &Warden, key: Option<&str>, path: &str, body: Value) -> reqwest::Response {
    let req = reqwest::Client::new().post(w.url(path)).json(&body);
    match key {
        Some(k) => req.bearer_auth(k),
        None => req,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_a_key_and_may_use_only_their_models() {
    let up = Upstream::start();
    let w = start(up.1);
    for key in [None, Some("wrong")] {
        let resp = send(&w, key, "/v1/chat/completions", chat("gpt-4")).await;
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    assert_eq!(reqwest::get(w.url("/v1/models")).await.unwrap().status(), 401);
    assert_eq!(reqwest::get(w.url("/health")).await.unwrap().status(), 200);

    let resp = send(&w, Some("acme-key"), "/v1/chat/completions", chat("gpt-4")).await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers()["x-request-id"].is_empty());

    let resp = send(&w, Some("bob-key"), "/v1/chat/completions", chat("gpt-4")).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["message"], "client bob may not use model \"gpt-4\"");
    assert_eq!(send(&w, Some("bob-key"), "/v1/chat/completions", chat("small-a")).await.status(), 200);
    // The client's warden key never reaches a local backend.
    let echo: Value = send(&w, Some("bob-key"), "/svc/local/who", json!({})).await.json().await.unwrap();
    assert_eq!(echo["authorization"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_api_gets_wardens_key_and_every_answer_an_id() {
    let up = Upstream::start();
    let w = start(up.1);
    let svc = w.service("openai").await;
    assert_eq!(
        (svc["kind"].clone(), svc["state"].clone(), svc["pid"].clone()),
        (json!("remote"), json!("running"), Value::Null)
    );

    let resp = send(&w, Some("acme-key"), "/svc/openai/whoami", json!({"x": 1})).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["authorization"], "Bearer upstream-secret", "warden's upstream key, not acme's");
    assert_eq!(echo["request_id"], id.as_str(), "the same id went upstream");
    // A caller's own id is kept.
    let resp = reqwest::Client::new()
        .post(w.url("/v1/chat/completions"))
        .bearer_auth("acme-key")
        .header("x-request-id", "trace-42")
        .json(&chat("gpt-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
    // Never slept, never stopped.
    let idle = w.get("/admin/idle-status").await;
    assert_eq!(idle["services"]["openai"]["will_sleep_in_minutes"], Value::Null);
    assert!(!w.log().contains("upstream-secret"), "the upstream key is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_max_concurrent_waits_instead_of_failing() {
    let up = Upstream::start();
    let w = start(up.1);
    let body = json!({"model": "small-a", "stream": true, "messages": [{"role": "user", "content": "go"}]});
    // carol's tier allows one request at a time: the second waits for the first to finish.
    let first = send(&w, Some("carol-key"), "/v1/chat/completions", body.clone()).await;
    assert_eq!(first.status(), 200);
    let url = w.url("/v1/chat/completions");
    let second = tokio::spawn(async move {
        let resp = reqwest::Client::new().post(url).bearer_auth("carol-key").json(&body).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, text)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.service("local").await["in_flight"], 1, "the second request is held at admission");
    let mut stream = first.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    let (status, text) = second.await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("data: [DONE]"));
}

#[test]
fn bad_tenant_config_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(warden_bin()).args(["config", "check"]).arg(&file).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let key = "a".repeat(64);
    let err = check(&format!("[clients.acme]\nkey_sha256 = \"{key}\"\nmonthly_budget_usd = -5\n"));
    assert!(
        err.contains("clients.acme.monthly_budget_usd: -5 must be a number of US dollars, 0 or more at line 3"),
        "{err}"
    );
    let err =
        check("[pools.p]\ncapacity = 10\nrefill_per_sec = 1\nsharing = \"reserved\"\nreserved = { nobody = 0.2 }\n");
    assert!(err.contains("pools.p.reserved.nobody: unknown client \"nobody\""), "{err}");
    let err = check("[scheduler]\noff_peak = \"22:00\"\n");
    assert!(err.contains("scheduler.off_peak: invalid window \"22:00\""), "{err}");
    std::fs::write(&file, "[clients.acme]\nkey_env = \"WARDEN_TEST_NOT_SET_ANYWHERE\"\n").unwrap();
    let out = Command::new(warden_bin()).args(["config", "check"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clients.acme.key_env: environment variable WARDEN_TEST_NOT_SET_ANYWHERE is not set at line 2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_warden_starts_do_not_inherit_the_keys_it_holds() {
    let up = Upstream::start();
    let w = start(up.1);
    assert_eq!(send(&w, Some("acme-key"), "/v1/chat/completions", chat("small-env")).await.status(), 200);
    let keys = |v: &Value| {
        let lines = v["lines"].as_array().unwrap().iter().filter_map(|l| l.as_str());
        lines.into_iter().find(|l| l.starts_with("keys: ")).map(str::to_string)
    };
    let got =
        fetch_until(Duration::from_secs(10), || w.get("/admin/services/envcheck/logs"), |v| keys(v).is_some()).await;
    // A client's key_env and a hosted API's api_key_env are warden's; the service's own `env`
    // still sets what it names.
    assert_eq!(keys(&got).as_deref(), Some("keys: bob=[] up=[set for it]"), "{got}");
}
