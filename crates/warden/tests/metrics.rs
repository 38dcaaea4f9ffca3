//! `/metrics` read by the official `prometheus_client` parser (Python): the exposition is valid
//! OpenMetrics, names follow the conventions (`warden_` prefix, base units, `_total` counters),
//! and the histograms (cold start per service; request duration and first byte per model, an
//! unconfigured model as `other`) count what happened.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs WARDEN_TEST_PYTHON with prometheus_client (scripts/test provides it)"]
async fn metrics_parse_with_the_official_parser_and_histograms_count_what_happened() {
    let python = std::env::var("WARDEN_TEST_PYTHON").expect("WARDEN_TEST_PYTHON");
    let w = Warden::start(
        r#"
[services.mm]
kind = "process"
api = "llamacpp-router"
command = ["FAKE", "--port", "${PORT}", "--models", "found"]
models = ["named"]
"#,
    );
    // A cold start, then a configured and a discovered model.
    assert_eq!(w.post("/v1/chat/completions", chat("named")).await.status(), 200);
    let found = || async { w.post("/v1/chat/completions", chat("found")).await.status() == 200 };
    assert!(eventually(Duration::from_secs(5), found).await, "{}", w.log());

    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/metrics_parse.py");
    let out = std::process::Command::new(python).arg(script).arg(&w.base).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, f) in families.as_object().unwrap() {
        assert!(name.starts_with("warden_"), "{name}");
        if f["type"] == "counter" {
            let all_total = f["samples"].as_array().unwrap().iter().all(|s| {
                let n = s["name"].as_str().unwrap();
                n.ends_with("_total") || n.ends_with("_created")
            });
            assert!(all_total, "{name}: {f}");
        }
    }
    let sample = |family: &str, name: &str, labels: &[(&str, &str)]| -> f64 {
        let f = &families[family]["samples"];
        let hit = f.as_array().unwrap().iter().find(|s| {
            s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v) && s["labels"].get("le").is_none()
        });
        hit.unwrap_or_else(|| panic!("{name} {labels:?} in {f}"))["value"].as_f64().unwrap()
    };
    assert_eq!(families["warden_cold_start_seconds"]["type"], "histogram");
    assert_eq!(sample("warden_cold_start_seconds", "warden_cold_start_seconds_count", &[("service", "mm")]), 1.0);
    let duration = "warden_request_duration_seconds";
    assert_eq!(sample(duration, "warden_request_duration_seconds_count", &[("model", "named")]), 1.0);
    assert!(
        sample(duration, "warden_request_duration_seconds_count", &[("model", "other")]) >= 1.0,
        "the discovered model"
    );
    assert!(sample(duration, "warden_request_duration_seconds_sum", &[("model", "named")]) > 0.0);
    let ttfb = "warden_time_to_first_byte_seconds";
    assert_eq!(sample(ttfb, "warden_time_to_first_byte_seconds_count", &[("model", "named")]), 1.0);
    assert_eq!(sample("warden_service_requests", "warden_service_requests_total", &[("service", "mm")]), 2.0);
    assert_eq!(sample("warden_service_state", "warden_service_state", &[("service", "mm"), ("state", "running")]), 1.0);
    // Request metrics label only configured models; everything else is `other`.
    for family in [duration, ttfb] {
        let samples = families[family]["samples"].as_array().unwrap();
        let labels: Vec<&str> = samples.iter().filter_map(|s| s["labels"]["model"].as_str()).collect();
        assert!(labels.iter().all(|m| *m == "named" || *m == "other"), "{family}: {labels:?}");
    }
}
