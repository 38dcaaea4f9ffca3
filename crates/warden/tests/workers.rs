//! Serving threads (`[server].workers`): connections are spread over them, each serves its
//! requests end to end, and they stop with warden.

mod common;

use std::time::Duration;

use common::*;

/// Voluntary context switches of each of warden's serving threads, by thread name.
fn front_threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        if !name.starts_with("warden-front-") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((name, switches));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_serving_threads_which_stop_with_warden() {
    let mut w = Warden::start_with_server(
        r#"
[services.fake]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["m"]
"#,
        "workers = 3",
    );
    let before = front_threads(w.pid());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["warden-front-0", "warden-front-1", "warden-front-2"]);

    // Six clients, a keep-alive connection each, all open at once: two on every thread. An idle
    // serving thread sleeps without waking; one that serves requests waits on each of them.
    let clients: Vec<reqwest::Client> = (0..6).map(|_| reqwest::Client::new()).collect();
    for round in 0..3 {
        let sent = clients.iter().map(|c| c.post(w.url("/v1/chat/completions")).json(&chat("m")).send());
        for resp in futures_util::future::join_all(sent).await {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
        }
    }
    let after = front_threads(w.pid());
    for ((name, was), (_, now)) in before.iter().zip(&after) {
        assert!(now > was, "{name} served nothing: {before:?} -> {after:?}");
    }

    // SIGTERM: warden drains, stops its service and its serving threads, and exits.
    let backend = w.service("fake").await["pid"].as_u64().expect("a running service has a pid") as u32;
    drop(clients);
    let status = w.terminate(Duration::from_secs(20)).expect("warden exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", w.log());
    assert!(!process_alive(backend), "the service outlived warden");
}
