//! The dashboard (`/ui`) in a real browser: headless Chromium driven through Selenium
//! (tests/dashboard.py) against a running warden with a real (fake-backend) service. A wrong
//! token gets a clear message; a sleeping service is woken by a click and shows running without
//! a reload; a request appears in the activity list; a screenshot is saved.

mod common;

use common::*;

/// A process service that takes `startup_ms` to listen, behind the admin token `token`.
fn start(startup_ms: u32, token: &str) -> Warden {
    let service = format!(
        "[services.llm]\nkind = \"process\"\ncommand = [\"FAKE\", \"--port\", \"${{PORT}}\", \"--startup-delay-ms\", \"{startup_ms}\"]\nmodels = [\"llm\"]\n"
    );
    Warden::start_with_server(&service, &format!("admin_token = \"{token}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs WARDEN_TEST_PYTHON with selenium, and chromium with chromium-driver (scripts/test provides them)"]
async fn the_dashboard_logs_in_wakes_a_service_and_shows_a_request_live() {
    let python = std::env::var("WARDEN_TEST_PYTHON").expect("WARDEN_TEST_PYTHON");
    let w = start(300, "dash-token");
    let page = reqwest::get(w.url("/ui")).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("<title>warden</title>"));

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard.py");
    let out =
        std::process::Command::new(python).arg(script).arg(&w.base).arg("dash-token").arg(&shot).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}\n{}\n{}", String::from_utf8_lossy(&out.stderr), w.log());
    assert!(said.contains("wrong token: That token was refused"), "{said}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    println!("screenshot: {}", shot.display());
}

/// What the page reads besides services and memory: the latest requests (paged, newest
/// first, billed or not), every client's budget and load, and a service's log tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_reads_show_requests_clients_and_logs() {
    let w = start(200, "t");
    for content in ["one", "two", "three"] {
        let body = serde_json::json!({"model": "llm", "messages": [{"role": "user", "content": content}]});
        let resp = reqwest::Client::new()
            .post(w.url("/v1/chat/completions"))
            .bearer_auth("t")
            .header("x-request-id", content)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    let got =
        fetch_until(std::time::Duration::from_secs(5), || w.get("/admin/requests?limit=2"), |v| v["total"] == 3).await;
    let ids: Vec<&str> =
        got["requests"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["three", "two"], "{got}");
    assert_eq!(got["requests"][0]["status"], 200);
    assert_eq!(got["requests"][0]["model"], "llm");
    let older = w.get("/admin/requests?skip=2&limit=2").await;
    assert_eq!(older["requests"][0]["request_id"], "one");
    // The first request waited through the cold start; the warm ones did not.
    assert!(older["requests"][0]["service_wait_ms"].as_u64().unwrap() >= 200, "{older}");
    assert!(got["requests"][0]["service_wait_ms"].as_u64().unwrap() < 200, "{got}");
    let clients = w.get("/admin/clients").await;
    assert_eq!(clients["clients"][0]["name"], "anonymous", "{clients}");
    assert!(clients["clients"][0]["budget"]["spent_usd"].is_number(), "{clients}");
    let logs = w.get("/admin/services/llm/logs?lines=50").await;
    assert!(logs["lines"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("listening")), "{logs}");
    let unauthorized = reqwest::get(w.url("/admin/requests")).await.unwrap();
    assert_eq!(unauthorized.status(), 401);
}
