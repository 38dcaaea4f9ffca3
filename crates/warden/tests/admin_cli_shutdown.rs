//! End to end: the admin API, the CLI against a live daemon, and shutdown.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const TWO_SERVICES: &str = r#"
[idle]
timeout = "60m"
check_interval = "50ms"

[services.alpha]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["a1", "a2"]

[services.beta]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--ignore-sigterm"]
stop_timeout = "300ms"
models = ["b1"]
"#;

fn admin(w: &Warden, method: reqwest::Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
    let req = reqwest::Client::new().request(method, w.url(path));
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_reports_and_changes_state() {
    let w = Warden::start_with_server(TWO_SERVICES, "admin_token = \"s3cret\"");
    let t = Some("s3cret");
    use reqwest::Method;

    for token in [None, Some("wrong")] {
        let resp = admin(&w, Method::GET, "/admin/services", token).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    }
    // The front door itself is open.
    assert_eq!(w.post("/v1/chat/completions", chat("a1")).await.status(), 200);

    let services: Value = admin(&w, Method::GET, "/admin/services", t).send().await.unwrap().json().await.unwrap();
    let alpha = services.as_array().unwrap().iter().find(|s| s["name"] == "alpha").unwrap();
    for key in [
        "name",
        "kind",
        "state",
        "pid",
        "port",
        "models",
        "last_used",
        "in_flight",
        "queued",
        "rss_bytes",
        "last_error",
    ] {
        assert!(alpha.get(key).is_some(), "missing {key}");
    }
    assert_eq!(alpha["state"], "running");
    assert_eq!(alpha["kind"], "process");
    assert_eq!(alpha["models"], json!(["a1", "a2"]));
    assert!(alpha["rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(alpha["last_used"].as_u64().unwrap() > 1_700_000_000);

    let status: Value = admin(&w, Method::GET, "/admin/idle-status", t).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["idle_sleep_enabled"], true);
    assert_eq!(status["idle_timeout_minutes"], 60.0);
    assert_eq!(status["model_keep_alive_hours"], 2.0);
    assert_eq!(status["monitor_task_running"], true);
    let a = &status["services"]["alpha"];
    assert_eq!(a["actual"], "running");
    assert_eq!(a["desired"], "off");
    assert!(a["will_sleep_in_minutes"].as_f64().unwrap() > 59.0);
    assert_eq!(status["services"]["beta"]["actual"], "stopped");
    assert_eq!(status["services"]["beta"]["will_sleep_in_minutes"], Value::Null);

    // Turning idle sleep off for alpha, then the timeout down: alpha stays, beta (once up) sleeps.
    let resp = admin(&w, Method::POST, "/admin/services/alpha/idle-sleep", t)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started: Value =
        admin(&w, Method::POST, "/admin/services/beta/start", t).send().await.unwrap().json().await.unwrap();
    assert_eq!(started["state"], "running");
    let resp = admin(&w, Method::POST, "/admin/settings", t).json(&json!({"idleTimeout": 0.005})).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["idle_timeout_minutes"], 0.005);
    assert!(w.wait_state("beta", "stopped", Duration::from_secs(5)).await);
    assert_eq!(w.service("alpha").await["state"], "running");

    // Bad settings are refused whole: nothing changes.
    for bad in [json!({"idleTimeout": -1}), json!({"idleTimout": 3}), json!({"idleSleepEnabled": "yes"})] {
        let resp = admin(&w, Method::POST, "/admin/settings", t).json(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let resp = admin(&w, Method::POST, "/admin/settings", t).body("{").send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
    let status: Value = admin(&w, Method::GET, "/admin/idle-status", t).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["idle_timeout_minutes"], 0.005);
    let resp = admin(&w, Method::POST, "/admin/settings", t)
        .json(&json!({"idleSleepEnabled": false, "idleCheckInterval": 0.01}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["idle_sleep_enabled"].clone(), body["idle_check_interval_minutes"].clone()),
        (json!(false), json!(0.01))
    );

    // Stop and unload.
    let stopped: Value =
        admin(&w, Method::POST, "/admin/services/alpha/stop", t).send().await.unwrap().json().await.unwrap();
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(w.post("/v1/chat/completions", chat("a2")).await.status(), 200);
    let unloaded: Value =
        admin(&w, Method::POST, "/admin/models/a2/unload", t).send().await.unwrap().json().await.unwrap();
    assert_eq!(unloaded, json!({"model": "a2", "service": "alpha", "unloaded": true}));
    assert_eq!(w.service("alpha").await["state"], "stopped");
    let resp = admin(&w, Method::POST, "/admin/models/zzz/unload", t).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = admin(&w, Method::POST, "/admin/services/zzz/start", t).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

fn cli(w: &Warden, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(warden_bin())
        .args(["--url", &w.base])
        .args(args)
        .env("WARDEN_ADMIN_TOKEN", "tok")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_wake_and_sleep() {
    let slow = "[services.slow]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\", \"--startup-delay-ms\", \"2500\"]\n";
    let w = Warden::start_with_server(&format!("{TWO_SERVICES}\n{slow}"), "admin_token = \"tok\"");
    let (ok, out, err) = cli(&w, &["wake", "alpha"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("alpha is running (pid "), "{out}");
    // A slow start shows its progress while it runs (a line a second when not on a terminal).
    let (ok, out, err) = cli(&w, &["wake", "slow"]);
    assert!(ok, "{err}");
    assert!(err.lines().any(|l| l.starts_with("slow: starting, ")), "{err}");
    assert!(out.starts_with("slow is running (pid ") && out.contains(", after "), "{out}");
    let (ok, out, _) = cli(&w, &["status"]);
    assert!(ok);
    let alpha_line = out.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(alpha_line.contains("running") && alpha_line.contains("MiB") && alpha_line.contains("a1, a2"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("beta") && l.contains("stopped")), "{out}");
    let (ok, out, _) = cli(&w, &["status", "--json"]);
    assert!(ok);
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["idle"]["services"]["alpha"]["actual"], "running");
    let (ok, out, _) = cli(&w, &["sleep", "alpha"]);
    assert!(ok);
    assert_eq!(out.trim(), "alpha is stopped");
    // A service's last lines, its run's start marked by warden.
    let (ok, out, err) = cli(&w, &["logs", "alpha", "-n", "20"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("--- warden: starting ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("fake-backend: listening on")), "{out}");
    assert_eq!(cli(&w, &["logs", "alpha", "-n", "1"]).1.lines().count(), 1);
    let (ok, _, err) = cli(&w, &["logs", "nope"]);
    assert!(!ok && err.contains("404"), "{err}");
    // In open mode the spend asked for without a name is the anonymous client's.
    let (ok, out, err) = cli(&w, &["usage"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("anonymous in "), "{out}");
    let (ok, _, err) = cli(&w, &["wake", "nope"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("known services: alpha, beta, slow"), "{err}");
    // A wrong token is refused.
    let out = Command::new(warden_bin()).args(["--url", &w.base, "--admin-token", "bad", "status"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn config_check_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[services.llama]\nkind = \"process\"\ncommand = [\"x\"]\nstart_timeout = \"5 minutes\"\n")
        .unwrap();
    let out = Command::new(warden_bin()).args(["config", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.llama.start_timeout: invalid duration \"5 minutes\""), "{err}");
    assert!(err.trim_end().ends_with("at line 4"), "{err}");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[services.llama]\nkind = \"process\"\ncommand = [\"x\"]\nmodels = [\"m\"]\n").unwrap();
    let out = Command::new(warden_bin()).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 service, 1 model)"));
    // Named as `serve` takes it, too.
    let out = Command::new(warden_bin()).args(["config", "check", "--config"]).arg(&good).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 service, 1 model)"), "{out:?}");
    let out = Command::new(warden_bin()).args(["config", "check", "-c"]).arg(&bad).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("at line 4"), "{out:?}");
    // serve refuses a bad config the same way, before binding anything.
    let out = Command::new(warden_bin()).args(["serve", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at line 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_stops_every_service_and_leaves_no_process() {
    let mut w = Warden::start(TWO_SERVICES);
    assert_eq!(w.post("/v1/chat/completions", chat("a1")).await.status(), 200);
    assert_eq!(w.post("/v1/chat/completions", chat("b1")).await.status(), 200);
    let pids: Vec<u32> =
        [w.service("alpha").await, w.service("beta").await].iter().map(|s| s["pid"].as_u64().unwrap() as u32).collect();
    assert!(pids.iter().all(|&p| process_alive(p)));
    let status = w.terminate(Duration::from_secs(10)).expect("warden exits within its bounds");
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} outlived warden");
    }
    let log = w.log();
    assert!(log.contains("Received SIGTERM"), "{log}");
    // beta ignores SIGTERM: it took the SIGKILL after its stop_timeout.
    let beta_log = std::fs::read_to_string(w.dir.path().join("state/logs/beta.log")).unwrap();
    assert!(beta_log.contains("sending SIGKILL"), "{beta_log}");
    assert!(log.contains("warden stopped"));
    assert!(std::fs::read_dir(w.dir.path().join("state/run")).unwrap().next().is_none(), "pidfiles cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_stops_the_orphans_of_the_last_run() {
    let w = Warden::start(TWO_SERVICES);
    assert_eq!(w.post("/v1/chat/completions", chat("a1")).await.status(), 200);
    let pid = w.service("alpha").await["pid"].as_u64().unwrap() as u32;
    let state = w.dir.path().join("state");
    assert!(state.join("run/alpha.pid").exists());
    // A warden that died without stopping its services left this pidfile behind. Hand a copy
    // of it (the service is still running) to a fresh warden: it must stop that process group.
    let pidfile = std::fs::read_to_string(state.join("run/alpha.pid")).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("state/run")).unwrap();
    std::fs::write(dir2.path().join("state/run/alpha.pid"), &pidfile).unwrap();
    let config = std::fs::read_to_string(w.dir.path().join("warden.toml")).unwrap();
    std::fs::write(dir2.path().join("warden.toml"), config).unwrap();
    let mut second = Command::new(warden_bin())
        .args(["serve", "--config"])
        .arg(dir2.path().join("warden.toml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (sink, mut stderr) = (err.clone(), second.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)), "orphan {pid} was not stopped");
    // Wait for the report before stopping it: a SIGTERM in between would end it unreported.
    let reported = "Stopped service alpha's processes left running by a previous warden";
    let said = wait_until(Duration::from_secs(5), || err.lock().unwrap().contains(reported));
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let _ = second.wait();
    assert!(said, "{}", err.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_show_what_happened() {
    let w = Warden::start(&format!(
        "{TWO_SERVICES}\n[services.broken]\nkind = \"process\"\ncommand = [\"FAKE\", \"--fail-start\"]\nmodels = [\"x\"]\n"
    ));
    for _ in 0..3 {
        assert_eq!(w.post("/v1/chat/completions", chat("a1")).await.status(), 200);
    }
    assert_eq!(w.post("/v1/chat/completions", chat("x")).await.status(), 503);
    let resp = reqwest::get(w.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    for line in [
        "warden_service_state{service=\"alpha\",state=\"running\"} 1",
        "warden_service_state{service=\"beta\",state=\"stopped\"} 1",
        "warden_service_state{service=\"broken\",state=\"failed\"} 1",
        "warden_service_requests_total{service=\"alpha\"} 3",
        "warden_service_starts_total{service=\"alpha\"} 1",
        "warden_service_start_failures_total{service=\"broken\"} 1",
        "warden_model_loaded{model=\"a1\",service=\"alpha\"} 1",
        "warden_model_loaded{model=\"b1\",service=\"beta\"} 0",
        "warden_offloads_total 0",
        "# TYPE warden_service_requests counter",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    let status = w.get("/status").await;
    assert_eq!(status["status"], "ok");
    assert_eq!(status["services"]["alpha"], "running");
    assert_eq!(status["services"]["broken"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tables_line_up() {
    let w =
        Warden::start_with_server(&format!("{TWO_SERVICES}\n[resources]\nram = \"4GiB\"\n"), "admin_token = \"tok\"");
    let (ok, _, err) = cli(&w, &["wake", "alpha"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&w, &["resources"]);
    assert!(ok, "{err}");
    let header = out.lines().find(|l| l.starts_with("SERVICE")).unwrap_or_else(|| panic!("{out}"));
    let (state_at, priority_end) = (header.find("STATE").unwrap(), header.find("PRIORITY").unwrap() + "PRIORITY".len());
    for (name, state) in [("alpha", "running"), ("beta", "stopped")] {
        let row = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(row.find(state), Some(state_at), "STATE column:\n{out}");
        // PRIORITY is right-aligned: the value ends where the header does (default priority 50).
        assert_eq!(&row[priority_end - 2..priority_end], "50", "PRIORITY column:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_tells_what_happens_and_ends_with_warden() {
    let mut w = Warden::start_with_server(TWO_SERVICES, "admin_token = \"tok\"");
    let resp = reqwest::Client::new().get(w.url("/admin/events")).bearer_auth("tok").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    // Wake alpha, then stop it: the stream tells each state change, as typed JSON events.
    let client = reqwest::Client::new();
    assert_eq!(
        client.post(w.url("/admin/services/alpha/start")).bearer_auth("tok").send().await.unwrap().status(),
        200
    );
    assert_eq!(client.post(w.url("/admin/services/alpha/stop")).bearer_auth("tok").send().await.unwrap().status(), 200);
    let mut text = String::new();
    let want = ["starting", "running", "stopping", "stopped"];
    let got_all = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if want.iter().all(|s| text.contains(&format!("\"state\":\"{s}\""))) {
                return;
            }
        }
    })
    .await;
    assert!(got_all.is_ok(), "{text}");
    let first = text.split("\n\n").find(|e| e.contains("event: service")).expect("a service event");
    let data: Value = serde_json::from_str(first.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!((data["kind"].as_str(), data["service"].as_str()), (Some("service"), Some("alpha")), "{data}");
    assert!(data["at_unix_ms"].as_u64().is_some(), "{data}");
    // An open stream does not hold up the drain: warden stops well within drain_timeout.
    let t0 = std::time::Instant::now();
    let status = w.terminate(Duration::from_secs(20)).expect("warden stops");
    assert!(status.success());
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
}
