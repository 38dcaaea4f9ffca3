//! Faults a user can run into: a second warden on the same state dir, wrapper scripts and
//! double forks outliving a crashed warden.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn fake_pid(v: &Value) -> u32 {
    v["pid"].as_u64().expect("the fake backend's /stats names its pid") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_warden_on_the_same_state_dir_exits_and_kills_nothing() {
    let w = Warden::start(
        r#"
[services.pinned]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
desired = "on"
"#,
    );
    assert!(w.wait_state("pinned", "running", Duration::from_secs(10)).await);
    let backend = fake_pid(&w.get("/svc/pinned/stats").await);

    // Same config, same state dir (and listen port 0, so the port alone would not stop it).
    let (status, stderr) = w.serve_again(Duration::from_secs(10)).expect("the second warden exits at once");
    assert!(!status.success());
    let expected = format!("is in use by warden pid {}", w.pid());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("left running by a previous warden"), "{stderr}");

    // The first warden's service was not touched.
    assert!(process_alive(backend));
    assert_eq!(fake_pid(&w.get("/svc/pinned/stats").await), backend);
    assert_eq!(w.service("pinned").await["state"], "running");
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_wrapper_started_outlives_a_crashed_warden() {
    // A wrapper script whose server is its child, and one whose server leaves the process
    // group and the session (a double fork with setsid): after kill -9 of warden, the wrappers
    // die (their parent-death signal) but the servers would live on unmanaged.
    let mut w = Warden::start(
        r#"
[services.wrapped]
kind = "process"
command = ["sh", "-c", "FAKE --port ${PORT} & wait"]

[services.escaped]
kind = "process"
command = ["sh", "-c", "setsid FAKE --port ${PORT} & wait"]
"#,
    );
    let wrapped = fake_pid(&w.get("/svc/wrapped/stats").await);
    let escaped = fake_pid(&w.get("/svc/escaped/stats").await);
    assert!(process_alive(wrapped) && process_alive(escaped));

    w.crash_and_restart();
    assert!(wait_until(Duration::from_secs(10), || !process_alive(wrapped)), "{wrapped} outlived warden");
    assert!(
        w.wait_log("Stopped service wrapped's processes left running by a previous warden", Duration::from_secs(5)),
        "{}",
        w.log()
    );
    if running_as_root() {
        assert!(!w.log().contains("No writable cgroup"), "{}", w.log());
        assert!(wait_until(Duration::from_secs(10), || !process_alive(escaped)), "{escaped} outlived warden");
    } else {
        eprintln!("not root: no cgroups, so a server that calls setsid is not tracked");
        unsafe { libc::kill(escaped as i32, libc::SIGKILL) };
    }

    // The restarted warden serves them again, and a plain stop ends every process too.
    let escaped = fake_pid(&w.get("/svc/escaped/stats").await);
    let resp = reqwest::Client::new().post(w.url("/admin/services/escaped/stop")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    if running_as_root() {
        assert!(wait_until(Duration::from_secs(10), || !process_alive(escaped)), "{escaped} outlived its stop");
    } else {
        unsafe { libc::kill(escaped as i32, libc::SIGKILL) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_a_dying_backend_ends_with_an_error_event_and_is_charged_what_was_delivered() {
    // 100 tokens asked for; the backend dies after sending 5 of them.
    let w = Warden::start(
        r#"
[services.cut]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--tokens", "100", "--cut-stream-after", "5"]

[models.cutter]
service = "cut"
price = { input_per_1k = 1.0, output_per_1k = 2.0 }
"#,
    );
    let body = serde_json::json!({"model": "cutter", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "count to a hundred"}]});
    let resp = reqwest::Client::new()
        .post(w.url("/v1/chat/completions"))
        .header("x-request-id", "cut-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The body ends cleanly (no transport error) ...
    let text = resp.text().await.expect("a cut stream still ends as a whole chunked body");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.iter().filter(|e| e.contains("\"content\"")).count(), 5, "{text}");
    // ... with a last event an OpenAI client reads as an error.
    let last: Value = serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "backend_error", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("service cut failed mid-request"), "{last}");

    // Charged for its prompt and the 5 tokens delivered, marked estimated: not its whole
    // reservation of 100 output tokens.
    let cost =
        fetch_until(Duration::from_secs(5), || w.get("/api/cost/cut-1"), |c| c["completion_tokens"].is_u64()).await;
    assert_eq!(cost["completion_tokens"], 5, "{cost}");
    assert_eq!(cost["estimated"], true, "{cost}");
    let prompt = cost["prompt_tokens"].as_i64().unwrap();
    assert!(prompt > 0, "{cost}");
    assert_eq!(cost["cost_micros"].as_i64().unwrap(), prompt * 1000 + 5 * 2000, "{cost}");
}

/// Waits (bounded) until the server closes `conn`: a read returns end of file or an error.
async fn closed_by_server(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_timed_out() {
    use tokio::io::AsyncWriteExt;
    let w = Warden::start_with_server("", "header_timeout = \"1s\"");
    // 300 clients that send half a request header and then nothing.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut conn = tokio::net::TcpStream::connect(w.base.trim_start_matches("http://")).await.unwrap();
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: warden\r\n").await.unwrap();
        slow.push(conn);
    }
    // Others are served meanwhile.
    assert_eq!(reqwest::get(w.url("/health")).await.unwrap().status(), 200);
    for (i, conn) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(conn, Duration::from_secs(15)).await, "half-sent request {i} still open");
    }
    // An idle keep-alive connection is closed too.
    let mut idle = tokio::net::TcpStream::connect(w.base.trim_start_matches("http://")).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: warden\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut idle, &mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut idle, Duration::from_secs(15)).await, "idle keep-alive still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_a_clear_503() {
    let w = Warden::start_with_server("", "max_connections = 3");
    let addr = w.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The three are accepted in order; the next connection is over the cap.
    let over = fetch_until(
        Duration::from_secs(5),
        || async {
            let resp = reqwest::Client::new().get(w.url("/health")).send().await.unwrap();
            let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            serde_json::json!({"status": resp.status().as_u16(), "retry": retry, "body": resp.json::<Value>().await.unwrap()})
        },
        |v| v["status"] == 503,
    )
    .await;
    assert_eq!(over["status"], 503, "{over}");
    assert_eq!(over["retry"], "1", "{over}");
    assert_eq!(over["body"]["error"]["code"], "too_many_connections", "{over}");
    assert!(over["body"]["error"]["message"].as_str().unwrap().contains("max_connections"), "{over}");
    // Once they go, new clients are served again.
    drop(held);
    let ok = fetch_until(
        Duration::from_secs(5),
        || async { serde_json::json!(reqwest::get(w.url("/health")).await.unwrap().status().as_u16()) },
        |s| s == 200,
    )
    .await;
    assert_eq!(ok, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_work_are_refused_at_once_and_say_why() {
    let w = Warden::start(
        r#"
[services.fake]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["m"]

[services.missing]
kind = "process"
command = ["no-such-program-warden-test", "--port", "${PORT}"]
models = ["gone"]
"#,
    );
    let client = reqwest::Client::new();
    // Deferred with no off-peak window could never run: 400 now, not 503 after queue_timeout.
    let t0 = std::time::Instant::now();
    let resp = client
        .post(w.url("/v1/chat/completions"))
        .header("x-warden-priority", "deferred")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(t0.elapsed() < Duration::from_secs(5));
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("off_peak"), "{body}");

    // A body nested 100,000 levels deep never reaches the backend.
    let before = w.get("/svc/fake/stats").await["requests"].as_u64().unwrap();
    let deep = format!("{{\"model\":\"m\",\"messages\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = client
        .post(w.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("nests deeper than 128"), "{body}");
    let after = w.get("/svc/fake/stats").await["requests"].as_u64().unwrap();
    assert_eq!(after, before, "the backend counted no request (its /stats does not count itself)");

    // A program that does not exist: a permanent failure, not "retry in 1 s".
    for _ in 0..2 {
        let resp = client.post(w.url("/v1/chat/completions")).json(&chat("gone")).send().await.unwrap();
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().get("retry-after").is_none(), "{:?}", resp.headers());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "service_cannot_start", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("no such program") && msg.contains("will not pass by retrying"), "{msg}");
    }
}

#[test]
fn config_check_warns_about_programs_it_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.toml");
    std::fs::write(
        &path,
        "[services.gone]\nkind = \"process\"\ncommand = [\"no-such-program-warden-test\"]\n\n\
         [services.here]\nkind = \"process\"\ncommand = [\"sh\", \"-c\", \"true\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(warden_bin()).args(["config", "check"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: services.gone.command: program \"no-such-program-warden-test\" is not on PATH"),
        "{text}"
    );
    assert!(!text.contains("services.here"), "{text}");
    assert!(text.trim_end().ends_with("), 1 warning"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_find_what_they_expect() {
    let w = Warden::start_with_server(
        "[services.fake]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\"]\nmodels = [\"m\", \"org/m2\"]\n",
        "admin_token = \"tok\"",
    );
    let client = reqwest::Client::new();
    // models.retrieve, ids with a slash too; every model object has `created`.
    for id in ["m", "org/m2"] {
        let resp = client.get(w.url(&format!("/v1/models/{id}"))).bearer_auth("tok").send().await.unwrap();
        assert_eq!(resp.status(), 200, "{id}");
        let model: Value = resp.json().await.unwrap();
        assert_eq!((model["id"].as_str(), model["object"].as_str()), (Some(id), Some("model")));
        assert!(model["created"].as_u64().unwrap() > 1_700_000_000, "{model}");
    }
    let list: Value = client.get(w.url("/v1/models")).bearer_auth("tok").send().await.unwrap().json().await.unwrap();
    assert!(list["data"].as_array().unwrap().iter().all(|m| m["created"].is_u64()), "{list}");
    let resp = client.get(w.url("/v1/models/nope")).bearer_auth("tok").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");

    // 405, 414 and 431 in the JSON error shape.
    let resp = client.delete(w.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "method_not_allowed");
    let resp = client.get(w.url(&format!("/v1/models?{}", "x".repeat(20_000)))).send().await.unwrap();
    assert_eq!(resp.status(), 414);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "uri_too_long");
    let resp = client.get(w.url("/v1/models")).header("x-big", "y".repeat(100_000)).send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "headers_too_large");
    // A query string that does not fit: 400 in the same shape, naming the parameter.
    let resp = client.get(w.url("/admin/requests?limit=-1")).bearer_auth("tok").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"), "{body}");
    // And a path whose name is not UTF-8.
    let resp = client.get(w.url("/admin/plan/%FF")).bearer_auth("tok").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("UTF-8"), "{body}");

    // The bearer scheme is case-insensitive.
    let resp = client.get(w.url("/admin/services")).header("authorization", "bearer tok").send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_released_by_a_cold_start_is_paced_to_a_small_backend() {
    // Python's accept backlog (5), a slow acceptor, a cold start: 600 requests arrive while it
    // starts. Sent all at once, most connection attempts would sit in SYN retransmits.
    let w = Warden::start(
        r#"
[services.small]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--backlog", "5", "--accept-delay-ms", "5", "--startup-delay-ms", "300", "--tokens-per-sec", "200"]
models = ["m"]
"#,
    );
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let sends = (0..600).map(|_| client.post(w.url("/v1/chat/completions")).json(&chat("m")).send());
    let answers = futures_util::future::join_all(sends).await;
    let ok = answers.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200)).count();
    assert_eq!(ok, 600, "{:?}", answers.iter().find(|r| r.as_ref().map_or(true, |r| r.status() != 200)));
    // Never more than the default concurrency at the backend at once; the rest waited in
    // warden's queue.
    let stats = w.get("/svc/small/stats").await;
    let most = stats["max_in_flight"].as_u64().unwrap();
    assert!((1..=32).contains(&most), "{stats}");
    assert_eq!(w.service("small").await["max_concurrent"], 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_says_its_slot_count_is_paced_to_it() {
    // Like llama-server: `GET /props` says it serves 3 at once.
    let w = Warden::start(
        "[services.slotted]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\", \"--slots\", \"3\", \"--tokens-per-sec\", \"100\"]\nmodels = [\"m\"]\n",
    );
    assert_eq!(w.post("/v1/chat/completions", chat("m")).await.status(), 200);
    let learned = fetch_until(Duration::from_secs(5), || w.service("slotted"), |s| s["max_concurrent"] == 3).await;
    assert_eq!(learned["max_concurrent"], 3, "{learned}");
    let sends = (0..30).map(|_| reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&chat("m")).send());
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    let most = w.get("/svc/slotted/stats").await["max_in_flight"].as_u64().unwrap();
    assert!((1..=3).contains(&most), "{most} at once");
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // After the name: state(0) … utime(11) stime(12), in clock ticks (100 a second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_costs_no_cpu_while_it_waits() {
    // One at a time, 2 s each: the second request waits about 2 s in warden's queue.
    let w = Warden::start(
        "[services.slow]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${PORT}\", \"--tokens-per-sec\", \"4\"]\nmodels = [\"m\"]\nmax_concurrent = 1\n",
    );
    assert_eq!(w.post("/v1/chat/completions", chat("m")).await.status(), 200);
    let first = tokio::spawn(reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&chat("m")).send());
    let queued = fetch_until(Duration::from_secs(5), || w.get("/api/queue/status"), |q| q["running"] == 1).await;
    assert_eq!(queued["running"], 1);
    let second = tokio::spawn(reqwest::Client::new().post(w.url("/v1/chat/completions")).json(&chat("m")).send());
    assert!(eventually(Duration::from_secs(5), || async { w.get("/api/queue/status").await["queued"] == 1 }).await);
    let (cpu0, t0) = (cpu_time(w.pid()), std::time::Instant::now());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (used, wall) = (cpu_time(w.pid()) - cpu0, t0.elapsed());
    assert_eq!(w.get("/api/queue/status").await["queued"], 1, "still waiting: the window measured a wait");
    // A spinning wait would burn a whole core (about `wall`); waiting costs next to nothing.
    assert!(used < wall / 4, "warden used {used:?} of CPU in {wall:?} while a request waited");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
}
