//! The owner task of one service: the only code that starts or stops it, or loads and unloads
//! its models. Requests and the idle monitor send it commands; it feeds service events to the
//! pure [`Machine`] and carries out the effects. Model handling is in `models.rs`.

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
use super::lease::Lease;
use super::models::ModelResult;
use super::{Command, ServiceHandle, Shared, StopReason, Unavailable};
use crate::base::http::HttpClient;
use crate::config::{Desired, ServiceConfig, ServiceKind};
use crate::driver::logs::ServiceLog;
use crate::driver::{self, Exit, Running, StartContext, StartFailure};
use crate::resources::coordinator::Coordinator;
use policy::idle::human_idle;
use policy::lifecycle::{start_backoff, Event, Machine, State};

/// What every owner shares: where to write, how to probe, and the shutdown signal.
#[derive(Clone)]
pub struct OwnerContext {
    pub state_dir: PathBuf,
    /// Decides whether there is room to start, and offloads what must go.
    pub coordinator: Arc<Coordinator>,
    /// Where discovered models are published for routing.
    pub directory: Arc<Directory>,
    pub client: HttpClient,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(super) type Waiter = oneshot::Sender<Result<Lease, Unavailable>>;

/// How often held requests whose clients went away are dropped from the queue.
const PRUNE_EVERY: Duration = Duration::from_millis(250);
/// A pinned (`desired = "on"`) service that ended on its own is started again after this.
const PINNED_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Who waits for a stop to finish, and what they are told.
pub(super) enum StopWaiter {
    Stop(oneshot::Sender<()>),
    Unload(oneshot::Sender<Result<(), String>>),
}

/// What a guarded stop is logged as when it finishes.
#[derive(PartialEq, Eq)]
pub(super) enum StopLabel {
    Plain,
    IdleService,
    /// A single-model service stopped because its model's keep-alive ran out.
    IdleModel(String),
    /// Stopped by the coordinator to make room.
    Offloaded,
}

pub(super) struct Owner {
    pub(super) shared: Arc<Shared>,
    /// This service's place in the config, for the directory.
    pub(super) index: usize,
    rx: mpsc::UnboundedReceiver<Command>,
    rx_closed: bool,
    pub(super) ctx: OwnerContext,
    pub(super) machine: Machine,
    /// Requests held until the service is ready, oldest first, with the model each wants.
    pub(super) waiters: Vec<(Option<usize>, Waiter)>,
    /// Per model: requests held until it is loaded.
    pub(super) model_waiters: Vec<Vec<Waiter>>,
    /// Per model: callers waiting for its unload to finish.
    pub(super) unload_waiters: Vec<Vec<oneshot::Sender<Result<(), String>>>>,
    /// Model loads, unloads and listings report back here.
    pub(super) results_tx: mpsc::UnboundedSender<ModelResult>,
    results_rx: mpsc::UnboundedReceiver<ModelResult>,
    /// Bumped at every start and stop: results from an earlier run are ignored.
    pub(super) generation: u64,
    starting: Option<BoxFut<Result<Running, StartFailure>>>,
    running: Option<Running>,
    stopping: Option<BoxFut<()>>,
    pub(super) stop_waiters: Vec<StopWaiter>,
    pub(super) idle_stop: StopLabel,
    last_failure: Option<StartFailure>,
    start_began: Option<Instant>,
    restart_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    shutting_down: bool,
}

pub fn spawn_owner(index: usize, config: Arc<ServiceConfig>, ctx: OwnerContext) -> ServiceHandle {
    let log = ServiceLog::new(ctx.state_dir.join("logs").join(format!("{}.log", config.name)));
    let models = config.models.len();
    let shared = Arc::new(Shared::new(config, log));
    let (tx, rx) = mpsc::unbounded_channel();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let owner = Owner {
        shared: shared.clone(),
        index,
        rx,
        rx_closed: false,
        ctx: ctx.clone(),
        machine: Machine::default(),
        waiters: Vec::new(),
        model_waiters: (0..models).map(|_| Vec::new()).collect(),
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
    };
    let span = tracing::info_span!("service", name = %shared.config.name);
    ctx.tasks.spawn(owner.run().instrument(span));
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
        &self.shared.config.name
    }

    async fn run(mut self) {
        if self.shared.config.desired == Desired::On {
            self.apply(Event::Demand);
        }
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled(), if !self.shutting_down => self.begin_shutdown(),
                cmd = self.rx.recv(), if !self.rx_closed => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => { self.rx_closed = true; self.begin_shutdown() }
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
                _ = prune.tick(), if self.holds_requests() => self.prune_waiters(),
            }
            if self.shutting_down && self.starting.is_none() && self.stopping.is_none() && self.running.is_none() {
                break;
            }
        }
        self.fail_all(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
        for w in self.stop_waiters.drain(..) {
            w.finish();
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        self.fail_all(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { model, reply } => self.on_acquire(model, reply),
            Command::Stop { reason, done } => self.on_stop(reason, StopWaiter::Stop(done), StopLabel::IdleService),
            Command::UnloadModel { model, reason, done } => self.on_unload_model(model, reason, done),
            Command::Reconcile => self.reconcile(),
        }
    }

    fn on_acquire(&mut self, model: Option<usize>, reply: Waiter) {
        if self.shutting_down {
            let _ = reply.send(Err(Unavailable::Stopped { reason: "warden is shutting down".into() }));
            return;
        }
        if self.held() >= self.shared.config.max_queue {
            self.prune_waiters();
            if self.held() >= self.shared.config.max_queue {
                let _ = reply.send(Err(Unavailable::QueueFull { retry_after: Duration::from_secs(1) }));
                return;
            }
        }
        self.waiters.push((model, reply));
        self.publish_queue();
        let fx = self.apply(Event::Demand);
        if let Some(retry_after) = fx.reject_for {
            let failure = self
                .last_failure
                .clone()
                .unwrap_or_else(|| StartFailure { reason: "previous start failed".into(), log_tail: Vec::new() });
            self.fail_waiters(|| Unavailable::StartFailed {
                reason: format!("{} (next try in {} ms)", failure.reason, retry_after.as_millis()),
                log_tail: failure.log_tail.clone(),
                retry_after,
            });
        }
    }

    /// `label` says how a successful idle stop is logged (a service, or a single model).
    pub(super) fn on_stop(&mut self, reason: StopReason, done: StopWaiter, label: StopLabel) {
        let guarded = match reason {
            StopReason::Idle { idle_for } => Some(Some(idle_for)),
            StopReason::Offload => Some(None),
            StopReason::Admin => None,
        };
        if let Some(idle_for) = guarded {
            // Re-check under the lease lock: a request may have arrived since the monitor looked.
            // Marking the state stopping under that same lock keeps new leases off the fast path.
            let mut live = self.shared.live();
            if live.state != State::Running || live.in_flight > 0 || self.holds_requests() {
                drop(live);
                done.finish();
                return;
            }
            live.state = State::Stopping;
            drop(live);
            let label = if reason == StopReason::Offload { StopLabel::Offloaded } else { label };
            match (&label, idle_for) {
                (StopLabel::IdleModel(model), _) => info!("Model {model} keep-alive expired, unloading..."),
                (StopLabel::IdleService, Some(idle_for)) => {
                    info!("Service {} has been idle for {}, stopping...", self.name(), human_idle(idle_for))
                }
                _ => {}
            }
            self.idle_stop = label;
        } else {
            self.idle_stop = StopLabel::Plain;
            info!("Stopping service {} (requested)", self.name());
        }
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        if self.machine.state() == State::Stopping {
            self.stop_waiters.push(done);
        } else {
            self.idle_stop = StopLabel::Plain;
            done.finish();
        }
    }

    fn on_start_result(&mut self, result: Result<Running, StartFailure>) {
        let took = self.start_began.take().map(|t| t.elapsed()).unwrap_or_default();
        match result {
            Ok(running) => {
                let upstream = match (&self.shared.config.kind, &self.shared.config.upstream) {
                    (_, Some(up)) => up.clone(),
                    (ServiceKind::Process(_), None) => format!("127.0.0.1:{}", self.port_in_use()),
                    (ServiceKind::Container(_) | ServiceKind::Remote(_), None) => {
                        unreachable!("containers and remotes always have a url")
                    }
                };
                info!("Service {} is ready after {} ms (pid {:?})", self.name(), took.as_millis(), running.pid());
                {
                    let now = Instant::now();
                    let mut live = self.shared.live();
                    live.pid = running.pid();
                    live.upstream = Some(upstream.into());
                    live.meter = running.meter(self.shared.config.device);
                    live.idle_since = Some(now);
                    live.running_since = Some(now);
                    live.last_error = None;
                    live.starts_total += 1;
                    for m in &mut live.models {
                        m.idle_since = Some(now);
                    }
                }
                self.running = Some(running);
                self.last_failure = None;
                self.apply(Event::StartSucceeded);
                // Learn what a multi-model server offers and has loaded.
                self.reconcile();
            }
            Err(failure) => {
                warn!("Service {} failed to start: {}", self.name(), failure.reason);
                {
                    let mut live = self.shared.live();
                    live.last_error = Some(failure.reason.clone());
                    live.start_failures_total += 1;
                }
                self.last_failure = Some(failure.clone());
                self.apply(Event::StartFailed);
                if self.shared.config.desired == Desired::On && !self.shutting_down {
                    self.restart_timer = Some(Box::pin(tokio::time::sleep(start_backoff(self.machine.failures()))));
                }
            }
        }
    }

    fn port_in_use(&self) -> u16 {
        self.shared.live().port.unwrap_or(self.shared.config.port)
    }

    fn on_stopped(&mut self) {
        self.clear_running();
        match std::mem::replace(&mut self.idle_stop, StopLabel::Plain) {
            StopLabel::IdleService => info!("Successfully stopped idle service {}", self.name()),
            StopLabel::IdleModel(model) => info!("Successfully unloaded idle model {model}"),
            StopLabel::Offloaded => info!("Service {} stopped (offloaded)", self.name()),
            StopLabel::Plain => info!("Service {} stopped", self.name()),
        }
        self.apply(Event::StopFinished);
        for w in self.stop_waiters.drain(..) {
            w.finish();
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        self.running = None;
        let what = if exit.failed { "exited unexpectedly" } else { "was stopped" };
        warn!("Service {} {what} ({})", self.name(), exit.reason);
        self.shared.log.note(&format!("{what} ({})", exit.reason));
        self.clear_running();
        self.shared.live().last_error = Some(format!("{what} ({})", exit.reason));
        self.apply(if exit.failed { Event::Exited } else { Event::StoppedOutside });
        if self.shared.config.desired == Desired::On && !self.shutting_down {
            self.restart_timer = Some(Box::pin(tokio::time::sleep(PINNED_RESTART_DELAY)));
        }
    }

    /// The service is no longer running: forget where it was and what it had loaded.
    fn clear_running(&mut self) {
        self.generation += 1;
        {
            let mut live = self.shared.live();
            live.pid = None;
            live.port = None;
            live.upstream = None;
            live.meter = None;
            live.running_since = None;
            for m in &mut live.models {
                m.loaded = false;
                m.changing = false;
            }
        }
        self.fail_model_waiters(|| Unavailable::Stopped { reason: "the service stopped".into() });
        for waiters in &mut self.unload_waiters {
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
    }

    /// Feeds an event to the machine, publishes the new state, carries out the effects.
    fn apply(&mut self, event: Event) -> policy::lifecycle::Effects {
        let fx = self.machine.on(event, Instant::now());
        self.shared.live().state = self.machine.state();
        if fx.start {
            self.begin_start();
        }
        if fx.stop {
            self.begin_stop();
        }
        if fx.release_waiters {
            self.release_waiters();
        }
        if fx.fail_waiters {
            let failure = self.last_failure.clone();
            let retry_after = start_backoff(self.machine.failures());
            match (self.machine.state(), failure) {
                (State::Failed, Some(f)) => self.fail_waiters(|| Unavailable::StartFailed {
                    reason: f.reason.clone(),
                    log_tail: f.log_tail.clone(),
                    retry_after,
                }),
                _ => self.fail_waiters(|| Unavailable::Stopped { reason: "stopped while starting".into() }),
            }
        }
        fx
    }

    fn begin_start(&mut self) {
        let cfg = self.shared.config.clone();
        info!("Starting service {}", cfg.name);
        self.generation += 1;
        self.start_began = Some(Instant::now());
        let port = if cfg.port != 0 { cfg.port } else { free_port().unwrap_or(0) };
        if matches!(cfg.kind, ServiceKind::Process(_)) {
            self.shared.live().port = Some(port);
        }
        let log = self.shared.log.clone();
        let ctx = self.ctx.clone();
        let index = self.index;
        self.starting = Some(Box::pin(async move {
            let deadline = Instant::now() + cfg.start_timeout;
            let start = async {
                // Room first (offloading what must go), then the start itself; one deadline.
                ctx.coordinator
                    .make_room(index, deadline)
                    .await
                    .map_err(|reason| StartFailure { reason, log_tail: Vec::new() })?;
                driver::start(StartContext {
                    config: &cfg,
                    port,
                    state_dir: &ctx.state_dir,
                    log: &log,
                    client: &ctx.client,
                    tasks: &ctx.tasks,
                })
                .await
            };
            match tokio::time::timeout(cfg.start_timeout, start).await {
                Ok(result) => result,
                Err(_) => {
                    // The start future (and with it the process group) is dropped: killed.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(StartFailure {
                        reason: format!("not healthy within start_timeout ({:?})", cfg.start_timeout),
                        log_tail: log.tail(20),
                    })
                }
            }
        }));
    }

    fn begin_stop(&mut self) {
        // Dropping a start in progress kills its process group (ProcessHandle's Drop).
        self.starting = None;
        self.start_began = None;
        let timeout = self.shared.config.stop_timeout;
        let log = self.shared.log.clone();
        self.stopping = Some(match self.running.take() {
            Some(running) => Box::pin(async move { running.stop(timeout, &log).await }),
            None => Box::pin(std::future::ready(())),
        });
    }

    /// The service is running: lease every held request whose model is ready; start loading
    /// the models the others want.
    fn release_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        let mut ready = Vec::new();
        let mut need_load = Vec::new();
        {
            let live = self.shared.live();
            for (model, waiter) in waiters {
                match model {
                    Some(m) if !live.model_loaded(m) || live.models[m].changing => need_load.push((m, waiter)),
                    _ => ready.push((model, waiter)),
                }
            }
        }
        self.lease_to(ready);
        for (m, waiter) in need_load {
            self.wait_for_model(m, waiter);
        }
        self.publish_queue();
    }

    /// Hands a lease to each waiter. Sent outside the lock: a lease whose client left is
    /// dropped on the spot, and dropping a lease locks.
    pub(super) fn lease_to(&mut self, waiters: Vec<(Option<usize>, Waiter)>) {
        let leases: Vec<Option<Lease>> = {
            let mut live = self.shared.live();
            let upstream = live.upstream.clone();
            waiters
                .iter()
                .map(|(model, _)| upstream.clone().map(|up| Lease::take(self.shared.clone(), &mut live, up, *model)))
                .collect()
        };
        for ((_, waiter), lease) in waiters.into_iter().zip(leases) {
            let _ = waiter.send(lease.ok_or(Unavailable::Stopped { reason: "the service stopped".into() }));
        }
    }

    fn fail_waiters(&mut self, error: impl Fn() -> Unavailable) {
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(Err(error()));
        }
        self.publish_queue();
    }

    fn fail_all(&mut self, error: impl Fn() -> Unavailable) {
        self.fail_waiters(&error);
        self.fail_model_waiters(&error);
    }

    fn prune_waiters(&mut self) {
        self.waiters.retain(|(_, w)| !w.is_closed());
        for waiters in &mut self.model_waiters {
            waiters.retain(|w| !w.is_closed());
        }
        self.publish_queue();
    }

    /// Requests held for a start or a model load.
    fn held(&self) -> usize {
        self.waiters.len() + self.model_waiters.iter().map(Vec::len).sum::<usize>()
    }

    pub(super) fn holds_requests(&self) -> bool {
        self.held() > 0
    }

    pub(super) fn publish_queue(&self) {
        self.shared.live().queued = self.held();
    }
}

impl StopWaiter {
    pub(super) fn finish(self) {
        match self {
            StopWaiter::Stop(done) => {
                let _ = done.send(());
            }
            StopWaiter::Unload(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }
}

/// A port the OS says is free now. Another program could take it before the service binds it;
/// the start then fails and the next request tries again with a fresh port.
fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}
