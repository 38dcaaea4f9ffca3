//! Hot paths, measured with criterion: routing a request by model, the idle policy over many
//! services, the lifecycle machine, the eviction planner and the priority queue. Run: cargo bench -p warden --bench hot_paths

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use policy::class::Class;
use policy::idle::{decide, IdleInputs};
use policy::lifecycle::{Event, Machine, State};
use policy::planner::{plan, Capacity, Newcomer, Resident};
use policy::queue::{Dispatcher, Limits, Now, Settings, Waiting};
use warden::config::ModelRef;
use warden::pipeline::model_of as openai_model_of;
use warden::service::directory::Directory;

fn routing(c: &mut Criterion) {
    let models: BTreeMap<String, ModelRef> =
        (0..50).map(|i| (format!("model-{i}"), ModelRef { service: i, index: 0 })).collect();
    let directory = Directory::new(models);
    let body = br#"{"model":"model-37","messages":[{"role":"user","content":"Write a haiku about the sea."}],"max_tokens":64,"stream":false}"#;
    c.bench_function("route: find model in body + directory lookup (50 models)", |b| {
        b.iter(|| {
            let model = openai_model_of(black_box(body)).unwrap();
            black_box(directory.get(&model))
        })
    });
}

/// A long conversation (a system prompt, retrieved context, turns): the model is looked up the
/// same way whatever the body's size, so this is what a large prompt costs per request.
fn routing_large_body(c: &mut Criterion) {
    let turn = r#"{"role":"user","content":"Here is the context: \"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.\" What does it say?"},{"role":"assistant","content":"It is placeholder text, used since the 1500s.\nNothing more."},"#;
    let turns = turn.repeat(64 * 1024 / turn.len());
    let body =
        format!(r#"{{"model":"model-37","messages":[{turns}{{"role":"user","content":"Thanks."}}],"max_tokens":64}}"#);
    c.bench_function(&format!("route: find model in a {} KiB chat body", body.len() / 1024), |b| {
        b.iter(|| black_box(openai_model_of(black_box(body.as_bytes())).unwrap().len()))
    });
}

fn idle_policy(c: &mut Criterion) {
    let t0 = Instant::now();
    let services: Vec<IdleInputs> = (0..200)
        .map(|i| IdleInputs {
            state: State::Running,
            in_flight: (i % 3) as u32,
            queued: 0,
            idle_since: Some(t0 + Duration::from_millis(i)),
            global_enabled: true,
            service_enabled: i % 7 != 0,
            pinned: i % 11 == 0,
            timeout: Duration::from_secs(300),
            models_loaded: 0,
            multi_model: false,
        })
        .collect();
    let now = t0 + Duration::from_secs(200);
    c.bench_function("idle policy: decide for 200 services", |b| {
        b.iter(|| {
            services
                .iter()
                .map(|s| decide(black_box(s), now))
                .filter(|d| matches!(d, policy::idle::IdleDecision::Sleep { .. }))
                .count()
        })
    });
}

fn lifecycle(c: &mut Criterion) {
    let now = Instant::now();
    c.bench_function("lifecycle: wake, ready, idle stop, stopped", |b| {
        b.iter(|| {
            let mut m = Machine::default();
            for ev in [Event::Demand, Event::StartSucceeded, Event::StopRequested, Event::StopFinished] {
                black_box(m.on(ev, now));
            }
            m.state()
        })
    });
}

fn eviction_planner(c: &mut Criterion) {
    let t0 = Instant::now();
    let residents: Vec<Resident> = (0..200)
        .map(|i| Resident {
            id: i,
            bytes: (64 + (i as u64 * 37) % 512) << 20,
            priority: (i % 5) as i32 * 10,
            last_used: Some(t0 + Duration::from_millis((i as u64 * 7919) % 1000)),
            may_sleep: i % 9 != 0,
            in_flight: (i % 4 == 0) as u32,
            running_since: t0,
            swapped: i % 3 == 0,
            group: (i % 13 == 0).then(|| "gpu-big".to_string()),
            starting: false,
        })
        .collect();
    let total: u64 = residents.iter().map(|r| r.bytes).sum();
    let cap = Capacity { total, threshold: 0.9, reserve: 1 << 30 };
    let newcomer = Newcomer { id: 999, need: 8 << 30, growth: 0, group: Some("gpu-big".into()) };
    let now = t0 + Duration::from_secs(60);
    c.bench_function("eviction planner: 200 running services", |b| {
        b.iter(|| plan(black_box(cap), black_box(&residents), black_box(&newcomer), Duration::from_secs(30), now))
    });
}

/// 100,000 requests queued over `lanes` lanes (client × class × route); one step pushes a
/// request and dispatches one (the service admits one at a time: each dispatch ends the
/// previous), so the queue stays at 100k. Lanes, not requests, are what a dispatch scans.
fn priority_queue(c: &mut Criterion) {
    // Four classes (deferred would wait for its window) × clients × 2 routes.
    for clients in [1usize, 10, 100] {
        let routes = 2u32;
        let lanes = 4 * clients * routes as usize;
        let limits = Limits { client_max: vec![None; clients], service_max: vec![Some(1)] };
        let settings =
            Settings { aging_full_ms: 120_000, starve_ms: 600_000, fairness_half_life_ms: 60_000, off_peak: None };
        let mut d = Dispatcher::new(clients, limits, Vec::new(), settings);
        let waiting = |i: u64| Waiting {
            client: (i as usize) % clients,
            tier: 10 + (i % 4) as u32 * 10,
            class: Class::ALL[(i / clients as u64) as usize % 4],
            service: 0,
            route: (i / (clients as u64 * 4)) as u32 % routes,
            pools: Vec::new(),
            enqueued_ms: i / 100,
        };
        for i in 0..100_000 {
            d.push(waiting(i));
        }
        let mut i = 100_000u64;
        let mut running = d.next(Now { ms: i / 100, minute_utc: 0 });
        c.bench_function(&format!("priority queue: push + dispatch at 100k queued, {lanes} lanes"), |b| {
            b.iter(|| {
                i += 1;
                let now = Now { ms: i / 100, minute_utc: 0 };
                d.push(waiting(i));
                if let Some(g) = running.take() {
                    d.finish(&g, None, now.ms);
                }
                running = d.next(now);
                black_box(running.is_some())
            })
        });
    }
}

/// The pressure monitor's pure step, per device per tick: the trend over a 60 s window of 2 s
/// samples, the level, the hold.
fn pressure_decision(c: &mut Criterion) {
    use policy::pressure::{decide, Hold, Sample, Thresholds};
    let t = Thresholds {
        degrade_at: 0.8,
        upgrade_below: 0.7,
        stop_idle_at: 0.85,
        stabilization_ms: 300_000,
        horizon_ms: 30_000,
        window_ms: 60_000,
    };
    let samples: Vec<Sample> =
        (0..30).map(|i| Sample { at_ms: i * 2000, used: (50 + i) << 26, capacity: 128 << 26 }).collect();
    c.bench_function("pressure monitor: decide from 30 samples (60 s window)", |b| {
        b.iter(|| {
            let mut hold = Hold::default();
            black_box(decide(black_box(&samples), &t, 5000, &mut hold, 58_000))
        })
    });
}

/// What the ladder stage asks of the performance figures for a model with `max_p95` set, on
/// every request to it: its last five minutes, with 10,000 requests recorded (33 a second).
fn ladder_performance_check(c: &mut Criterion) {
    use warden::account::performance::{Sample, Tracker};
    let tracker = Tracker::default();
    for i in 0..10_000u32 {
        let model = if i % 2 == 0 { "big" } else { "small" };
        let s = Sample {
            at: Instant::now(),
            model: model.into(),
            task: None,
            ok: i % 50 != 0,
            total_ms: 100 + i % 400,
            first_byte_ms: Some(20 + i % 40),
            tokens: Some(64),
            weight: 1,
        };
        tracker.record(s);
    }
    c.bench_function("ladder: a model's last 5 minutes of figures (10k requests recorded)", |b| {
        b.iter(|| black_box(tracker.model(black_box("big"), Duration::from_secs(300))))
    });
}

/// The whole ladder stage on a real `App` (owners, admission, pressure monitor state), for a
/// model with a smaller rung and a latency bound, pressure enabled and calm, a session named:
/// what it adds to every request to such a model. Its one await (room for `on_pressure =
/// "degrade"`) is not on this path, so the future completes at its first poll.
fn ladder_stage(c: &mut Criterion) {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[pressure]
enabled = true

[services.big]
kind = "remote"
url = "http://127.0.0.1:9"
models = ["big"]

[services.small]
kind = "remote"
url = "http://127.0.0.1:9"
models = ["small"]

[models.big]
smaller = "small"
max_p95 = "10s"
"#;
    let mut config = warden::config::parse(text, dir.path()).unwrap();
    config.server.state_dir = dir.path().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let assembled = warden::server::assemble(std::sync::Arc::new(config), dir.path().to_path_buf()).unwrap();
    let app = assembled.app;
    let route = warden::pipeline::route::model(&app, "big").unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-warden-session", "conversation-42".parse().unwrap());
    let body = axum::body::Bytes::from_static(
        br#"{"model":"big","messages":[{"role":"user","content":"Write a haiku about the sea."}],"max_tokens":64}"#,
    );
    c.bench_function("ladder stage: pressure on and calm, bounds set, a session (real App)", |b| {
        b.iter(|| {
            let chosen = warden::pipeline::ladder::choose(&app, route.clone(), &headers, &body).now_or_never();
            black_box(chosen.expect("no await on this path"))
        })
    });
    assembled.shutdown.cancel();
}

criterion_group!(
    benches,
    routing,
    routing_large_body,
    idle_policy,
    lifecycle,
    eviction_planner,
    priority_queue,
    pressure_decision,
    ladder_performance_check,
    ladder_stage
);
criterion_main!(benches);
