//! The front door: OpenAI routes by model, passthrough by service, the admin API; and the
//! daemon's start-up and bounded shutdown.

pub mod admin;
pub mod api;
pub mod auth;
mod batches;
mod compress;
mod extract;
mod front;
mod listen;
mod metrics;
mod ollama;
mod openai;
pub mod openapi;
mod passthrough;
mod state_lock;
mod ui;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::config::Config;
use crate::driver::orphans;
use crate::resources::coordinator::Coordinator;
use crate::service::directory::Directory;
use crate::service::{spawn_owner, OwnerContext};

pub fn routes(app: Arc<App>) -> Router {
    let admin = admin::routes().route_layer(axum::middleware::from_fn_with_state(app.clone(), auth::admin_auth));
    // The front door: with [clients] configured, every route here needs a client key.
    let front = Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::by_model))
        .route("/v1/completions", post(openai::by_model))
        .route("/v1/embeddings", post(openai::by_model))
        .route("/svc/{service}", any(passthrough::root))
        .route("/svc/{service}/{*path}", any(passthrough::path))
        .merge(api::routes())
        .merge(batches::routes())
        .route_layer(auth::ClientAuth(app.clone()));
    // Ollama's dialect: the same keys, and every error in Ollama's shape.
    let ollama =
        ollama::routes().route_layer(auth::ClientAuth(app.clone())).layer(axum::middleware::from_fn(ollama::errors));
    Router::new()
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/metrics", get(metrics::metrics))
        .route("/status", get(metrics::status))
        .route("/ui", get(ui::page))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(front)
        .merge(ollama)
        .merge(admin)
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(format!("route {}", uri.path())) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
        })
        .with_state(app)
}

/// A JSON request body, with 400 naming what is wrong (`invalid_json` when it is not JSON at
/// all, `bad_request` when it is JSON of the wrong shape).
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::BadRequest(format!("invalid request: {e}"))
        } else {
            ApiError::BadJson(e.to_string())
        }
    })
}

/// The running parts of a warden, before its front door opens.
pub struct Assembled {
    pub app: Arc<App>,
    /// Every background task (owners, coordinator, timers, monitors), awaited on shutdown.
    pub tasks: TaskTracker,
    /// Stops the background tasks and services.
    pub shutdown: CancellationToken,
    /// Cancelled when warden starts draining (`App::draining`).
    pub stop_accepting: CancellationToken,
}

/// Builds the owners (a task per service, admission, memory, pressure, idle) and the `App` that
/// holds their handles, on `config` with state under `state_dir`. `serve` calls it after the
/// state lock and the port; benchmarks call it to measure stages on a real `App`.
pub fn assemble(config: Arc<Config>, state_dir: std::path::PathBuf) -> Result<Assembled, String> {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let client = crate::base::http::Clients::new(None, true);
    let directory = Arc::new(Directory::new(config.models.clone()));
    let (room, room_requests) = tokio::sync::mpsc::unbounded_channel();
    let (learned, mut learned_rx) = tokio::sync::mpsc::unbounded_channel::<crate::service::Learned>();
    let events = crate::base::events::Events::default();
    let ctx_state_dir = state_dir.clone();
    let ctx = OwnerContext {
        events: events.clone(),
        state_dir,
        room,
        directory: directory.clone(),
        learned,
        client: client.clone(),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        metrics: Default::default(),
        runtime: tokio::runtime::Handle::current(),
        secret_env: Arc::new(arc_swap::ArcSwap::from_pointee(config.secret_env.clone())),
    };
    let gate = Arc::new(crate::admission::gate::Gate::new(config.clone(), events.clone())?);
    tasks.spawn(gate.clone().run_timer(shutdown.clone()).instrument(tracing::info_span!("scheduler timer")));
    if let Some(shared) = &gate.shared {
        shared.spawn(&tasks, shutdown.clone());
    }
    // What services say of their own concurrency paces what admission sends them.
    let (pace_gate, pace_shutdown) = (gate.clone(), shutdown.clone());
    tasks.spawn(
        async move {
            loop {
                tokio::select! {
                    _ = pace_shutdown.cancelled() => break,
                    Some(l) = learned_rx.recv() => pace_gate.set_service_limit(l.service, l.slots),
                }
            }
        }
        .instrument(tracing::info_span!("pacing")),
    );
    let services =
        config.services.iter().enumerate().map(|(i, s)| spawn_owner(i, Arc::new(s.clone()), ctx.clone(), None));
    let services = crate::service::Roster::new(services.collect());
    let coordinator = Arc::new(Coordinator::new(&config, services.clone(), events.clone()));
    let run = coordinator.clone().run(room_requests, tasks.clone(), shutdown.clone());
    tasks.spawn(run.instrument(tracing::info_span!("coordinator")));
    let jobs = Arc::new(crate::jobs::Jobs::new(tasks.clone(), shutdown.clone()));
    let pressure = Arc::new(crate::pressure::Monitor::new(config.clone()));
    if config.pressure.enabled {
        let run = pressure.clone().run(coordinator.clone(), services.clone(), gate.clone(), shutdown.clone());
        tasks.spawn(run.instrument(tracing::info_span!("pressure monitor")));
    }
    let stop_accepting = CancellationToken::new();
    let cache = crate::cache::Cache::open(&config.cache, &ctx_state_dir)?.map(Arc::new);
    // Model timings from earlier runs (the last day) are read back now.
    let performance = Arc::new(crate::account::performance::Tracker::new(gate.store.clone())?);
    let owners = crate::app::Owners {
        performance,
        config: config.clone(),
        services,
        owner_ctx: ctx,
        directory,
        coordinator,
        gate: gate.clone(),
        cache,
        jobs,
        batches: Arc::new(crate::batch::Store::open(&ctx_state_dir)?),
        pressure,
        events: events.clone(),
        draining: stop_accepting.clone(),
    };
    let app = Arc::new(App::new(owners));
    tasks.spawn(
        crate::idle::monitor::run(app.clone(), shutdown.clone()).instrument(tracing::info_span!("idle monitor")),
    );
    Ok(Assembled { app, tasks, shutdown, stop_accepting })
}

/// Runs the daemon until SIGTERM/SIGINT, then drains requests (bounded), stops every service
/// (bounded), and returns.
pub async fn serve(config: Config) -> Result<(), String> {
    let state_dir = config.server.state_dir.clone();
    for dir in ["logs", "run"] {
        std::fs::create_dir_all(state_dir.join(dir))
            .map_err(|e| format!("cannot create {}: {e}", state_dir.join(dir).display()))?;
    }
    // First the lock (nothing is touched before it), then the port, then leftovers of a crash:
    // a warden that cannot run kills nothing.
    let _lock = state_lock::acquire(&state_dir)?;
    // From here on SIGTERM is ours (and waits its turn): a signal during start-up must not kill
    // warden between stopping leftovers and reporting it, or before its services are stopped.
    let termination = termination_signal();
    // SIGHUP's default would end warden: it is a reload from here on.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    // Each connection is a file descriptor; keep a reserve for services, logs and the database.
    let default_max_connections = (crate::driver::limits::raise_open_files().saturating_sub(256)).max(64) as usize;
    let listener =
        listen::bind(config.server.listen).map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    for service in orphans::stop_leftovers(&state_dir) {
        warn!("Stopped service {service}'s processes left running by a previous warden");
    }
    if !crate::driver::cgroup::available(&state_dir) {
        warn!("No writable cgroup: a service's processes are tracked by process group only, so one that leaves its group (setsid) could outlive warden");
    }

    let config = Arc::new(config);
    let Assembled { app, tasks, shutdown, stop_accepting } = assemble(config.clone(), state_dir)?;

    let limits = listen::Limits {
        header_timeout: config.server.header_timeout,
        max_connections: config.server.max_connections.unwrap_or(default_max_connections),
    };
    let on_hangup = reload_on_hangup(app.clone(), hangup, shutdown.clone());
    tasks.spawn(on_hangup.instrument(tracing::info_span!("reload on SIGHUP")));
    // Batches in progress when warden last stopped go on where they stopped.
    batches::resume(&app);
    let threads = config.server.workers.unwrap_or_else(workers::default_count);
    let workers = workers::Workers::start(threads).map_err(|e| format!("cannot start serving threads: {e}"))?;
    let front = front::Front::new(routes(app.clone()), app.clone());
    let serving = listen::serve(listener, front, limits, workers.spread(), stop_accepting.clone());
    let mut server = tokio::spawn(serving.instrument(tracing::info_span!("front door")));
    info!(
        "warden listening on http://{addr} with {} services (up to {} connections)",
        config.services.len(),
        limits.max_connections
    );

    tokio::select! {
        result = &mut server => warn!("HTTP server ended on its own: {result:?}"),
        signal = termination => {
            let drain = app.config().server.drain_timeout;
            info!("Received {signal}: draining requests (up to {drain:?})");
            stop_accepting.cancel();
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                warn!("Requests still in flight after the drain timeout; closing them");
                // Aborting the front door drops every connection's task with it.
                server.abort();
            }
        }
    }

    info!("Stopping all services");
    shutdown.cancel();
    tasks.close();
    let longest_stop = app.config().services.iter().map(|s| s.stop_timeout).max().unwrap_or_default();
    if tokio::time::timeout(longest_stop + Duration::from_secs(10), tasks.wait()).await.is_err() {
        warn!("Some services did not stop in time");
    }
    // Last: requests cut at the drain timeout settle as their bodies drop, above.
    app.gate.store.close();
    // Last of all: tasks a request started ran on its worker.
    let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    info!("warden stopped");
    Ok(())
}

/// `SIGHUP` reloads the config file (as `POST /admin/reload` does); a refused file is logged
/// and the running config stays.
async fn reload_on_hangup(app: Arc<App>, mut hangup: tokio::signal::unix::Signal, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = hangup.recv() => {
                info!("Received SIGHUP: reloading the config");
                if let Err(e) = crate::reload::reload(&app).await {
                    warn!("Config reload refused: {e}");
                }
            }
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves at the first signal.
fn termination_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}
