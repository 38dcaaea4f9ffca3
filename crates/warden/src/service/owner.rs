//! The owner task of one service: the only code that starts or stops it, or loads and unloads
//! its models. Requests and the idle monitor send it commands; it feeds service events to the
//! pure lifecycle [`Machine`] and carries out the effects.
//!
//! This file is the mailbox loop; the owner's other work is beside it: `start.rs` (room, then
//! the driver, one deadline), `stop.rs` (guarded and plain stops, exits), `held.rs` (requests
//! held through a start or a model load), `models.rs` (multi-model servers).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::directory::Directory;
use super::held::{Held, HeldRequest, Waiter};
use super::models::ModelResult;
use super::room::RoomTx;
use super::stop::{StopLabel, StopWaiter};
use super::{Command, ServiceHandle, Shared, Unavailable};
use crate::base::http::{self, Clients};
use crate::config::{Desired, RemoteSpec, ServiceConfig, ServiceKind, Trust};
use crate::driver::logs::ServiceLog;
use crate::driver::{Exit, Running, StartFailure};
use policy::lifecycle::{start_backoff, Event, Machine, State};

/// What every owner shares: where to write, how to probe, and the shutdown signal.
#[derive(Clone)]
pub struct OwnerContext {
    /// Logs (`logs/NAME.log`) and pidfiles (`run/NAME.pid`) go here.
    pub state_dir: PathBuf,
    /// Where a start asks for memory room (the coordinator task answers).
    pub room: RoomTx,
    /// Where discovered models are published for routing.
    pub directory: Arc<Directory>,
    /// Where a service's own concurrency, learned once it runs (llama-server's slots), is
    /// reported; the server passes it to admission.
    pub learned: mpsc::UnboundedSender<Learned>,
    /// Health probes and model APIs.
    pub client: Arc<Clients>,
    /// State changes and model loads go to `/admin/events`.
    pub events: crate::base::events::Events,
    /// Owners and the tasks they spawn (model loads, log pumps) are tracked for shutdown.
    pub tasks: TaskTracker,
    /// Cold starts go to `/metrics`' histogram.
    pub metrics: Arc<crate::base::metrics::Metrics>,
    pub shutdown: CancellationToken,
    /// The main runtime, where owners run whichever thread made them. A reload through the
    /// admin API runs on a serving thread; an owner spawned there would probe, pump its
    /// service's log to disk (a write per line) and fork on the thread that serves clients.
    pub runtime: tokio::runtime::Handle,
    /// The config's `secret_env` (kept current by a reload): what the processes it starts do
    /// not inherit from warden's environment.
    pub secret_env: Arc<arc_swap::ArcSwap<Vec<String>>>,
}

/// A service said how many requests it serves at once.
#[derive(Debug, Clone, Copy)]
pub struct Learned {
    pub service: usize,
    pub slots: u32,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How often held requests whose clients went away are dropped from the queue.
const PRUNE_EVERY: Duration = Duration::from_millis(250);

pub(super) struct Owner {
    /// The state everyone reads; only this owner writes its state, pid, port and errors.
    pub(super) shared: Arc<Shared>,
    /// This service's place in the config, for the directory and the coordinator.
    pub(super) index: usize,
    /// Commands from handles (acquire, stop, unload, reconcile).
    rx: mpsc::UnboundedReceiver<Command>,
    /// Every handle is gone: shut down.
    rx_closed: bool,
    pub(super) ctx: OwnerContext,
    /// The pure lifecycle rules and the state they are in.
    pub(super) machine: Machine,
    /// Requests held through a start or a model load.
    pub(super) held: Held,
    /// Per model: callers waiting for its unload to finish.
    pub(super) unload_waiters: Vec<Vec<oneshot::Sender<Result<(), String>>>>,
    /// Model loads, unloads and listings report back here.
    pub(super) results_tx: mpsc::UnboundedSender<ModelResult>,
    results_rx: mpsc::UnboundedReceiver<ModelResult>,
    /// Bumped at every start and stop: results from an earlier run are ignored.
    pub(super) generation: u64,
    /// The start under way (room, then the driver), if any. Dropping it abandons the start
    /// and kills what it started.
    pub(super) starting: Option<BoxFut<Result<Running, StartFailure>>>,
    /// The running service (process, container or remote), watched for its exit.
    pub(super) running: Option<Running>,
    /// The stop under way, if any.
    pub(super) stopping: Option<BoxFut<()>>,
    /// Who waits for the stop under way.
    pub(super) stop_waiters: Vec<StopWaiter>,
    /// How the stop under way is logged when it ends.
    pub(super) idle_stop: StopLabel,
    /// The last start's failure, told to requests refused while the start backs off.
    pub(super) last_failure: Option<StartFailure>,
    /// When the start under way began, for the "ready after N ms" log line.
    pub(super) start_began: Option<Instant>,
    /// A pinned service that failed or exited starts again when this fires.
    pub(super) restart_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// warden is stopping: no new starts, refuse new requests.
    pub(super) shutting_down: bool,
    /// A reload changed or removed this service: it takes no new requests, stops once those
    /// it has are done, and then cancels this (a changed service's new owner waits for it).
    pub(super) retiring: Option<CancellationToken>,
    /// The owner this one replaces after a reload, stopped when this is cancelled: no start
    /// before then.
    pub(super) predecessor: Option<CancellationToken>,
}

/// Spawns the owner of service `index`. `predecessor`: a reload's earlier owner of the same
/// service, whose run must be over before this one starts anything.
pub fn spawn_owner(
    index: usize,
    config: Arc<ServiceConfig>,
    ctx: OwnerContext,
    predecessor: Option<CancellationToken>,
) -> ServiceHandle {
    let log = ServiceLog::new(ctx.state_dir.join("logs").join(format!("{}.log", config.name)));
    let models = config.models.len();
    let client = match &config.kind {
        ServiceKind::Remote(RemoteSpec { trust: Trust::Only(cas), .. }) => http::Clients::new(Some(cas.clone()), true),
        ServiceKind::Remote(RemoteSpec { trust: Trust::Insecure, .. }) => {
            warn!("Service {}: tls_insecure = true, its certificate is not verified", config.name);
            http::Clients::new(None, false)
        }
        _ => ctx.client.clone(),
    };
    let shared = Arc::new(Shared::new(config, log, client));
    let (tx, rx) = mpsc::unbounded_channel();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let mut owner = Owner {
        shared: shared.clone(),
        index,
        rx,
        rx_closed: false,
        ctx: ctx.clone(),
        machine: Machine::default(),
        held: Held::new(models),
        unload_waiters: (0..models).map(|_| Vec::new()).collect(),
        results_tx,
        results_rx,
        generation: 0,
        starting: None,
        running: None,
        stopping: None,
        stop_waiters: Vec::new(),
        idle_stop: StopLabel::Plain,
        last_failure: None,
        start_began: None,
        restart_timer: None,
        shutting_down: false,
        retiring: None,
        predecessor,
    };
    if matches!(owner.shared.config().kind, ServiceKind::Remote(_)) {
        // A hosted API is never started: it is up from the first instant, so no request
        // (and no status read) ever sees it "starting".
        owner.machine = Machine::always_running();
        owner.on_start_result(Ok(Running::Remote));
    }
    let span = tracing::info_span!("service", name = %shared.config().name);
    ctx.tasks.spawn_on(owner.run().instrument(span), &ctx.runtime);
    ServiceHandle { shared, tx }
}

async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn exited(running: &mut Option<Running>) -> Exit {
    match running {
        Some(r) => r.exited().await,
        None => std::future::pending().await,
    }
}

impl Owner {
    pub(super) fn name(&self) -> &str {
        self.shared.name()
    }

    async fn run(mut self) {
        // `spawn_owner` puts it there; the reload test (a service added through the admin API)
        // fails here if that ever changes.
        debug_assert_eq!(
            tokio::runtime::Handle::current().id(),
            self.ctx.runtime.id(),
            "owners run on the main runtime"
        );
        if self.shared.config().desired == Desired::On {
            self.apply(Event::Demand);
        }
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled(), if !self.shutting_down => self.begin_shutdown(),
                cmd = self.rx.recv(), if !self.rx_closed => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // A retiring owner's handles go when a reload replaces them: it still
                    // finishes what it serves.
                    None => {
                        self.rx_closed = true;
                        if self.retiring.is_none() {
                            self.begin_shutdown()
                        }
                    }
                },
                Some(result) = self.results_rx.recv() => self.on_model_result(result),
                result = maybe(&mut self.starting) => {
                    self.starting = None;
                    self.on_start_result(result);
                }
                () = maybe(&mut self.stopping) => {
                    self.stopping = None;
                    self.on_stopped();
                }
                exit = exited(&mut self.running) => self.on_exit(exit),
                () = maybe(&mut self.restart_timer) => {
                    self.restart_timer = None;
                    if !self.shutting_down && self.machine.state() == State::Failed {
                        self.apply(Event::Demand);
                    }
                }
                _ = prune.tick(), if !self.held.is_empty() => self.prune_held(),
                _ = self.shared.lease_dropped.notified(), if self.retiring.is_some() && !self.shutting_down => {
                    self.retire_when_done()
                }
            }
            if self.retiring.is_some() && !self.shutting_down {
                self.retire_when_done();
            }
            if self.shutting_down && self.starting.is_none() && self.stopping.is_none() && self.running.is_none() {
                break;
            }
        }
        self.fail_all_held(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
        for w in self.stop_waiters.drain(..) {
            w.finish();
        }
        if let Some(stopped) = self.retiring.take() {
            stopped.cancel();
        }
    }

    /// A reload changed or removed this service: no new requests; once what it serves and
    /// holds is done, it stops and this owner ends.
    fn on_retire(&mut self, stopped: CancellationToken) {
        info!("Service {}: changed or removed by a config reload; stopping once its requests are done", self.name());
        self.retiring = Some(stopped);
        self.restart_timer = None;
        self.retire_when_done();
    }

    fn retire_when_done(&mut self) {
        let busy = self.shared.live().in_flight > 0 || !self.held.is_empty() || self.starting.is_some();
        if !busy && !self.shutting_down {
            self.begin_shutdown();
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        self.fail_all_held(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { model, reply } => self.on_acquire(model, reply),
            Command::Stop { reason, done } => self.on_stop(reason, StopWaiter::Stop(done), StopLabel::IdleService),
            Command::UnloadModel { model, reason, done } => self.on_unload_model(model, reason, done),
            Command::Reconcile => self.reconcile(),
            Command::Retire { stopped } => self.on_retire(stopped),
        }
    }

    fn on_acquire(&mut self, model: Option<usize>, reply: Waiter) {
        if self.shutting_down || self.retiring.is_some() {
            let reason = match self.retiring {
                Some(_) => format!("service {} was changed or removed by a config reload; retry", self.name()),
                None => "warden is shutting down".into(),
            };
            let _ = reply.send(Err(Unavailable::Stopped { reason }));
            return;
        }
        if self.held.count() >= self.shared.config().max_queue {
            self.prune_held();
            if self.held.count() >= self.shared.config().max_queue {
                let _ = reply.send(Err(Unavailable::QueueFull { retry_after: Duration::from_secs(1) }));
                return;
            }
        }
        self.held.start.push(HeldRequest { model, reply });
        self.publish_queue();
        let fx = self.apply(Event::Demand);
        if let Some(retry_after) = fx.reject_for {
            let failure = self.last_failure.clone().unwrap_or_else(|| StartFailure::transient("previous start failed"));
            self.fail_held_start(|| Unavailable::StartFailed {
                reason: format!("{} (next try in {} ms)", failure.reason, retry_after.as_millis()),
                log_tail: failure.log_tail.clone(),
                retry_after,
                permanent: failure.permanent,
            });
        }
    }

    /// Feeds an event to the machine, publishes the new state, carries out the effects.
    pub(super) fn apply(&mut self, event: Event) -> policy::lifecycle::Effects {
        let fx = self.machine.on(event, Instant::now());
        let (before, now) = {
            let mut live = self.shared.live();
            (std::mem::replace(&mut live.state, self.machine.state()), self.machine.state())
        };
        if before != now {
            let (name, error) = (self.name(), self.shared.live().last_error.clone());
            let data = serde_json::json!({"service": name, "state": now, "was": before, "error": error});
            self.ctx.events.emit("service", data);
        }
        if fx.start {
            self.begin_start();
        }
        if fx.stop {
            self.begin_stop();
        }
        if fx.release_waiters {
            self.release_held();
        }
        if fx.fail_waiters {
            let failure = self.last_failure.clone();
            let retry_after = start_backoff(self.machine.failures());
            match (self.machine.state(), failure) {
                (State::Failed, Some(f)) => self.fail_held_start(|| Unavailable::StartFailed {
                    reason: f.reason.clone(),
                    log_tail: f.log_tail.clone(),
                    retry_after,
                    permanent: f.permanent,
                }),
                _ => self.fail_held_start(|| Unavailable::Stopped { reason: "stopped while starting".into() }),
            }
        }
        fx
    }
}
