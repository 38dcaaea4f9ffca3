//! One service: its owner task (`owner`), the pure lifecycle rules (`lifecycle`), and the
//! leases requests hold on it (`lease`).
//!
//! Who writes what: the owner task alone changes `Live::state`, `pid`, `port` and `last_error`;
//! leases alone change `in_flight` and the idle clock. Both happen under one small mutex, which
//! is what makes "stop only when no lease is held" race-free.

pub mod directory;
mod held;
pub mod lease;
mod models;
mod owner;
pub mod room;
mod start;
mod stop;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

pub use crate::base::errors::Unavailable;
use crate::config::ServiceConfig;
use crate::driver::logs::ServiceLog;
use crate::driver::Meter;
use lease::Lease;
pub use owner::{spawn_owner, Learned, OwnerContext};
use policy::lifecycle::State;

/// What everyone may read about one model of a service. Append-only per service: a model's
/// index never changes, so leases and the directory may hold it.
#[derive(Debug, Clone)]
pub struct ModelLive {
    pub name: Arc<str>,
    /// None = the global `[idle].keep_alive`, as now set.
    pub keep_alive: Option<Duration>,
    /// Reported by the server rather than named in the config.
    pub discovered: bool,
    /// Loaded in a multi-model server. (A single-model service's model is loaded while the
    /// service runs; see [`Live::model_loaded`].)
    pub loaded: bool,
    /// Being loaded or unloaded right now: requests for it wait for the owner.
    pub changing: bool,
    pub in_flight: u32,
    pub last_used: Option<SystemTime>,
    /// When its last lease dropped, or it was loaded.
    pub idle_since: Option<Instant>,
}

/// What everyone may read about a service, and the lease counts.
#[derive(Debug)]
pub struct Live {
    pub state: State,
    pub in_flight: u32,
    pub queued: usize,
    /// Wall-clock time of the last lease taken or dropped, for people.
    pub last_used: Option<SystemTime>,
    /// When the idle clock started: the last lease dropped, or the service became ready.
    pub idle_since: Option<Instant>,
    /// When the current run became ready (for the minimum residency before an offload).
    pub running_since: Option<Instant>,
    /// How long the last successful start took (ms): the lead the pressure monitor allows for
    /// a smaller rung to come up.
    pub last_start_ms: Option<u64>,
    pub pid: Option<u32>,
    /// The port warden picked for a process service.
    pub port: Option<u16>,
    /// Where the running service answers: its base URL ("http://127.0.0.1:8080").
    pub upstream: Option<Arc<str>>,
    /// The upstream as an address when it is `http://IP:port`, reached on each thread's own
    /// connections (`base::pool`): parsed once a run, not on every request.
    pub direct: Option<std::net::SocketAddr>,
    /// Measures the running service's memory.
    pub meter: Option<Meter>,
    pub last_error: Option<String>,
    /// One entry per model in the service's config, same order.
    pub models: Vec<ModelLive>,
    /// Counters since warden started, for /metrics.
    pub requests_total: u64,
    pub starts_total: u64,
    pub start_failures_total: u64,
    multi_model: bool,
}

impl ModelLive {
    pub fn new(name: &str, keep_alive: Option<Duration>, discovered: bool) -> Self {
        ModelLive {
            name: name.into(),
            keep_alive,
            discovered,
            loaded: false,
            changing: false,
            in_flight: 0,
            last_used: None,
            idle_since: None,
        }
    }
}

impl Live {
    pub fn model_loaded(&self, model: usize) -> bool {
        if self.multi_model {
            self.models[model].loaded
        } else {
            self.state == State::Running
        }
    }

    /// Models loaded now (for a single-model service: its models while running).
    pub fn loaded_models(&self) -> usize {
        (0..self.models.len()).filter(|&m| self.model_loaded(m)).count()
    }
}

pub struct Shared {
    /// The service as configured: replaced in place only by a reload that retunes it (idle
    /// settings, keep-alives, bounds; see `config::reload`), never in what a run depends on.
    config: arc_swap::ArcSwap<ServiceConfig>,
    /// What everyone reads (state, leases, models), under one small mutex: leases and the
    /// owner's state changes meet here, which is what makes idle stops race-free.
    live: Mutex<Live>,
    /// How requests reach it: the shared pool, or for an https upstream with its own CA (or
    /// none, `tls_insecure`) a pool that trusts that.
    pub client: Arc<crate::base::http::Clients>,
    /// The service's `idle_sleep`, changeable at run time through the admin API.
    idle_sleep: AtomicBool,
    /// The service's log file and in-memory tail (for start failures' messages).
    pub log: ServiceLog,
    /// `config`'s name, kept apart so it can be borrowed (a reload never renames a service).
    name: Arc<str>,
    /// The last lease dropped: an owner retiring after a reload may stop now.
    lease_dropped: tokio::sync::Notify,
    /// A reload changed or removed it (this run is the old one): hidden from listings.
    retired: AtomicBool,
}

impl Shared {
    /// The service's config in force.
    pub fn config(&self) -> Arc<ServiceConfig> {
        self.config.load_full()
    }

    /// A reload changed only how the service is tuned (idle settings, keep-alives, bounds):
    /// the new settings apply from now on, to the run as it is.
    pub fn retune(&self, config: Arc<ServiceConfig>) {
        self.set_idle_sleep(config.idle_sleep);
        {
            let mut live = self.live();
            for (m, model) in config.models.iter().enumerate() {
                if let Some(l) = live.models.get_mut(m) {
                    l.keep_alive = model.keep_alive;
                }
            }
        }
        self.config.store(config);
    }

    /// Its name (the same for the life of this `Shared`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn idle_sleep(&self) -> bool {
        self.idle_sleep.load(Ordering::Relaxed)
    }

    pub fn set_idle_sleep(&self, on: bool) {
        self.idle_sleep.store(on, Ordering::Relaxed)
    }

    /// A reload changed or removed it: this handle's run is draining or over.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The fast path: a lease on a running service (and its loaded model) without a message
    /// to its owner.
    pub fn try_lease(self: &Arc<Self>, model: Option<usize>) -> Option<Lease> {
        let mut live = self.live();
        if live.state != State::Running {
            return None;
        }
        if let Some(m) = model {
            if live.multi_model && (!live.models[m].loaded || live.models[m].changing) {
                return None;
            }
        }
        let upstream = live.upstream.clone()?;
        Some(Lease::take(self.clone(), &mut live, upstream, model))
    }
}

pub struct Acquired {
    pub lease: Lease,
    /// Set when this request waited for a start: how long.
    pub cold_start: Option<Duration>,
}

pub(crate) enum Command {
    Acquire {
        model: Option<usize>,
        reply: oneshot::Sender<Result<Lease, Unavailable>>,
    },
    Stop {
        reason: StopReason,
        done: oneshot::Sender<()>,
    },
    UnloadModel {
        model: usize,
        reason: StopReason,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Ask the server which models it has loaded, and believe it.
    Reconcile,
    /// A reload changed or removed the service: take nothing new, stop once done, then
    /// cancel `stopped`.
    Retire {
        stopped: tokio_util::sync::CancellationToken,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Operator asked: stop now.
    Admin,
    /// The idle monitor found it idle this long; stop only if still idle.
    Idle { idle_for: Duration },
    /// The coordinator needs its memory; stop only if no request is in flight.
    Offload,
}

/// The service handles in force, one per config place: read on every request, replaced whole
/// by a config reload (places only grow, so an index read before a reload stays valid).
/// Cloning it shares it: the server, the coordinator, the pressure and idle monitors all see
/// the same list.
#[derive(Clone)]
pub struct Roster(Arc<arc_swap::ArcSwap<Vec<ServiceHandle>>>);

impl Roster {
    pub fn new(services: Vec<ServiceHandle>) -> Self {
        Roster(Arc::new(arc_swap::ArcSwap::from_pointee(services)))
    }

    pub fn get(&self) -> Arc<Vec<ServiceHandle>> {
        self.0.load_full()
    }

    pub fn set(&self, services: Vec<ServiceHandle>) {
        self.0.store(Arc::new(services));
    }
}

/// The handle everyone else holds: shared state to read, a mailbox to the owner.
#[derive(Clone)]
pub struct ServiceHandle {
    pub shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// A lease on the running service (with `model` loaded, for a multi-model server),
    /// starting and loading as needed and waiting, bounded by the service's start_timeout
    /// (enforced by its owner). Dropping this future leaves the queue.
    pub async fn acquire(&self, model: Option<usize>) -> Result<Acquired, Unavailable> {
        if let Some(lease) = self.shared.try_lease(model) {
            return Ok(Acquired { lease, cold_start: None });
        }
        let t0 = Instant::now();
        let (reply, rx) = oneshot::channel();
        let gone = || Unavailable::Stopped { reason: "warden is shutting down".into() };
        self.tx.send(Command::Acquire { model, reply }).map_err(|_| gone())?;
        let lease = rx.await.map_err(|_| gone())??;
        Ok(Acquired { lease, cold_start: Some(t0.elapsed()) })
    }

    /// Tells the owner the service looks idle; it stops it unless a request came in meanwhile.
    pub fn request_idle_stop(&self, idle_for: Duration) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.send(Command::Stop { reason: StopReason::Idle { idle_for }, done });
    }

    /// Tells the owner a model's keep-alive ran out; it unloads it unless it is in use again.
    pub fn request_model_unload(&self, model: usize, idle_for: Duration) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.send(Command::UnloadModel { model, reason: StopReason::Idle { idle_for }, done });
    }

    /// Unloads a model now (for a single-model service: stops the service).
    pub async fn unload_model(&self, model: usize) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Command::UnloadModel { model, reason: StopReason::Admin, done }).map_err(|_| "shutting down")?;
        rx.await.map_err(|_| "shutting down".to_string())?
    }

    /// A request's `keep_alive` (Ollama dialect) for one of its models; None = back to the
    /// configured one (as Ollama applies its default to a request that names none).
    pub fn set_keep_alive(&self, model: usize, keep: Option<Duration>) {
        let configured = self.shared.config().models.get(model).and_then(|m| m.keep_alive);
        if let Some(m) = self.shared.live().models.get_mut(model) {
            m.keep_alive = keep.or(configured);
        }
    }

    pub fn reconcile(&self) {
        let _ = self.tx.send(Command::Reconcile);
    }

    /// A reload changed or removed the service: its owner takes no new requests and stops
    /// once those it has are done. The token is cancelled when it has stopped (at once if
    /// its owner is already gone).
    pub fn retire(&self) -> tokio_util::sync::CancellationToken {
        self.shared.retired.store(true, Ordering::Relaxed);
        let stopped = tokio_util::sync::CancellationToken::new();
        if self.tx.send(Command::Retire { stopped: stopped.clone() }).is_err() {
            stopped.cancel();
        }
        stopped
    }

    /// Asks the owner to stop the service; resolves once it is stopped (or was not running).
    pub async fn stop(&self, reason: StopReason) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { reason, done }).is_ok() {
            let _ = rx.await;
        }
    }
}

impl Shared {
    fn new(config: Arc<ServiceConfig>, log: ServiceLog, client: Arc<crate::base::http::Clients>) -> Self {
        Shared {
            client,
            idle_sleep: AtomicBool::new(config.idle_sleep),
            live: Mutex::new(Live {
                state: State::Stopped,
                in_flight: 0,
                queued: 0,
                last_used: None,
                idle_since: None,
                running_since: None,
                last_start_ms: None,
                pid: None,
                port: None,
                upstream: None,
                direct: None,
                meter: None,
                last_error: None,
                models: config.models.iter().map(|m| ModelLive::new(&m.name, m.keep_alive, false)).collect(),
                requests_total: 0,
                starts_total: 0,
                start_failures_total: 0,
                multi_model: config.api.multi_model(),
            }),
            log,
            name: config.name.as_str().into(),
            config: arc_swap::ArcSwap::new(config),
            lease_dropped: tokio::sync::Notify::new(),
            retired: AtomicBool::new(false),
        }
    }
}
