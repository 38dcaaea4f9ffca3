//! End to end against real containers through the Docker Engine API, served by Podman
//! (scripts/test installs it, starts `podman system service`, and sets WARDEN_CONTAINER_ENGINE).

mod common;

use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use common::*;
use serde_json::Value;

const IMAGE: &str = "localhost/warden-fake:latest";

fn engine() -> String {
    std::env::var("WARDEN_CONTAINER_ENGINE")
        .expect("WARDEN_CONTAINER_ENGINE is not set: run these tests through scripts/test")
}

/// Builds the image from the fake backend once per test run.
fn image() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fake-image.sh");
        let out = Command::new(script).arg(fake_backend()).output().unwrap();
        assert!(out.status.success(), "image build failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn running(name: &str) -> bool {
    podman(&["inspect", name, "--format", "{{.State.Running}}"]) == "true"
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A container name for this test; the container is removed when this drops.
struct Name(String);

impl Name {
    fn new(test: &str) -> Name {
        let name = format!("warden-test-{test}-{}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        Name(name)
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.0]).output();
    }
}

/// Creates (not starts) a container of the fake image answering on `port`, as docker compose
/// would have; `podman_args` go before the image, `fake_args` to the fake backend.
fn create(name: &str, port: u16, podman_args: &[&str], fake_args: &[&str]) {
    let publish = format!("127.0.0.1:{port}:8000");
    let mut args = vec!["create", "--name", name, "-p", &publish, "-e", "PORT=8000", "-e", "HOST=0.0.0.0"];
    args.extend_from_slice(podman_args);
    args.push(IMAGE);
    args.extend_from_slice(fake_args);
    podman(&args);
}

fn service(name: &str, port: u16, extra: &str) -> String {
    service_on(&engine(), name, port, extra)
}

fn service_on(engine: &str, name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[idle]
check_interval = "100ms"

[services.q]
kind = "container"
container = "{name}"
engine = "{engine}"
url = "http://127.0.0.1:{port}"
health = "/health"
start_timeout = "60s"
stop_timeout = "2s"
idle_timeout = "1500ms"
{extra}
"#
    )
}

/// A second Podman API service, on a loopback TCP port: an engine reached over the network,
/// as another machine's would be. Stopped on drop.
struct TcpEngine(std::process::Child, String);

impl TcpEngine {
    fn start() -> TcpEngine {
        let port = free_port();
        let addr = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(20), || {
            let ping = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/_ping")]).output();
            ping.is_ok_and(|o| o.status.success())
        });
        assert!(up, "podman did not serve {addr}");
        TcpEngine(child, addr)
    }
}

impl Drop for TcpEngine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Podman: run scripts/test"]
async fn a_container_on_an_engine_over_tcp_wakes_sleeps_and_is_measured() {
    image();
    let engine = TcpEngine::start();
    let name = Name::new("tcp");
    let port = free_port();
    create(&name.0, port, &[], &["--rss-mb", "32"]);
    let w = Warden::start(&service_on(&engine.1, &name.0, port, "models = [\"far\"]"));
    assert!(!running(&name.0));

    let resp = w.post("/v1/chat/completions", chat("far")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-warden-cold-start-ms"));
    assert!(running(&name.0));
    let svc = w.service("q").await;
    let rss = svc["rss_bytes"].as_u64().unwrap();
    assert!(rss > 32 << 20 && rss < 64 << 20, "measured through the engine's stats: {svc}");
    // It runs on another machine: none of this machine's memory is planned for it.
    let plan = w.get("/admin/plan/q").await;
    assert_eq!(plan["managed"], false, "{plan}");

    assert!(w.wait_state("q", "stopped", Duration::from_secs(10)).await, "{}", w.log());
    assert!(!running(&name.0), "stopped through the TCP engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Podman: run scripts/test"]
async fn an_existing_container_wakes_sleeps_and_an_outside_stop_is_noticed() {
    image();
    let name = Name::new("existing");
    let port = free_port();
    create(&name.0, port, &[], &["--rss-mb", "32"]);
    let w = Warden::start(&service(&name.0, port, ""));
    assert!(!running(&name.0));

    let resp = reqwest::get(w.url("/svc/q/stats")).await.unwrap();
    let status = resp.status();
    let cold = resp.headers().contains_key("x-warden-cold-start-ms");
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", w.log());
    assert!(cold);
    assert!(running(&name.0));
    let svc = w.service("q").await;
    assert_eq!(svc["kind"], "container");
    // The container holds 32 MiB; its stats (usage less inactive file cache) must show it.
    let rss = svc["rss_bytes"].as_u64().unwrap();
    assert!(rss > 32 << 20 && rss < 64 << 20, "memory from container stats: {svc}");

    // Idle: the container is really stopped.
    assert!(w.wait_state("q", "stopped", Duration::from_secs(10)).await, "{}", w.log());
    assert!(!running(&name.0));
    assert!(w.wait_log("Successfully stopped idle service q", Duration::from_secs(5)), "{}", w.log());

    // Woken again, then stopped behind warden's back: noticed at once.
    assert_eq!(reqwest::get(w.url("/svc/q/health")).await.unwrap().status(), 200);
    podman(&["stop", "-t", "1", &name.0]);
    assert!(w.wait_state("q", "stopped", Duration::from_secs(5)).await, "{}", w.log());
    let svc = w.service("q").await;
    assert!(svc["last_error"].as_str().unwrap().contains("stopped outside warden"), "{svc}");
    // And the next request brings it back.
    assert_eq!(reqwest::get(w.url("/svc/q/health")).await.unwrap().status(), 200);
    assert!(running(&name.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Podman: run scripts/test"]
async fn a_missing_container_is_created_from_its_image() {
    image();
    let name = Name::new("created");
    let port = free_port();
    let extra = format!(
        "image = \"{IMAGE}\"\nports = [\"127.0.0.1:{port}:8000\"]\nenv = {{ PORT = \"8000\", HOST = \"0.0.0.0\" }}\nmodels = [\"boxed\"]\n"
    );
    let w = Warden::start(&service(&name.0, port, &extra));
    // An OpenAI request by model, answered from inside the container.
    let resp = w.post("/v1/chat/completions", chat("boxed")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert!(running(&name.0));
    assert_eq!(podman(&["inspect", &name.0, "--format", "{{.Config.Image}}"]), IMAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Podman: run scripts/test"]
async fn a_container_killed_at_its_memory_limit_is_failed_as_oom() {
    image();
    let name = Name::new("oom");
    let port = free_port();
    create(&name.0, port, &["--memory", "64m"], &[]);
    // The death is reported by the engine's event stream, which a loaded machine delivered after
    // the usual 1.5 s idle timeout once (the service was then stopped as idle, not failed): this
    // test is about the report, so the service does not go idle within it.
    let config = service(&name.0, port, "").replace("idle_timeout = \"1500ms\"", "idle_timeout = \"10m\"");
    assert!(config.contains("idle_timeout = \"10m\""));
    let w = Warden::start(&config);
    assert_eq!(reqwest::get(w.url("/svc/q/health")).await.unwrap().status(), 200);
    let resp = reqwest::Client::new().post(w.url("/svc/q/allocate/256")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(w.wait_state("q", "failed", Duration::from_secs(15)).await, "{}", w.log());
    let err = w.service("q").await["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("OOM-killed"), "{err}");
}
