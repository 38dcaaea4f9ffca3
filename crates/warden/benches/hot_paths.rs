//! Hot paths, measured with criterion: routing a request by model, the idle policy over many
//! services, and the lifecycle machine. Run: cargo bench -p warden --bench hot_paths

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use warden::config::ModelRef;
use warden::idle::policy::{decide, IdleInputs};
use warden::server::openai_model_of;
use warden::service::directory::Directory;
use warden::service::lifecycle::{Event, Machine, State};

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
                .filter(|d| matches!(d, warden::idle::policy::IdleDecision::Sleep { .. }))
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

criterion_group!(benches, routing, idle_policy, lifecycle);
criterion_main!(benches);
