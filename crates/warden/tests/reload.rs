//! End to end: config reload without a restart (`POST /admin/reload`, `SIGHUP`, `warden
//! reload`). Unchanged services keep running untouched; a changed one is restarted once its
//! in-flight requests finish; a removed one drains and stops; an added one wakes on demand; a
//! bad file is refused and the running config stays; clients, prices and budgets change
//! without losing spend, holds or queued requests.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A fake-backend service serving `model`, with extra command-line arguments.
fn service(name: &str, model: &str, args: &str) -> String {
    format!(
        "[services.{name}]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${{PORT}}\"{args}]\nmodels = [\"{model}\"]\n"
    )
}

/// A streamed chat request; returns the response once its first event has arrived, so the
/// request is known to be in flight.
async fn stream_started(w: &Warden, model: &str) -> reqwest::Response {
    let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads the rest of a streamed answer; returns all of it.
async fn finish(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("the stream is not cut"));
    }
    String::from_utf8(out).unwrap()
}

async fn content(w: &Warden, model: &str) -> (u16, Value) {
    let resp = w.post("/v1/chat/completions", chat(model)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn pid(w: &Warden, service: &str) -> u32 {
    w.service(service).await["pid"].as_u64().unwrap_or(0) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_unchanged_services_restarts_changed_ones_after_their_requests_drains_removed_ones_and_adds_new_ones(
) {
    // 20 tokens at 10 a second: a stream that stays in flight for 2 s.
    let slow = ", \"--tokens\", \"20\", \"--tokens-per-sec\", \"10\"";
    let before = [service("keep", "keep-m", ""), service("change", "change-m", slow), service("gone", "gone-m", slow)];
    let w = Warden::start(&before.concat());
    for m in ["keep-m", "change-m", "gone-m"] {
        assert_eq!(content(&w, m).await.0, 200, "{m}");
    }
    let (keep_pid, change_pid, gone_pid) = (pid(&w, "keep").await, pid(&w, "change").await, pid(&w, "gone").await);
    // A request in flight on the service that changes, and on the one that goes.
    let on_change = stream_started(&w, "change-m").await;
    let on_gone = stream_started(&w, "gone-m").await;

    // change: 3 tokens now; gone: removed; fresh: added.
    let after = [
        service("keep", "keep-m", ""),
        service("change", "change-m", ", \"--tokens\", \"3\""),
        service("fresh", "fresh-m", ""),
    ];
    w.rewrite_config(&after.concat(), "");
    let resp = w.post("/admin/reload", json!({})).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let services = &answer["changes"]["services"];
    assert_eq!(services["added"], json!(["fresh"]), "{answer}");
    assert_eq!(services["changed"], json!(["change"]), "{answer}");
    assert_eq!(services["removed"], json!(["gone"]), "{answer}");
    assert_eq!(services["unchanged"], json!(["keep"]), "{answer}");
    assert_eq!(answer["changed"], true);

    // A request for the changed service now waits for its old run to drain, then is served
    // by the new one.
    let next = tokio::spawn({
        let url = w.url("/v1/chat/completions");
        async move {
            let resp = reqwest::Client::new().post(url).json(&chat("change-m")).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    });
    // The requests in flight finish whole on their old runs.
    for stream in [finish(on_change).await, finish(on_gone).await] {
        assert!(stream.contains("tok19") && stream.ends_with("data: [DONE]\n\n"), "{stream}");
    }
    let (status, body) = next.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1 tok2", "the new command line serves it");
    assert!(wait_until(Duration::from_secs(10), || !process_alive(change_pid)), "the old run stopped");
    let new_pid = pid(&w, "change").await;
    assert!(new_pid != 0 && new_pid != change_pid);

    // The removed service stopped once its request was done, and routes nowhere.
    assert!(wait_until(Duration::from_secs(10), || !process_alive(gone_pid)), "the removed service stopped");
    let (status, body) = content(&w, "gone-m").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
    let listed = w.get("/admin/services").await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "gone").count(), 0, "{listed}");
    assert!(names.contains(&"fresh"), "{listed}");

    // The unchanged service was never touched.
    assert_eq!(pid(&w, "keep").await, keep_pid);
    assert_eq!(w.log().matches("Starting service keep").count(), 1);
    // The added one is ready to wake.
    assert_eq!(w.service("fresh").await["state"], "stopped");
    assert_eq!(content(&w, "fresh-m").await.0, 200);
    assert_eq!(w.service("fresh").await["state"], "running");

    // Bringing the removed service back makes it wakeable again in its old place.
    w.rewrite_config(&[after.concat(), service("gone", "gone-m", "")].concat(), "");
    let answer: Value = w.post("/admin/reload", json!({})).await.json().await.unwrap();
    assert_eq!(answer["changes"]["services"]["added"], json!(["gone"]), "{answer}");
    assert_eq!(content(&w, "gone-m").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_with_its_key_path_and_sighup_and_the_cli_reload() {
    let w = Warden::start(&service("a", "a-m", ""));
    assert_eq!(content(&w, "a-m").await.0, 200);
    let a_pid = pid(&w, "a").await;
    w.rewrite_config(&format!("{}start_timeout = \"5 minutes\"\n", service("a", "a-m", "")), "");
    let resp = w.post("/admin/reload", json!({})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_config", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("services.a.start_timeout") && message.contains("line"), "{message}");
    assert!(message.contains("the running one stays"), "{message}");
    // Nothing changed.
    assert_eq!(content(&w, "a-m").await.0, 200);
    assert_eq!(pid(&w, "a").await, a_pid);

    // SIGHUP reads the (now good) file: b is added, a untouched.
    w.rewrite_config(&[service("a", "a-m", ""), service("b", "b-m", "")].concat(), "");
    nix_kill(w.pid(), "HUP");
    assert!(w.wait_log("Config reloaded: services added b", Duration::from_secs(10)), "{}", w.log());
    assert_eq!(content(&w, "b-m").await.0, 200);
    assert_eq!(pid(&w, "a").await, a_pid);

    // `warden reload` says what changed.
    w.rewrite_config(&service("a", "a-m", ""), "");
    let out = std::process::Command::new(warden_bin()).args(["--url", &w.base, "reload"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Config reloaded") && stdout.contains("services removed: b"), "{stdout}");
    let out = std::process::Command::new(warden_bin()).args(["--url", &w.base, "reload"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing changed"));
}

fn nix_kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Clients, a priced model and a pool; `acme_budget` in USD.
fn tenants(acme_budget: f64, price_out: f64, extra: &str) -> String {
    format!(
        r#"
[clients.acme]
key_sha256 = "{acme}"
monthly_budget_usd = {acme_budget}

[services.llm]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}"]
models = ["llm"]

[models.llm]
price = {{ input_per_1k = 0.0, output_per_1k = {price_out} }}
{extra}
"#,
        acme = hex(warden::config::sha256(b"acme-key")),
    )
}

async fn call(w: &Warden, key: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new().post(w.url(path)).bearer_auth(key).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn queued_now(w: &Warden) -> u64 {
    let resp = reqwest::Client::new().get(w.url("/api/queue/status")).bearer_auth("acme-key").send().await;
    resp.unwrap().json::<Value>().await.unwrap()["queued"].as_u64().unwrap_or(0)
}

async fn usage(w: &Warden) -> Value {
    let resp = reqwest::Client::new().get(w.url("/api/usage/acme/current")).bearer_auth("acme-key").send().await;
    resp.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_prices_and_budgets_change_without_losing_spend_holds_or_queued_requests() {
    let w = Warden::start(&tenants(10.0, 1.0, ""));
    // 8 completion tokens at $1/1k: $0.008.
    let (status, body) = call(&w, "acme-key", "/v1/chat/completions", chat("llm")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usage(&w).await["spent_micros"], 8_000);
    let (status, hold) = call(&w, "acme-key", "/internal/reserve", json!({"amount_usd": 0.5})).await;
    assert_eq!(status, 200, "{hold}");
    // A request waiting in the queue across the reload (its largest cost reserved).
    assert_eq!(w.post("/admin/scheduler/stop", json!({})).await.status(), 200);
    let queued = tokio::spawn({
        let url = w.url("/v1/chat/completions");
        async move {
            let resp = reqwest::Client::new().post(url).bearer_auth("acme-key").json(&chat("llm")).send().await;
            resp.unwrap().status().as_u16()
        }
    });
    assert!(eventually(Duration::from_secs(5), || async { queued_now(&w).await == 1 }).await);
    let before = usage(&w).await;
    assert!(before["reserved_micros"].as_i64().unwrap() > 500_000, "{before}");

    // A new client, the price doubled, acme's budget raised.
    let bob = format!(
        "[clients.bob]\nkey_sha256 = \"{}\"\nmonthly_budget_usd = 10\n",
        hex(warden::config::sha256(b"bob-key"))
    );
    w.rewrite_config(&tenants(20.0, 2.0, &bob), "");
    let answer: Value = w.post("/admin/reload", json!({})).await.json().await.unwrap();
    assert_eq!(answer["changes"]["clients"]["added"], json!(["bob"]), "{answer}");
    assert_eq!(answer["changes"]["clients"]["changed"], json!(["acme"]), "{answer}");
    assert!(answer["changes"]["sections"].as_array().unwrap().contains(&json!("prices")), "{answer}");
    assert_eq!(answer["changes"]["services"]["unchanged"], json!(["llm"]), "{answer}");

    let now = usage(&w).await;
    assert_eq!(now["spent_micros"], 8_000, "spend kept: {now}");
    assert_eq!(
        now["reserved_micros"], before["reserved_micros"],
        "the hold and the queued request's reservation kept: {now}"
    );
    assert_eq!(now["budget_usd"], 20.0, "{now}");
    assert_eq!(queued_now(&w).await, 1, "still queued");
    assert_eq!(w.post("/admin/scheduler/start", json!({})).await.status(), 200);
    assert_eq!(queued.await.unwrap(), 200, "the queued request ran");
    // It ran after the reload: at the new price, $0.016.
    assert_eq!(usage(&w).await["spent_micros"], 24_000);
    let id = hold["reservation_id"].clone();
    let (status, done) =
        call(&w, "acme-key", "/internal/consume", json!({"reservation_id": id, "cost_usd": 0.1})).await;
    assert_eq!(status, 200, "the hold settles after the reload: {done}");
    assert_eq!(usage(&w).await["spent_micros"], 124_000);
    assert_eq!(call(&w, "bob-key", "/v1/chat/completions", chat("llm")).await.0, 200, "the new key works");

    // Removing acme: its key no longer lets it in; its spend stays on record.
    w.rewrite_config(
        &tenants(20.0, 2.0, &bob).replace("[clients.acme]", "[clients.gone]").replace(
            &format!("key_sha256 = \"{}\"", hex(warden::config::sha256(b"acme-key"))),
            &format!("key_sha256 = \"{}\"", hex(warden::config::sha256(b"other-key"))),
        ),
        "",
    );
    let answer: Value = w.post("/admin/reload", json!({})).await.json().await.unwrap();
    assert_eq!(answer["changes"]["clients"]["removed"], json!(["acme"]), "{answer}");
    assert_eq!(call(&w, "acme-key", "/v1/chat/completions", chat("llm")).await.0, 401);
    assert_eq!(call(&w, "bob-key", "/v1/chat/completions", chat("llm")).await.0, 200, "bob keeps his place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_settings_and_keep_alives_apply_to_the_running_service_without_a_restart() {
    let head = "[idle]\ncheck_interval = \"50ms\"\n";
    let w = Warden::start(&format!("{head}{}idle_timeout = \"60m\"\n", service("a", "a-m", "")));
    assert_eq!(content(&w, "a-m").await.0, 200);
    let before = pid(&w, "a").await;
    // A shorter idle timeout: the same run takes it, and sleeps by it.
    w.rewrite_config(&format!("{head}{}idle_timeout = \"300ms\"\n", service("a", "a-m", "")), "");
    let answer: Value = w.post("/admin/reload", json!({})).await.json().await.unwrap();
    assert_eq!(answer["changes"]["services"]["retuned"], json!(["a"]), "{answer}");
    assert_eq!(answer["changes"]["services"]["changed"], json!([]), "{answer}");
    assert_eq!(pid(&w, "a").await, before, "not restarted");
    assert!(w.wait_state("a", "stopped", Duration::from_secs(10)).await, "slept by the new idle timeout: {}", w.log());
    assert!(!process_alive(before));
    assert_eq!(w.log().matches("Starting service a").count(), 1);
}
