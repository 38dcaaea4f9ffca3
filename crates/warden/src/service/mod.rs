//! One service: its owner task (`owner`), the pure lifecycle rules (`lifecycle`), and the
//! leases requests hold on it (`lease`).
//!
//! Who writes what: the owner task alone changes `Live::state`, `pid`, `port` and `last_error`;
//! leases alone change `in_flight` and the idle clock. Both happen under one small mutex, which
//! is what makes "stop only when no lease is held" race-free.

pub mod lease;
pub mod lifecycle;
mod owner;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::config::ServiceConfig;
use crate::driver::logs::ServiceLog;
use lease::Lease;
use lifecycle::State;
pub use owner::{spawn_owner, OwnerContext};

/// What everyone may read about a service, and the lease count.
#[derive(Debug)]
pub struct Live {
    pub state: State,
    pub in_flight: u32,
    pub queued: usize,
    /// Wall-clock time of the last lease taken or dropped, for people.
    pub last_used: Option<SystemTime>,
    /// When the idle clock started: the last lease dropped, or the service became ready.
    pub idle_since: Option<Instant>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub last_error: Option<String>,
}

pub struct Shared {
    pub config: Arc<ServiceConfig>,
    live: Mutex<Live>,
    /// The service's `idle_sleep`, changeable at run time through the admin API.
    idle_sleep: AtomicBool,
    pub log: ServiceLog,
}

impl Shared {
    pub fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn idle_sleep(&self) -> bool {
        self.idle_sleep.load(Ordering::Relaxed)
    }

    pub fn set_idle_sleep(&self, on: bool) {
        self.idle_sleep.store(on, Ordering::Relaxed)
    }

    /// The fast path: a lease on a running service without a message to its owner.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let mut live = self.live();
        if live.state != State::Running {
            return None;
        }
        let port = live.port?;
        Some(Lease::take(self.clone(), &mut live, port))
    }
}

/// Why a request could not get the service.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// More requests are held than `max_queue`.
    QueueFull { retry_after: Duration },
    /// The start failed (or a previous one did and we are backing off).
    StartFailed { reason: String, log_tail: Vec<String>, retry_after: Duration },
    /// warden is shutting down or the service was stopped while the request waited.
    Stopped { reason: String },
}

pub struct Acquired {
    pub lease: Lease,
    /// Set when this request waited for a start: how long.
    pub cold_start: Option<Duration>,
}

pub(crate) enum Command {
    Acquire(oneshot::Sender<Result<Lease, Unavailable>>),
    Stop { reason: StopReason, done: oneshot::Sender<()> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Operator asked: stop now.
    Admin,
    /// The idle monitor found it idle this long; stop only if still idle.
    Idle { idle_for: Duration },
}

/// The handle everyone else holds: shared state to read, a mailbox to the owner.
#[derive(Clone)]
pub struct ServiceHandle {
    pub shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// A lease on the running service, starting it if needed and waiting (bounded by the
    /// service's start_timeout, enforced by its owner). Dropping this future leaves the queue.
    pub async fn acquire(&self) -> Result<Acquired, Unavailable> {
        if let Some(lease) = self.shared.try_lease() {
            return Ok(Acquired { lease, cold_start: None });
        }
        let t0 = Instant::now();
        let (tx, rx) = oneshot::channel();
        let gone = || Unavailable::Stopped { reason: "warden is shutting down".into() };
        self.tx.send(Command::Acquire(tx)).map_err(|_| gone())?;
        let lease = rx.await.map_err(|_| gone())??;
        Ok(Acquired { lease, cold_start: Some(t0.elapsed()) })
    }

    /// Tells the owner the service looks idle; it stops it unless a request came in meanwhile.
    pub fn request_idle_stop(&self, idle_for: Duration) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.send(Command::Stop { reason: StopReason::Idle { idle_for }, done });
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
    fn new(config: Arc<ServiceConfig>, log: ServiceLog) -> Self {
        Shared {
            idle_sleep: AtomicBool::new(config.idle_sleep),
            config,
            live: Mutex::new(Live {
                state: State::Stopped,
                in_flight: 0,
                queued: 0,
                last_used: None,
                idle_since: None,
                pid: None,
                port: None,
                last_error: None,
            }),
            log,
        }
    }
}
