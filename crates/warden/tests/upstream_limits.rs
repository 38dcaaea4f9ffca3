//! Hosted APIs announce their rate limits (`x-ratelimit-*`, `retry-after`); the pools in front
//! of them adopt what they say, so requests wait in warden's queue instead of failing upstream.
//! The upstream is the fake backend with a real fixed-window limiter.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A pool that believes in 100 requests at 100/s, in front of an upstream that really allows
/// far fewer.
fn start(upstream: u16) -> Warden {
    Warden::start(&format!(
        r#"
[pools.rpm]
unit = "requests"
capacity = 100
refill_per_sec = 100

[services.hosted]
kind = "remote"
url = "http://127.0.0.1:{upstream}"
models = ["gpt-4"]

[models."gpt-4"]
service = "hosted"
pools = ["rpm"]
"#
    ))
}

async fn ask(w: &Warden) -> reqwest::Response {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    client.post(w.url("/v1/chat/completions")).json(&chat("gpt-4")).send().await.unwrap()
}

async fn upstream_stats(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/stats")).await.unwrap().json().await.unwrap()
}

async fn rpm_pool(w: &Warden) -> Value {
    let view = w.get("/api/resources/availability").await;
    view["pools"].as_array().unwrap().iter().find(|p| p["name"] == "rpm").cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_limits_are_adopted_so_requests_wait_instead_of_failing() {
    // 3 completions per 2 s window.
    let up = Upstream::start_with(&["--ratelimit-requests", "3", "--ratelimit-window-ms", "2000"]);
    let w = start(up.1);
    assert_eq!(ask(&w).await.status(), 200);
    let pool = rpm_pool(&w).await;
    assert_eq!(pool["upstream"]["limit"], 3, "{pool}");
    assert_eq!(pool["upstream"]["remaining"], 2, "{pool}");
    assert!(pool["available"].as_u64().unwrap() <= 2, "corrected down to what the upstream says: {pool}");

    // Eight more at once: the configured pool would let them all through at once and most
    // would fail upstream; the learned window holds them until the upstream resets.
    let many = (0..8).map(|_| ask(&w));
    let statuses: Vec<u16> = futures_util::future::join_all(many).await.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let stats = upstream_stats(up.1).await;
    assert_eq!(stats["refused"], 0, "no request was sent to be refused: {stats}");
    assert_eq!(stats["requests"], 9, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_pauses_the_pool_until_its_reset() {
    // An upstream that says nothing until it refuses; another user of the same key has just
    // spent the whole 4 s window, so warden's first request is refused.
    let up = Upstream::start_with(&["--ratelimit-requests", "2", "--ratelimit-window-ms", "4000", "--ratelimit-quiet"]);
    let direct = reqwest::Client::new();
    for _ in 0..2 {
        let resp =
            direct.post(format!("http://127.0.0.1:{}/v1/chat/completions", up.1)).json(&chat("gpt-4")).send().await;
        assert_eq!(resp.unwrap().status(), 200);
    }
    let w = start(up.1);
    let refused = ask(&w).await;
    assert_eq!(refused.status(), 429, "the upstream's refusal is passed on");
    assert!(refused.headers().contains_key("retry-after"));
    let pool = rpm_pool(&w).await;
    assert!(pool["paused_ms"].as_u64().unwrap() > 0, "{pool}");

    // The next ones wait out the pause in warden's queue, then succeed.
    let after = futures_util::future::join_all((0..2).map(|_| ask(&w))).await;
    assert!(after.iter().all(|r| r.status() == 200), "{:?}", after.iter().map(|r| r.status()).collect::<Vec<_>>());
    let stats = upstream_stats(up.1).await;
    assert_eq!(stats["refused"], 1, "nothing was sent while the pool was paused: {stats}");
}
