//! Under CPU pressure, batch work waits and urgent work runs. On its own in this file: it burns
//! both cores, which would skew any test running beside it.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// Busy loops on every core until dropped.
struct Burner(Vec<Child>);

impl Burner {
    fn start() -> Burner {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Burner((0..cores).map(|_| Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap()).collect())
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The machine's CPU in use over `over`, as a share of all cores (from /proc/stat).
fn cpu_share(over: Duration) -> f64 {
    let times = || {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let ticks: Vec<u64> =
            stat.lines().next().unwrap()[4..].split_whitespace().map(|v| v.parse().unwrap()).collect();
        let total: u64 = ticks.iter().take(8).sum();
        (total - ticks[3] - ticks[4], total)
    };
    let (b0, t0) = times();
    std::thread::sleep(over);
    let (b1, t1) = times();
    (b1 - b0) as f64 / (t1 - t0).max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_waits_while_the_cpu_is_busy_and_runs_once_it_is_not() {
    // The test needs a machine that is calm to begin with: it cannot tell busy from calm on one
    // that something else keeps above the threshold.
    let baseline = cpu_share(Duration::from_millis(1000));
    if baseline > 0.7 {
        eprintln!("the machine is already {:.0} % busy: the deferral cannot be observed here", baseline * 100.0);
        return;
    }
    let w = Warden::start(
        r#"
[pressure]
enabled = true
sample_interval = "200ms"
cpu_defer_at = 0.9

[services.svc]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["m"]
"#,
    );
    assert_eq!(w.post("/v1/chat/completions", chat("m")).await.status(), 200);
    let burner = Burner::start();
    let busy = fetch_until(Duration::from_secs(10), || w.get("/admin/pressure"), |p| p["cpu"]["busy"] == true).await;
    assert_eq!(busy["cpu"]["busy"], true, "{busy}");
    // The dashboard's hour of memory: a point per 10 s, in Unix milliseconds.
    let point = &busy["history"][0]["points"][0];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now.abs_diff(point[0].as_u64().unwrap()) < 60_000, "{}", busy["history"]);
    assert!(point[1].as_u64().unwrap() > 0 && point[2].as_u64().unwrap() >= point[1].as_u64().unwrap());

    let send = |class: &'static str| {
        let url = w.url("/v1/chat/completions");
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("x-warden-priority", class)
                .json(&chat("m"))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), Instant::now())
        })
    };
    let batch = send("batch");
    // An immediate request runs at once while the CPU burns.
    let (status, _) = send("immediate").await.unwrap();
    assert_eq!(status, 200);
    // The batch request is still waiting in the queue.
    let queued =
        fetch_until(Duration::from_secs(5), || w.get("/api/queue/status"), |q| q["by_class"]["batch"] == 1).await;
    assert_eq!(queued["by_class"]["batch"], 1, "{queued}");
    assert!(!batch.is_finished(), "batch ran while the CPU was busy");

    let released = Instant::now();
    drop(burner);
    let calm = fetch_until(Duration::from_secs(20), || w.get("/admin/pressure"), |p| p["cpu"]["busy"] == false).await;
    assert_eq!(calm["cpu"]["busy"], false, "the CPU never read as calm again: {}", calm["cpu"]);
    let (status, at) = tokio::time::timeout(Duration::from_secs(10), batch).await.expect("batch ran").unwrap();
    assert_eq!(status, 200);
    assert!(at > released);
    assert_eq!(w.get("/admin/pressure").await["cpu"]["busy"], false);
    let metrics = reqwest::get(w.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warden_deferred_requests_total 1"), "{metrics}");
}
