//! The state the pipeline, the HTTP handlers and the background loops share. Each piece has
//! one owner (named on its field); `App` only holds the handles.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::admission::gate::Gate;
use crate::base::events::Events;
use crate::config::{Config, IdleConfig};
use crate::jobs::Jobs;
use crate::pressure::Monitor;
use crate::resources::coordinator::Coordinator;
use crate::service::directory::Directory;
use crate::service::{OwnerContext, Roster, ServiceHandle};

pub struct App {
    /// The validated config in force: replaced whole by a reload (`crate::reload`), read
    /// through `config()` so a request sees one config from start to end.
    config: arc_swap::ArcSwap<Config>,
    /// One handle per configured service, in the order of `config.services`. Each service's
    /// state is owned by its owner task; a handle reads it and sends commands.
    pub services: Roster,
    /// How new service owners are made (a reload adds and replaces them).
    pub owner_ctx: OwnerContext,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// Model name → service, configured and discovered (owners add discovered models).
    pub directory: Arc<Directory>,
    /// Memory: footprints, the saved state of offloaded services, room-making plans.
    pub coordinator: Arc<Coordinator>,
    /// Idle settings as now in force (changeable through `POST /admin/settings`).
    idle: Mutex<IdleConfig>,
    /// Wakes the idle monitor when the settings change, so a new interval applies at once.
    pub idle_changed: Notify,
    /// The idle monitor is running (shown by `/admin/idle-status`).
    pub monitor_running: AtomicBool,
    /// The one owner of admission state: budgets, the priority queue, usage records.
    pub gate: Arc<Gate>,
    /// The response cache (`[cache]`), when on.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Embeddings requests waiting to go upstream together (`[models.X] coalesce`).
    pub coalescing: crate::coalesce::Batches,
    /// The histograms `/metrics` shows (cold starts, request durations, first bytes).
    pub metrics: Arc<crate::base::metrics::Metrics>,
    /// Bytes compressing request bodies to services (`compress_upstream`) saved.
    pub upstream_compression_saved: Arc<std::sync::atomic::AtomicU64>,
    /// Upstream calls coalescing saved (each request that shared another's call).
    pub coalesced_calls_saved: Arc<std::sync::atomic::AtomicU64>,
    /// Per client: bytes compression saved and upstream calls coalescing saved.
    pub client_savings: crate::account::savings::Savings,
    /// Bytes compression saved on answers to clients (written by the front door's layer).
    pub compression_saved: Arc<std::sync::atomic::AtomicU64>,
    /// Async jobs from `/api/queue/enqueue`.
    pub jobs: Arc<Jobs>,
    /// The Batch API's files, batches and lines (`server/batches` runs them).
    pub batches: Arc<crate::batch::Store>,
    /// The batches being run now, by id (their runners add and remove them).
    pub batch_runs: Mutex<std::collections::HashMap<String, Arc<crate::batch::Run>>>,
    /// The pressure monitor: whether to serve smaller rungs now, pinned sessions.
    pub pressure: Arc<Monitor>,
    /// The event hub behind `/admin/events`.
    pub events: Events,
    /// How each model performs (latency, first byte, tokens/s, success), from every request.
    pub performance: Arc<crate::account::performance::Tracker>,
    /// Cancelled when warden starts draining: streams that never end on their own (events)
    /// end then, so they do not hold up the drain.
    pub draining: tokio_util::sync::CancellationToken,
    /// When this warden started, for `/status` uptime.
    pub started: Instant,
    /// The same, in Unix seconds (`created` of the models it lists).
    pub started_unix: u64,
}

/// The owners `App` holds handles to, made at start-up.
pub struct Owners {
    pub performance: Arc<crate::account::performance::Tracker>,
    pub config: Arc<Config>,
    pub services: Roster,
    pub owner_ctx: OwnerContext,
    pub directory: Arc<Directory>,
    pub coordinator: Arc<Coordinator>,
    pub gate: Arc<Gate>,
    pub cache: Option<Arc<crate::cache::Cache>>,
    pub jobs: Arc<Jobs>,
    pub batches: Arc<crate::batch::Store>,
    pub pressure: Arc<Monitor>,
    pub events: Events,
    pub draining: tokio_util::sync::CancellationToken,
}

impl App {
    pub fn new(o: Owners) -> Self {
        App {
            idle: Mutex::new(o.config.idle),
            config: arc_swap::ArcSwap::new(o.config),
            services: o.services,
            metrics: o.owner_ctx.metrics.clone(),
            owner_ctx: o.owner_ctx,
            reloading: tokio::sync::Mutex::new(()),
            directory: o.directory,
            coordinator: o.coordinator,
            gate: o.gate,
            cache: o.cache,
            compression_saved: Arc::default(),
            client_savings: Default::default(),
            coalescing: Default::default(),
            coalesced_calls_saved: Arc::default(),
            upstream_compression_saved: Arc::default(),
            jobs: o.jobs,
            batches: o.batches,
            batch_runs: Mutex::default(),
            pressure: o.pressure,
            events: o.events,
            performance: o.performance,
            draining: o.draining,
            idle_changed: Notify::new(),
            monitor_running: AtomicBool::new(false),
            started: Instant::now(),
            started_unix: crate::base::clock::unix_secs(),
        }
    }

    /// The config in force now, borrowed: most requests read it a dozen times, and a borrow
    /// does not touch the config's shared reference count (an atomic every serving thread would
    /// write, 20 times a request). Held past a statement, `Arc::clone` it or use
    /// [`App::config_owned`]: a thread has only a few borrow slots before borrows become clones.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The config in force now, owned: for holding across a wait or in a struct.
    pub fn config_owned(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a reloaded config in force (`crate::reload` alone calls it).
    pub(crate) fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    /// The service handles in force now, one per place in `config().services`.
    pub fn services(&self) -> Arc<Vec<ServiceHandle>> {
        self.services.get()
    }

    pub fn idle_settings(&self) -> IdleConfig {
        *self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_idle_settings(&self, change: impl FnOnce(&mut IdleConfig)) -> IdleConfig {
        let new = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut idle);
            *idle
        };
        self.idle_changed.notify_one();
        new
    }
}
