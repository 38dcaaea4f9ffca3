//! The owner task of one service: the only code that starts or stops it. Requests and the idle
//! monitor send it commands; it feeds events to the pure [`Machine`] and carries out the effects.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::lease::Lease;
use super::lifecycle::{start_backoff, Event, Machine, State};
use super::{Command, ServiceHandle, Shared, StopReason, Unavailable};
use crate::config::{Desired, ServiceConfig, ServiceKind};
use crate::driver::logs::ServiceLog;
use crate::driver::process::{self, ProcessHandle, StartRequest};
use crate::driver::StartFailure;
use crate::idle::policy::human_idle;
use crate::proxy::HttpClient;

/// What every owner shares: where to write, how to probe, and the shutdown signal.
#[derive(Clone)]
pub struct OwnerContext {
    pub state_dir: PathBuf,
    pub client: HttpClient,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Waiter = oneshot::Sender<Result<Lease, Unavailable>>;

/// How often held requests whose clients went away are dropped from the queue.
const PRUNE_EVERY: Duration = Duration::from_millis(250);
/// A pinned (`desired = "on"`) service that ended on its own is started again after this.
const PINNED_RESTART_DELAY: Duration = Duration::from_secs(1);

struct Owner {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    rx_closed: bool,
    ctx: OwnerContext,
    machine: Machine,
    /// Requests held until the service is ready, oldest first.
    waiters: Vec<Waiter>,
    starting: Option<BoxFut<Result<ProcessHandle, StartFailure>>>,
    running: Option<ProcessHandle>,
    stopping: Option<BoxFut<()>>,
    /// Callers of `stop` waiting for the stop to finish.
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Set while stopping because idle: the stop is logged as an idle stop.
    idle_stop: bool,
    last_failure: Option<StartFailure>,
    start_began: Option<Instant>,
    restart_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    shutting_down: bool,
}

pub fn spawn_owner(config: Arc<ServiceConfig>, ctx: OwnerContext) -> ServiceHandle {
    let log = ServiceLog::new(ctx.state_dir.join("logs").join(format!("{}.log", config.name)));
    let shared = Arc::new(Shared::new(config, log));
    let (tx, rx) = mpsc::unbounded_channel();
    let owner = Owner {
        shared: shared.clone(),
        rx,
        rx_closed: false,
        ctx: ctx.clone(),
        machine: Machine::default(),
        waiters: Vec::new(),
        starting: None,
        running: None,
        stopping: None,
        stop_waiters: Vec::new(),
        idle_stop: false,
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

async fn exited(running: &mut Option<ProcessHandle>) -> String {
    match running {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

impl Owner {
    fn name(&self) -> &str {
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
                result = maybe(&mut self.starting) => {
                    self.starting = None;
                    self.on_start_result(result);
                }
                () = maybe(&mut self.stopping) => {
                    self.stopping = None;
                    self.on_stopped();
                }
                why = exited(&mut self.running) => self.on_exit(why),
                () = maybe(&mut self.restart_timer) => {
                    self.restart_timer = None;
                    if !self.shutting_down && self.machine.state() == State::Failed {
                        self.apply(Event::Demand);
                    }
                }
                _ = prune.tick(), if !self.waiters.is_empty() => self.prune_waiters(),
            }
            if self.shutting_down && self.starting.is_none() && self.stopping.is_none() && self.running.is_none() {
                break;
            }
        }
        self.fail_waiters(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        self.fail_waiters(|| Unavailable::Stopped { reason: "warden is shutting down".into() });
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire(reply) => self.on_acquire(reply),
            Command::Stop { reason, done } => self.on_stop(reason, done),
        }
    }

    fn on_acquire(&mut self, reply: Waiter) {
        if self.shutting_down {
            let _ = reply.send(Err(Unavailable::Stopped { reason: "warden is shutting down".into() }));
            return;
        }
        if self.waiters.len() >= self.shared.config.max_queue {
            self.prune_waiters();
            if self.waiters.len() >= self.shared.config.max_queue {
                let _ = reply.send(Err(Unavailable::QueueFull { retry_after: Duration::from_secs(1) }));
                return;
            }
        }
        self.waiters.push(reply);
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

    fn on_stop(&mut self, reason: StopReason, done: oneshot::Sender<()>) {
        if let StopReason::Idle { idle_for } = reason {
            // Re-check under the lease lock: a request may have arrived since the monitor looked.
            // Marking the state stopping under that same lock keeps new leases off the fast path.
            let mut live = self.shared.live();
            if live.state != State::Running || live.in_flight > 0 || !self.waiters.is_empty() {
                let _ = done.send(());
                return;
            }
            live.state = State::Stopping;
            drop(live);
            info!("Service {} has been idle for {}, stopping...", self.name(), human_idle(idle_for));
            self.idle_stop = true;
        } else {
            info!("Stopping service {} (requested)", self.name());
        }
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        if self.machine.state() == State::Stopping {
            self.stop_waiters.push(done);
        } else {
            let _ = done.send(());
        }
    }

    fn on_start_result(&mut self, result: Result<ProcessHandle, StartFailure>) {
        let took = self.start_began.take().map(|t| t.elapsed()).unwrap_or_default();
        match result {
            Ok(handle) => {
                info!("Service {} is ready after {} ms (pid {})", self.name(), took.as_millis(), handle.pid());
                {
                    let mut live = self.shared.live();
                    live.pid = Some(handle.pid());
                    live.port = Some(handle.port());
                    live.idle_since = Some(Instant::now());
                    live.last_error = None;
                }
                self.running = Some(handle);
                self.last_failure = None;
                self.apply(Event::StartSucceeded);
            }
            Err(failure) => {
                warn!("Service {} failed to start: {}", self.name(), failure.reason);
                self.shared.live().last_error = Some(failure.reason.clone());
                self.last_failure = Some(failure.clone());
                self.apply(Event::StartFailed);
                if self.shared.config.desired == Desired::On && !self.shutting_down {
                    self.restart_timer = Some(Box::pin(tokio::time::sleep(start_backoff(self.machine.failures()))));
                }
            }
        }
    }

    fn on_stopped(&mut self) {
        {
            let mut live = self.shared.live();
            live.pid = None;
            live.port = None;
        }
        if std::mem::take(&mut self.idle_stop) {
            info!("Successfully stopped idle service {}", self.name());
        } else {
            info!("Service {} stopped", self.name());
        }
        self.apply(Event::StopFinished);
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn on_exit(&mut self, why: String) {
        self.running = None;
        warn!("Service {} exited unexpectedly ({why})", self.name());
        self.shared.log.note(&format!("exited unexpectedly ({why})"));
        {
            let mut live = self.shared.live();
            live.pid = None;
            live.port = None;
            live.last_error = Some(format!("exited unexpectedly ({why})"));
        }
        self.apply(Event::Exited);
        if self.shared.config.desired == Desired::On && !self.shutting_down {
            self.restart_timer = Some(Box::pin(tokio::time::sleep(PINNED_RESTART_DELAY)));
        }
    }

    /// Feeds an event to the machine, publishes the new state, carries out the effects.
    fn apply(&mut self, event: Event) -> super::lifecycle::Effects {
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
        self.start_began = Some(Instant::now());
        let port = if cfg.port != 0 { cfg.port } else { free_port().unwrap_or(0) };
        let log = self.shared.log.clone();
        let ctx = self.ctx.clone();
        self.starting = Some(Box::pin(async move {
            let ServiceKind::Process(spec) = &cfg.kind;
            let req = StartRequest {
                service: &cfg.name,
                spec,
                health: &cfg.health,
                port,
                state_dir: &ctx.state_dir,
                log: &log,
                client: &ctx.client,
                tasks: &ctx.tasks,
            };
            match tokio::time::timeout(cfg.start_timeout, process::start(req)).await {
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
            Some(handle) => Box::pin(async move { handle.stop(timeout, &log).await }),
            None => Box::pin(std::future::ready(())),
        });
    }

    fn release_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        let leases: Vec<Lease> = {
            let mut live = self.shared.live();
            let Some(port) = live.port else { return };
            live.queued = 0;
            waiters.iter().map(|_| Lease::take(self.shared.clone(), &mut live, port)).collect()
        };
        // Sent outside the lock: a lease whose client left is dropped here, which locks.
        for (waiter, lease) in waiters.into_iter().zip(leases) {
            let _ = waiter.send(Ok(lease));
        }
    }

    fn fail_waiters(&mut self, error: impl Fn() -> Unavailable) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(error()));
        }
        self.publish_queue();
    }

    fn prune_waiters(&mut self) {
        self.waiters.retain(|w| !w.is_closed());
        self.publish_queue();
    }

    fn publish_queue(&self) {
        self.shared.live().queued = self.waiters.len();
    }
}

/// A port the OS says is free now. Another program could take it before the service binds it;
/// the start then fails and the next request tries again with a fresh port.
fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}
