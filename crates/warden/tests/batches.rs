//! The OpenAI Batch API end to end: upload a JSONL file, run a batch through the pipeline as the
//! client that made it, read the output and error files; a bad file fails at validation; a
//! cancel stops it; a crash mid-batch resumes where it stopped with no line sent twice; and
//! (with WARDEN_TEST_PYTHON) the official `openai` client drives it unchanged.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "team-key";
const OTHER: &str = "other-key";

fn config(upstream: u16, optimizer: &str) -> String {
    format!(
        r#"
[clients.team]
key_sha256 = "{team}"
models = ["*"]

[clients.other]
key_sha256 = "{other}"
models = ["*"]

[services.hosted]
kind = "remote"
url = "http://127.0.0.1:{upstream}"
models = ["m"]

[optimizer]
{optimizer}
"#,
        team = hex(warden::config::sha256(KEY.as_bytes())),
        other = hex(warden::config::sha256(OTHER.as_bytes())),
    )
}

fn line(id: &str, model: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "messages": [{"role": "user", "content": id}], "max_tokens": 4}})
    .to_string()
}

struct Api<'a> {
    w: &'a Warden,
    key: &'a str,
}

impl Api<'_> {
    async fn upload(&self, content: String) -> Value {
        let part = reqwest::multipart::Part::text(content).file_name("input.jsonl");
        let form = reqwest::multipart::Form::new().text("purpose", "batch").part("file", part);
        let resp = reqwest::Client::new()
            .post(self.w.url("/v1/files"))
            .bearer_auth(self.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new().get(self.w.url(path)).bearer_auth(self.key).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp =
            reqwest::Client::new().post(self.w.url(path)).bearer_auth(self.key).json(&body).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn create(&self, file: &Value) -> Value {
        let body = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
                          "metadata": {"job": "nightly"}});
        let (status, batch) = self.post("/v1/batches", body).await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    async fn batch(&self, id: &str) -> Value {
        self.get(&format!("/v1/batches/{id}")).await.1
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        let b = fetch_until(Duration::from_secs(30), || self.batch(id), |b| b["status"] == status).await;
        assert_eq!(b["status"], status, "{b}\n{}", self.w.log());
        b
    }

    /// A produced file's JSON lines.
    async fn lines(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else { return vec![] };
        let resp = reqwest::Client::new()
            .get(self.w.url(&format!("/v1/files/{id}/content")))
            .bearer_auth(self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["custom_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_every_line_as_its_client_and_writes_output_and_error_files() {
    let up = Upstream::start();
    let w = Warden::start(&config(up.1, ""));
    let api = Api { w: &w, key: KEY };
    let input = [line("a", "m"), line("b", "m"), line("c", "nope"), line("d", "m")].join("\n");
    let file = api.upload(input.clone()).await;
    assert_eq!((file["object"].as_str(), file["purpose"].as_str()), (Some("file"), Some("batch")));
    assert_eq!(file["bytes"], input.len());

    let batch = api.create(&file).await;
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["metadata"]["job"], "nightly");
    let id = batch["id"].as_str().unwrap();
    let done = api.wait_status(id, "completed").await;
    assert_eq!(done["request_counts"], json!({"total": 4, "completed": 3, "failed": 1}));
    for at in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[at].as_u64().is_some(), "{at}: {done}");
    }
    let output = api.lines(&done["output_file_id"]).await;
    assert_eq!(ids(&output), ["a", "b", "d"], "in line order");
    assert_eq!(output[0]["response"]["status_code"], 200);
    assert_eq!(output[0]["response"]["body"]["object"], "chat.completion");
    assert!(output[0]["id"].as_str().unwrap().starts_with("batch_req_"));
    let errors = api.lines(&done["error_file_id"]).await;
    assert_eq!(ids(&errors), ["c"]);
    assert_eq!(errors[0]["response"]["status_code"], 404, "an unknown model: {}", errors[0]);
    // The input as uploaded, and the files listed (input, output, error).
    let (_, listed) = api.get("/v1/files").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3, "{listed}");
    let (_, listed) = api.get("/v1/batches?limit=1").await;
    assert_eq!(listed["data"][0]["id"], id);
    // The lines ran as the client that made the batch: its usage holds them.
    let (_, usage) = api.get("/api/usage/team").await;
    assert!(usage.to_string().contains("\"m\""), "{usage}");

    // Another client sees none of it.
    let other = Api { w: &w, key: OTHER };
    assert_eq!(other.get(&format!("/v1/batches/{id}")).await.0, 404);
    assert_eq!(other.get(&format!("/v1/files/{}/content", file["id"].as_str().unwrap())).await.0, 404);
    assert_eq!(other.get("/v1/files").await.1["data"], json!([]));
    // Finished: a cancel is refused; the input can be deleted.
    assert_eq!(api.post(&format!("/v1/batches/{id}/cancel"), json!({})).await.0, 409);
    let resp = reqwest::Client::new()
        .delete(w.url(&format!("/v1/files/{}", file["id"].as_str().unwrap())))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["deleted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_input_file_fails_at_validation_naming_each_line_and_bad_requests_are_refused() {
    let up = Upstream::start();
    let w = Warden::start(&config(up.1, ""));
    let api = Api { w: &w, key: KEY };
    let input = [line("a", "m"), "{not json".into(), line("a", "m")].join("\n");
    let batch = api.create(&api.upload(input).await).await;
    let failed = api.wait_status(batch["id"].as_str().unwrap(), "failed").await;
    let codes: Vec<(&str, u64)> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(codes, [("invalid_json_line", 2), ("duplicate_custom_id", 3)]);
    assert_eq!(failed["request_counts"]["total"], 0);

    let file = api.upload(line("a", "m")).await;
    let bad = |endpoint: &str, window: &str| json!({"input_file_id": file["id"], "endpoint": endpoint, "completion_window": window});
    let (status, body) = api.post("/v1/batches", bad("/v1/images", "24h")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(api.post("/v1/batches", bad("/v1/chat/completions", "1h")).await.0, 400);
    let missing = json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    assert_eq!(api.post("/v1/batches", missing).await.0, 404);
    let form = reqwest::multipart::Form::new().text("purpose", "fine-tune").text("file", "x");
    let resp = reqwest::Client::new().post(w.url("/v1/files")).bearer_auth(KEY).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("purpose"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_sending_lines_and_keeps_what_finished() {
    let up = Upstream::start_with(&["--answer-delay-ms", "300"]);
    let w = Warden::start(&config(up.1, "batch_concurrency = 2"));
    let api = Api { w: &w, key: KEY };
    let input: Vec<String> = (0..10).map(|i| line(&format!("r{i}"), "m")).collect();
    let batch = api.create(&api.upload(input.join("\n")).await).await;
    let id = batch["id"].as_str().unwrap();
    let b = fetch_until(
        Duration::from_secs(20),
        || api.batch(id),
        |b| b["request_counts"]["completed"].as_u64() >= Some(1),
    )
    .await;
    assert_eq!(b["status"], "in_progress", "{b}");
    let (status, cancelling) = api.post(&format!("/v1/batches/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(cancelling["status"], "cancelling");
    let done = api.wait_status(id, "cancelled").await;
    let (output, errors) = (api.lines(&done["output_file_id"]).await, api.lines(&done["error_file_id"]).await);
    let counts = &done["request_counts"];
    assert_eq!(counts["completed"], output.len());
    assert!(!output.is_empty() && output.len() < 10, "{done}");
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_cancelled"), "{errors:?}");
    assert!(output.len() + errors.len() < 10, "lines not yet sent are not run: {done}");
    let sent: u64 =
        reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json::<Value>().await.unwrap()
            ["completions"]
            .as_u64()
            .unwrap();
    assert!(sent <= (output.len() + errors.len()) as u64, "the upstream got {sent} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_resumes_after_a_crash_and_no_line_runs_twice() {
    let up = Upstream::start_with(&["--answer-delay-ms", "200"]);
    let mut w = Warden::start(&config(up.1, "batch_concurrency = 1"));
    let n = 12;
    let input: Vec<String> = (0..n).map(|i| line(&format!("r{i}"), "m")).collect();
    let id = {
        let api = Api { w: &w, key: KEY };
        let batch = api.create(&api.upload(input.join("\n")).await).await;
        let id = batch["id"].as_str().unwrap().to_string();
        let b = fetch_until(
            Duration::from_secs(20),
            || api.batch(&id),
            |b| b["request_counts"]["completed"].as_u64() >= Some(2),
        )
        .await;
        assert_eq!(b["status"], "in_progress", "{b}");
        assert!(b["request_counts"]["completed"].as_u64().unwrap() <= 6, "the kill comes early: {b}");
        id
    };
    w.crash_and_restart();
    let api = Api { w: &w, key: KEY };
    let done = api.wait_status(&id, "completed").await;
    let (output, errors) = (api.lines(&done["output_file_id"]).await, api.lines(&done["error_file_id"]).await);
    let mut all = ids(&output);
    all.extend(ids(&errors));
    all.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    want.sort();
    assert_eq!(all, want, "every line is reported exactly once");
    assert!(errors.len() <= 1, "only the line in flight at the crash: {errors:?}");
    assert!(errors.iter().all(|e| e["error"]["code"] == "interrupted"), "{errors:?}");
    assert_eq!(done["request_counts"], json!({"total": n, "completed": output.len(), "failed": errors.len()}));
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json().await.unwrap();
    let sent = stats["completions"].as_u64().unwrap() as usize;
    assert!(
        (output.len()..=output.len() + errors.len()).contains(&sent),
        "the upstream got {sent} requests for {} answered lines: none was sent twice",
        output.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs WARDEN_TEST_PYTHON with the openai client (scripts/test provides it)"]
async fn the_official_openai_client_runs_a_batch() {
    let python = std::env::var("WARDEN_TEST_PYTHON").expect("WARDEN_TEST_PYTHON");
    let up = Upstream::start();
    let w = Warden::start(&config(up.1, ""));
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/batch_client.py");
    let out = std::process::Command::new(python).arg(script).arg(&w.base).arg(KEY).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("batch completed: 2 answers"));
}
