//! `GET /metrics` (Prometheus text format) and `GET /status`: read-only views of the state
//! the owners publish. Nothing is measured here; memory is the coordinator's last figure.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::app::App;
use policy::class::Class;

const STATES: [&str; 5] = ["stopped", "starting", "running", "stopping", "failed"];

/// Label values are quoted; backslashes, quotes and newlines escaped as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family("warden_service_state", "gauge", "1 for the service's current lifecycle state.");
    family("warden_service_in_flight", "gauge", "Requests holding a lease on the service.");
    family("warden_service_queued", "gauge", "Requests held while the service starts or loads a model.");
    family("warden_service_requests_total", "counter", "Requests that got a lease on the service.");
    family("warden_service_starts_total", "counter", "Successful starts of the service.");
    family("warden_service_start_failures_total", "counter", "Failed starts of the service.");
    family("warden_service_memory_bytes", "gauge", "Last measured footprint of the service.");
    family("warden_model_loaded", "gauge", "1 when the model is loaded.");
    family("warden_offloads_total", "counter", "Services offloaded to make room for another.");
    family("warden_compression_saved_bytes_total", "counter", "Bytes compressing answers to clients saved.");
    family(
        "warden_upstream_compression_saved_bytes_total",
        "counter",
        "Bytes compressing request bodies to services (compress_upstream) saved.",
    );
    family("warden_pressure_level", "gauge", "Memory pressure per device: 0 normal, 1 elevated, 2 critical.");
    family("warden_pressure_degraded", "gauge", "1 while the device's models are served by smaller rungs.");
    family("warden_pressure_switches_total", "counter", "Degrade and upgrade switches of the pressure monitor.");
    family("warden_degraded_requests_total", "counter", "Requests served by a smaller rung than asked for.");
    family("warden_cpu_busy", "gauge", "1 while the CPU is above cpu_defer_at (batch and deferred requests wait).");
    family("warden_fallbacks_total", "counter", "Times a failed model request was tried on its next fallback.");
    family(
        "warden_deferred_requests_total",
        "counter",
        "Batch and deferred requests that arrived while the CPU was busy.",
    );
    let mut lines = String::new();
    for (i, svc) in app.services().iter().enumerate().filter(|(_, s)| !s.shared.retired()) {
        let name = label(svc.name());
        let live = svc.shared.live();
        for state in STATES {
            let on = (live.state.as_str() == state) as u8;
            let _ = writeln!(lines, "warden_service_state{{service=\"{name}\",state=\"{state}\"}} {on}");
        }
        let _ = writeln!(lines, "warden_service_in_flight{{service=\"{name}\"}} {}", live.in_flight);
        let _ = writeln!(lines, "warden_service_queued{{service=\"{name}\"}} {}", live.queued);
        let _ = writeln!(lines, "warden_service_requests_total{{service=\"{name}\"}} {}", live.requests_total);
        let _ = writeln!(lines, "warden_service_starts_total{{service=\"{name}\"}} {}", live.starts_total);
        let _ =
            writeln!(lines, "warden_service_start_failures_total{{service=\"{name}\"}} {}", live.start_failures_total);
        for (m, model) in live.models.iter().enumerate() {
            let loaded = live.model_loaded(m) as u8;
            let _ =
                writeln!(lines, "warden_model_loaded{{model=\"{}\",service=\"{name}\"}} {loaded}", label(&model.name));
        }
        drop(live);
        if let Some(bytes) = app.coordinator.remembered(i) {
            let _ = writeln!(lines, "warden_service_memory_bytes{{service=\"{name}\"}} {bytes}");
        }
    }
    let _ = writeln!(lines, "warden_offloads_total {}", app.coordinator.offloads_total());
    let saved = app.compression_saved.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(lines, "warden_compression_saved_bytes_total {saved}");
    let up = app.upstream_compression_saved.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(lines, "warden_upstream_compression_saved_bytes_total {up}");
    let p = &app.pressure;
    for (device, level, degraded) in p.levels() {
        let device = serde_json::to_value(device).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let _ = writeln!(lines, "warden_pressure_level{{device=\"{device}\"}} {}", level as u8);
        let _ = writeln!(lines, "warden_pressure_degraded{{device=\"{device}\"}} {}", degraded as u8);
    }
    let _ = writeln!(lines, "warden_pressure_switches_total {}", p.switches.load(std::sync::atomic::Ordering::Relaxed));
    let degraded = p.degraded_requests.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(lines, "warden_degraded_requests_total {degraded}");
    let _ = writeln!(lines, "warden_cpu_busy {}", p.cpu_busy() as u8);
    let _ = writeln!(lines, "warden_fallbacks_total {}", p.fallbacks.load(std::sync::atomic::Ordering::Relaxed));
    let _ = writeln!(lines, "warden_deferred_requests_total {}", p.deferred.load(std::sync::atomic::Ordering::Relaxed));
    out.push_str(&lines);
    admission(&app, &mut out, super::auth::is_admin(&app, &headers));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The queue and pools; each client's spend only for the admin (a client sees only its own).
fn admission(app: &App, out: &mut String, admin: bool) {
    let q = app.gate.queue_status();
    let _ = writeln!(out, "# HELP warden_queue_waiting Requests waiting for their turn, by class.");
    let _ = writeln!(out, "# TYPE warden_queue_waiting gauge");
    for class in Class::ALL {
        let _ = writeln!(out, "warden_queue_waiting{{class=\"{}\"}} {}", class.as_str(), q["by_class"][class.as_str()]);
    }
    let _ = writeln!(
        out,
        "# HELP warden_queue_running Requests let in and not yet finished.\n# TYPE warden_queue_running gauge"
    );
    let _ = writeln!(out, "warden_queue_running {}", q["running"]);
    let _ = writeln!(
        out,
        "# HELP warden_pool_available Units left in each pool's shared bucket.\n# TYPE warden_pool_available gauge"
    );
    for p in app.gate.pools_view(None) {
        let _ = writeln!(
            out,
            "warden_pool_available{{pool=\"{}\"}} {}",
            label(p["name"].as_str().unwrap_or("")),
            p["available"]
        );
    }
    if !admin {
        return;
    }
    let _ =
        writeln!(out, "# HELP warden_client_spend_usd Settled spend this month.\n# TYPE warden_client_spend_usd gauge");
    let _ = writeln!(out, "# HELP warden_client_budget_usd Monthly budget.\n# TYPE warden_client_budget_usd gauge");
    let clients: Vec<Option<usize>> =
        if app.config().clients.is_empty() { vec![None] } else { (0..app.config().clients.len()).map(Some).collect() };
    for c in clients {
        let name = label(&app.gate.client_name(c));
        let b = app.gate.budget_view(c);
        let _ = writeln!(out, "warden_client_spend_usd{{client=\"{name}\"}} {}", b["spent_usd"]);
        if let Some(limit) = b["budget_usd"].as_f64() {
            let _ = writeln!(out, "warden_client_budget_usd{{client=\"{name}\"}} {limit}");
        }
    }
}

pub async fn status(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let services: serde_json::Map<String, serde_json::Value> = app
        .services()
        .iter()
        .filter(|s| !s.shared.retired())
        .map(|s| (s.name().to_string(), json!(s.shared.live().state.as_str())))
        .collect();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": app.started.elapsed().as_secs(),
        "services": services,
        "clients": app.config().clients.len(),
        "pending_reloads": app.coordinator.saved().len(),
    }))
}
