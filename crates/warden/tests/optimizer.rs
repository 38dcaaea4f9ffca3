//! End to end: the optimizer's downgrades (`[optimizer]`: batch work and a client near its
//! budget go one rung down the `smaller` ladder, never `immediate` requests) and the savings
//! it reports (`/api/optimize/stats/{client}`, `warden savings`), which add up to the ledger.

mod common;

use common::*;
use serde_json::{json, Value};

fn config() -> String {
    base("[cache]\nenabled = true\n\n[optimizer]\ndowngrade_classes = [\"batch\"]\ndowngrade_over_budget = 0.8\n")
}

/// Clients, two rungs and their prices, after `head`.
fn base(head: &str) -> String {
    format!(
        r#"
{head}

[clients.acme]
key_sha256 = "{acme}"
tier = "enterprise"
monthly_budget_usd = 10

[services.big]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--tokens", "4"]
models = ["big"]

[services.small]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--tokens", "4"]
models = ["small"]

[models.big]
smaller = "small"
price = {{ input_per_1k = 0.0, output_per_1k = 1000.0 }}

[models.small]
price = {{ input_per_1k = 0.0, output_per_1k = 100.0 }}
"#,
        acme = hex(warden::config::sha256(b"acme-key"))
    )
}

/// (x-warden-model, x-warden-optimized)
async fn ask(w: &Warden, priority: Option<&str>, extra: Value) -> (String, Option<String>) {
    let mut body = json!({"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let mut req = reqwest::Client::new().post(w.url("/v1/chat/completions")).bearer_auth("acme-key").json(&body);
    if let Some(p) = priority {
        req = req.header("x-warden-priority", p);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |n: &str| resp.headers().get(n).map(|v| String::from_utf8(v.as_bytes().to_vec()).unwrap());
    (header("x-warden-model").unwrap(), header("x-warden-optimized"))
}

async fn api(w: &Warden, path: &str) -> Value {
    let resp = reqwest::Client::new().get(w.url(path)).bearer_auth("acme-key").send().await.unwrap();
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_work_and_a_client_near_its_budget_go_one_rung_down_and_the_savings_add_up() {
    let w = Warden::start_with_server(&config(), "admin_token = \"tok\"");
    // Batch work goes one rung down; an immediate request never does; a normal one stays.
    let (model, optimized) = ask(&w, Some("batch"), json!({})).await;
    assert_eq!(model, "small");
    assert_eq!(optimized.as_deref(), Some("downgrade big→small (batch class)"));
    assert_eq!(ask(&w, Some("immediate"), json!({})).await, ("big".to_string(), None));
    assert_eq!(ask(&w, None, json!({})).await, ("big".to_string(), None));
    // Two answers from big ($4 each) and one from small ($0.40): past 80 % of $10, so the next
    // normal request goes down too.
    let (model, optimized) = ask(&w, None, json!({})).await;
    assert_eq!(model, "small");
    assert_eq!(optimized.as_deref(), Some("downgrade big→small (client past 80 % of its budget)"));
    // ... but an immediate one still does not.
    assert_eq!(ask(&w, Some("immediate"), json!({"max_tokens": 1})).await.0, "big");

    // What the optimizer would do, before and after the answer is cached.
    let analyze = |w: &Warden| {
        let body =
            json!({"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0});
        let req = reqwest::Client::new().post(w.url("/api/optimize/analyze?priority=batch")).bearer_auth("acme-key");
        async move { req.json(&body).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let before = analyze(&w).await;
    let applies = |a: &Value, name: &str| {
        a["strategies"].as_array().unwrap().iter().any(|s| s["name"] == name && s["applies"] == true)
    };
    assert!(applies(&before, "downgrade") && !applies(&before, "cache"), "{before}");
    assert_eq!(
        (before["cost_without_micros"].as_i64(), before["cost_with_micros"].as_i64()),
        (Some(2_000_000), Some(200_000)),
        "{before}"
    );

    // A cache hit (temperature 0, asked twice) on the small rung.
    let det = json!({"temperature": 0, "max_tokens": 2});
    ask(&w, Some("batch"), det.clone()).await;
    ask(&w, Some("batch"), det).await;
    let after = analyze(&w).await;
    assert!(applies(&after, "cache"), "{after}");
    assert_eq!(after["cost_with_micros"], 0, "{after}");

    let stats = api(&w, "/api/optimize/stats/acme").await;
    // Each downgrade saved the big model's price less the small one's on 4 (or 2) tokens.
    assert_eq!(stats["downgrade"]["requests"], 3, "{stats}");
    assert_eq!(stats["downgrade"]["saved_micros"], 2 * 3_600_000 + 1_800_000, "{stats}");
    assert_eq!(stats["cache"]["answers"], 1, "{stats}");
    assert_eq!(stats["cache"]["saved_micros"], 200_000, "the hit saved the small rung's price: {stats}");
    let total = stats["total_saved_micros"].as_i64().unwrap();
    assert_eq!(total, 2 * 3_600_000 + 1_800_000 + 200_000);
    // They add up to the ledger: the usage rows' savings.
    let usage = api(&w, "/api/usage/acme").await;
    let rows: i64 = usage["recent"].as_array().unwrap().iter().map(|r| r["saved_micros"].as_i64().unwrap()).sum();
    assert_eq!(rows, total, "{usage}");
    let downgraded = usage["recent"].as_array().unwrap().iter().filter(|r| r["downgraded_from"] == "big").count();
    assert_eq!(downgraded, 3, "the batch request, the one past 80 %, the first of the cached pair: {usage}");

    let out = std::process::Command::new(warden_bin())
        .args(["--url", &w.base, "--admin-token", "tok", "savings", "acme"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("acme saved $9.2000") && text.contains("downgrades") && text.contains("cache hits"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_come_from_the_client_s_own_history() {
    // No cache, no optimizer: what would they have saved?
    let w = Warden::start(&base("").replace("monthly_budget_usd = 10", "monthly_budget_usd = 100"));
    for _ in 0..3 {
        assert_eq!(ask(&w, None, json!({})).await.0, "big");
    }
    assert_eq!(ask(&w, Some("batch"), json!({"messages": [{"role": "user", "content": "later"}]})).await.0, "big");
    let recs = api(&w, "/api/optimize/recommendations/acme").await;
    let by = |s: &str| recs["recommendations"].as_array().unwrap().iter().find(|r| r["strategy"] == s).cloned();
    let cache = by("cache").expect("repeats were seen");
    // 2 of the 4 requests repeated an earlier one; they cost $4 each.
    assert_eq!(
        (cache["share_repeated"].as_f64(), cache["estimated_saving_micros"].as_i64()),
        (Some(0.5), Some(8_000_000)),
        "{recs}"
    );
    assert!(cache["what"].as_str().unwrap().contains("[cache] enabled = true"), "{recs}");
    let down = by("downgrade").expect("short answers on a model with a smaller rung");
    // 16 tokens on big ($16) would have cost $1.60 on small.
    assert_eq!(
        (down["to"].as_str(), down["estimated_saving_micros"].as_i64()),
        (Some("small"), Some(14_400_000)),
        "{recs}"
    );
    let later = by("off_peak").expect("batch work");
    assert_eq!(later["requests"], 1);
}
