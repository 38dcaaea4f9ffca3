//! `GET /metrics` (OpenMetrics text, by prometheus-client; `warden_` prefix, base units,
//! `_total` counters, bounded labels) and `GET /status`: read-only views of the state
//! the owners publish. Nothing is measured here; memory is the coordinator's last figure.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::base::errors::ApiError;
use policy::class::Class;

const STATES: [&str; 5] = ["stopped", "starting", "running", "stopping", "failed"];

/// OpenMetrics text, which Prometheus scrapes and the official parsers read.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceState {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOf {
    model: String,
    service: String,
}

type Gauges<L> = Family<L, Gauge>;
type Counters<L> = Family<L, Counter>;

/// Registers a family built for this scrape and returns it to fill.
fn family<
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Clone
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

/// One value: a gauge.
fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    family::<Gauge>(r, name, help).set(value);
}

/// One value: a counter (registered without its `_total`, which the encoding adds).
fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    family::<Counter>(r, name, help).inc_by(value);
}

pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let mut r = Registry::default();
    services(&app, &mut r);
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    counter(
        &mut r,
        "warden_offloads",
        "Services offloaded to make room for another.",
        app.coordinator.offloads_total(),
    );
    let saved = app.compression_saved.load(relaxed);
    counter(&mut r, "warden_compression_saved_bytes", "Bytes compressing answers to clients saved.", saved);
    let up = app.upstream_compression_saved.load(relaxed);
    let help = "Bytes compressing request bodies to services (compress_upstream) saved.";
    counter(&mut r, "warden_upstream_compression_saved_bytes", help, up);
    let p = &app.pressure;
    let level: Gauges<Device> =
        family(&mut r, "warden_pressure_level", "Memory pressure per device: 0 normal, 1 elevated, 2 critical.");
    let degraded: Gauges<Device> =
        family(&mut r, "warden_pressure_degraded", "1 while the device's models are served by smaller rungs.");
    for (device, lvl, deg) in p.levels() {
        let device = Device {
            device: serde_json::to_value(device).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        };
        level.get_or_create(&device).set(lvl as i64);
        degraded.get_or_create(&device).set(deg as i64);
    }
    counter(
        &mut r,
        "warden_pressure_switches",
        "Degrade and upgrade switches of the pressure monitor.",
        p.switches.load(relaxed),
    );
    counter(
        &mut r,
        "warden_degraded_requests",
        "Requests served by a smaller rung than asked for.",
        p.degraded_requests.load(relaxed),
    );
    gauge(
        &mut r,
        "warden_cpu_busy",
        "1 while the CPU is above cpu_defer_at (batch and deferred requests wait).",
        p.cpu_busy() as i64,
    );
    counter(
        &mut r,
        "warden_fallbacks",
        "Times a failed model request was tried on its next fallback.",
        p.fallbacks.load(relaxed),
    );
    let help = "Batch and deferred requests that arrived while the CPU was busy.";
    counter(&mut r, "warden_deferred_requests", help, p.deferred.load(relaxed));
    let m = &app.metrics;
    r.register("warden_cold_start_seconds", "Seconds from the demand to ready, per service.", m.cold_start.clone());
    let help = "Seconds from sending a model request to the end of its answer (unconfigured models: other).";
    r.register("warden_request_duration_seconds", help, m.request_duration.clone());
    let help = "Seconds from sending a model request to its answer's first bytes (unconfigured models: other).";
    r.register("warden_time_to_first_byte_seconds", help, m.first_byte.clone());
    admission(&app, &mut r, super::auth::is_admin(&app, &headers));
    let mut out = String::with_capacity(8192);
    if let Err(e) = encode(&mut out, &r) {
        return ApiError::Internal(format!("metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], out).into_response()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Device {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

/// Each service's state, leases, counts and memory; each model's loaded state.
fn services(app: &App, r: &mut Registry) {
    let state: Gauges<ServiceState> = family(r, "warden_service_state", "1 for the service's current lifecycle state.");
    let in_flight: Gauges<Service> = family(r, "warden_service_in_flight", "Requests holding a lease on the service.");
    let queued: Gauges<Service> =
        family(r, "warden_service_queued", "Requests held while the service starts or loads a model.");
    let requests: Counters<Service> = family(r, "warden_service_requests", "Requests that got a lease on the service.");
    let starts: Counters<Service> = family(r, "warden_service_starts", "Successful starts of the service.");
    let failures: Counters<Service> = family(r, "warden_service_start_failures", "Failed starts of the service.");
    let memory: Gauges<Service> = family(r, "warden_service_memory_bytes", "Last measured footprint of the service.");
    let loaded: Gauges<ModelOf> = family(r, "warden_model_loaded", "1 when the model is loaded.");
    for (i, svc) in app.services().iter().enumerate().filter(|(_, s)| !s.shared.retired()) {
        let name = svc.name().to_string();
        let l = Service { service: name.clone() };
        let live = svc.shared.live();
        for s in STATES {
            state
                .get_or_create(&ServiceState { service: name.clone(), state: s })
                .set((live.state.as_str() == s) as i64);
        }
        in_flight.get_or_create(&l).set(i64::from(live.in_flight));
        queued.get_or_create(&l).set(live.queued as i64);
        requests.get_or_create(&l).inc_by(live.requests_total);
        starts.get_or_create(&l).inc_by(live.starts_total);
        failures.get_or_create(&l).inc_by(live.start_failures_total);
        for (m, model) in live.models.iter().enumerate() {
            let at = ModelOf { model: model.name.to_string(), service: name.clone() };
            loaded.get_or_create(&at).set(live.model_loaded(m) as i64);
        }
        drop(live);
        if let Some(bytes) = app.coordinator.remembered(i) {
            memory.get_or_create(&l).set(bytes as i64);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pool {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Client {
    client: String,
}

/// The queue and pools; each client's spend only for the admin (a client sees only its own).
fn admission(app: &App, r: &mut Registry, admin: bool) {
    let q = app.gate.queue_status();
    let waiting: Gauges<ClassLabel> = family(r, "warden_queue_waiting", "Requests waiting for their turn, by class.");
    for class in Class::ALL {
        let n = q["by_class"][class.as_str()].as_i64().unwrap_or(0);
        waiting.get_or_create(&ClassLabel { class: class.as_str() }).set(n);
    }
    gauge(r, "warden_queue_running", "Requests let in and not yet finished.", q["running"].as_i64().unwrap_or(0));
    let pools: Gauges<Pool> = family(r, "warden_pool_available", "Units left in each pool's shared bucket.");
    for p in app.gate.pools_view(None) {
        let pool = Pool { pool: p["name"].as_str().unwrap_or("").to_string() };
        pools.get_or_create(&pool).set(p["available"].as_i64().unwrap_or(0));
    }
    if !admin {
        return;
    }
    let spend: Family<Client, Gauge<f64, AtomicU64>> =
        family(r, "warden_client_spend_usd", "Settled spend this month.");
    let budget: Family<Client, Gauge<f64, AtomicU64>> = family(r, "warden_client_budget_usd", "Monthly budget.");
    let config = app.config();
    let clients: Vec<Option<usize>> =
        if config.clients.is_empty() { vec![None] } else { (0..config.clients.len()).map(Some).collect() };
    for c in clients {
        let who = Client { client: app.gate.client_name(c) };
        let b = app.gate.budget_view(c);
        spend.get_or_create(&who).set(b["spent_usd"].as_f64().unwrap_or(0.0));
        if let Some(limit) = b["budget_usd"].as_f64() {
            budget.get_or_create(&who).set(limit);
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
