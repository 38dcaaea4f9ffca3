//! Replicas: several wardens share one client's budget, the pools and concurrency limits
//! through a real `redis-server` (`[state].shared`), exactly; a dead replica's holds expire;
//! Redis restarts and outages neither reset spend nor admit on a guess.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret";

/// acme's budget holds exactly `reservations` requests of max_tokens = 8 (the fake upstream
/// answers 8 completion tokens; at $1 per 1k output tokens each reserves and costs $0.008).
fn config(redis: &str, upstream: u16, reservations: u32, extra: &str) -> String {
    format!(
        r#"
[state]
shared = "{redis}"
hold_ttl = "2s"

[clients.acme]
key_sha256 = "{acme}"
monthly_budget_usd = {budget}
models = ["*"]
tier = "team"

[tiers.team]
{extra}

[services.openai]
kind = "remote"
url = "http://127.0.0.1:{upstream}"
models = ["gpt-4"]

[models."gpt-4"]
service = "openai"
price = {{ input_per_1k = 0.0, output_per_1k = 1.0 }}
"#,
        acme = hex(warden::config::sha256(b"acme-key")),
        budget = f64::from(reservations) * 0.008,
    )
}

fn replicas(n: usize, text: &str) -> Vec<Warden> {
    (0..n).map(|_| Warden::start_with_server(text, &format!("admin_token = \"{ADMIN}\""))).collect()
}

fn ask(max_tokens: u64) -> Value {
    json!({"model": "gpt-4", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]})
}

async fn chat(w: &Warden, max_tokens: u64) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(w.url("/v1/chat/completions"))
        .bearer_auth("acme-key")
        .json(&ask(max_tokens))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// (spent, reserved) micro-dollars of acme, as a replica reads them from Redis.
async fn standing(w: &Warden) -> (i64, i64) {
    let v: Value = reqwest::Client::new()
        .get(w.url("/api/usage/acme/current"))
        .bearer_auth("acme-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (v["spent_micros"].as_i64().unwrap(), v["reserved_micros"].as_i64().unwrap())
}

/// Requests spread round-robin over the replicas, all at once.
async fn burst(ws: &[Warden], n: usize, max_tokens: u64) -> Vec<(u16, Value)> {
    let calls = (0..n).map(|i| chat(&ws[i % ws.len()], max_tokens));
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn three_replicas_spend_one_budget_exactly() {
    let redis = Redis::start(false);
    let up = Upstream::start();
    let ws = replicas(3, &config(&redis.url(), up.1, 30, ""));
    let answers = burst(&ws, 300, 8).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 402).map(|(_, b)| b).collect();
    // Each replica alone would let 30 in (90 together).
    assert_eq!((ok, refused.len()), (30, 270), "{:?}", answers.iter().find(|(s, _)| *s != 200 && *s != 402));
    assert_eq!(refused[0]["error"]["code"], "budget_exceeded");
    // Spend to the micro-dollar, the same seen from every replica.
    for w in &ws {
        assert!(eventually(Duration::from_secs(10), || async { standing(w).await == (240_000, 0) }).await);
    }
    // Each replica's ledger holds its own share; together, all 30.
    let mut rows = 0;
    for w in &ws {
        let usage = w.get("/api/usage/acme").await;
        rows += usage["requests"].as_u64().unwrap();
    }
    assert_eq!(rows, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn a_shared_pool_grants_its_units_once_across_replicas() {
    let redis = Redis::start(false);
    let up = Upstream::start();
    // 100 requests a refill; the refill is too slow to add a whole unit during the test.
    let text = config(&redis.url(), up.1, 1000, "").replace(
        "output_per_1k = 1.0 }",
        "output_per_1k = 1.0 }\npools = [\"shared-api\"]\n\n[pools.shared-api]\nunit = \"requests\"\ncapacity = 100\nrefill_per_sec = 0.001\n\n[scheduler]\nqueue_timeout = \"2s\"",
    );
    let ws = replicas(3, &text);
    let answers = burst(&ws, 150, 8).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let waited_out = answers.iter().filter(|(s, b)| *s == 503 && b["error"]["code"] == "queue_timeout").count();
    // Each replica alone would grant 100 (300 together).
    assert_eq!((ok, waited_out), (100, 50), "{:?}", answers.iter().find(|(s, _)| *s != 200 && *s != 503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn a_clients_max_concurrent_holds_across_replicas() {
    let redis = Redis::start(false);
    let up = Upstream::start_with(&["--answer-delay-ms", "300"]);
    let ws = replicas(3, &config(&redis.url(), up.1, 1000, "max_concurrent = 5"));
    let answers = burst(&ws, 30, 8).await;
    // Those over the limit waited for a slot freed on any replica, and all ran.
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json().await.unwrap();
    let most = stats["max_in_flight"].as_u64().unwrap();
    // Each replica alone would let 5 run (15 together).
    assert!((1..=5).contains(&most), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn a_killed_replicas_holds_expire_and_a_live_ones_are_kept() {
    let redis = Redis::start(false);
    let up = Upstream::start_with(&["--answer-delay-ms", "6000"]);
    let mut ws = replicas(2, &config(&redis.url(), up.1, 30, ""));
    // A request on each: both hold $0.008.
    let (a, b) = (ws[0].url("/v1/chat/completions"), ws[1].url("/v1/chat/completions"));
    let send = |url: String| {
        tokio::spawn(async move {
            reqwest::Client::new().post(url).bearer_auth("acme-key").json(&ask(8)).send().await.map(|r| r.status())
        })
    };
    let (on_a, on_b) = (send(a), send(b));
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[1]).await == (0, 16_000) }).await);
    ws[0].kill();
    let _ = on_a.await;
    // The dead replica's hold goes after the TTL (2 s); the live one's stream outlives the
    // TTL and keeps its hold (refreshed) until it ends.
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[1]).await == (0, 8_000) }).await);
    assert_eq!(on_b.await.unwrap().unwrap(), 200);
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[1]).await == (8_000, 0) }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn redis_restarts_keep_spend_and_an_outage_refuses_until_it_is_back() {
    let mut redis = Redis::start(true);
    let up = Upstream::start();
    let ws = replicas(2, &config(&redis.url(), up.1, 30, ""));
    let first = chat(&ws[0], 8).await;
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(chat(&ws[1], 8).await.0, 200);
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[0]).await == (16_000, 0) }).await);

    // With AOF, a restart keeps the spend.
    redis.restart();
    assert!(eventually(Duration::from_secs(10), || async { standing(&ws[1]).await == (16_000, 0) }).await);

    // Stopped: nothing is admitted on a guess.
    redis.stop();
    let (status, body) = chat(&ws[0], 8).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("shared_state_unavailable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("redis.sock"), "{body}");
    let alerts = ws[0].get("/admin/alerts").await;
    assert!(alerts["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "shared_state_unavailable"), "{alerts}");

    // Back, but empty (its files gone): each replica puts its share back from its ledger, and
    // admission resumes without a warden restart.
    for f in std::fs::read_dir(redis.dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.is_dir() {
            std::fs::remove_dir_all(f).unwrap()
        } else {
            std::fs::remove_file(f).unwrap()
        }
    }
    redis.restart();
    assert!(eventually(Duration::from_secs(10), || async { chat(&ws[0], 8).await.0 == 200 }).await);
    assert_eq!(chat(&ws[1], 8).await.0, 200);
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[0]).await == (32_000, 0) }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn an_answer_cached_by_one_replica_is_a_hit_on_another() {
    let redis = Redis::start(false);
    let up = Upstream::start();
    let text = config(&redis.url(), up.1, 1000, "").replace("[state]", "[cache]\nenabled = true\n\n[state]");
    let ws = replicas(2, &text);
    let body = json!({"model": "gpt-4", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "the same question"}]});
    let send = |w: &Warden, who: &'static str| {
        reqwest::Client::new().post(w.url("/v1/chat/completions")).bearer_auth(who).json(&body).send()
    };
    let first = send(&ws[0], "acme-key").await.unwrap();
    assert_eq!(first.headers()["x-warden-cache"], "miss");
    let answer: Value = first.json().await.unwrap();
    // The answer reaches Redis after the client has it (the writer task sends it).
    assert!(wait_until(Duration::from_secs(5), || redis.keys("warden:cache:*").len() == 1));
    let second = send(&ws[1], "acme-key").await.unwrap();
    assert_eq!(second.headers()["x-warden-cache"], "hit");
    assert_eq!(second.json::<Value>().await.unwrap(), answer);
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{}/stats", up.1)).await.unwrap().json().await.unwrap();
    assert_eq!(stats["completions"], 1, "{stats}");
    // A hit costs nothing: the only spend is the first answer's.
    assert!(eventually(Duration::from_secs(5), || async { standing(&ws[1]).await == (8_000, 0) }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn on_unavailable_local_admits_by_the_replicas_own_counts_and_says_so() {
    let mut redis = Redis::start(false);
    let up = Upstream::start();
    let text = config(&redis.url(), up.1, 2, "").replace("hold_ttl = \"2s\"", "on_unavailable = \"local\"");
    let ws = replicas(1, &text);
    redis.stop();
    // Redis away: this replica's own books decide (its budget of two still holds).
    assert_eq!(chat(&ws[0], 8).await.0, 200);
    assert_eq!(chat(&ws[0], 8).await.0, 200);
    let (status, body) = chat(&ws[0], 8).await;
    assert_eq!((status, body["error"]["code"].as_str()), (402, Some("budget_exceeded")), "{body}");
    let alerts = ws[0].get("/admin/alerts").await;
    let alert = alerts["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "shared_state_unavailable").cloned();
    let message = alert.map(|a| a["message"].as_str().unwrap_or_default().to_string()).unwrap_or_default();
    assert!(message.contains("this replica's own counts"), "{alerts}");
    assert!(ws[0].wait_log("is unreachable", Duration::from_secs(5)));
}

/// The writer task retries a settle whose answer it did not get: the same settle twice must
/// charge once and free once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (scripts/test installs it)"]
async fn a_settle_sent_twice_charges_once() {
    use warden::shared::{Ask, PoolTake, Shared};
    let redis = Redis::start(false);
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(warden::account::store::Store::open(&dir.path().join("warden.db")).unwrap());
    let state = warden::config::StateConfig {
        shared: Some(redis.url()),
        key_prefix: "t:".into(),
        hold_ttl: Duration::from_secs(30),
        ..Default::default()
    };
    let shared = Shared::open(&state, dir.path(), store).unwrap().unwrap();
    let pool = PoolTake { pool: 0, bucket: "p".into(), capacity: 100, refill_per_sec: 0.0, units: 40 };
    let ask = |id: &'static str| Ask {
        request_id: id,
        client: "acme",
        month: 1,
        reserve: 500,
        budget: Some(1_000),
        concurrency: vec![("client:acme".into(), 1)],
        pools: vec![pool.clone()],
    };
    let deadline = || std::time::Instant::now() + Duration::from_millis(100);
    let held = shared.admit(&ask("r1"), deadline()).await.ok().unwrap();
    // The one slot is taken: a second request waits out its deadline.
    assert!(shared.admit(&ask("r2"), deadline()).await.is_err());
    for _ in 0..2 {
        shared.settle_now(&held, 300, &[10]).await.unwrap();
    }
    assert_eq!(shared.standing("acme", 1).await.unwrap(), (300, 0));
    // The slot is free again, and the pool got its 10 units back once: 100 - 40 + 10 = 70
    // left, so a take of 40 fits once more and then not again.
    let again = shared.admit(&ask("r3"), deadline()).await.ok().unwrap();
    shared.settle_now(&again, 0, &[0]).await.unwrap();
    assert!(shared.admit(&ask("r4"), deadline()).await.is_err(), "only 30 units should be left");
}
