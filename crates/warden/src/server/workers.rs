//! The threads that serve client connections: one single-threaded runtime each, as nginx runs
//! one event loop per worker. A connection, the request on it and the upstream call it makes
//! all run on one thread, so handing a request to its upstream connection and its answer back
//! is a local queue push, not a cross-thread wake-up; on tokio's work-stealing runtime those
//! wake-ups cost about 30 % of warden's CPU per proxied request (BENCHMARKS.md, P1).
//!
//! The rest of warden (service owners, admission's timer, the coordinator) stays on the main
//! runtime. Work a request starts that outlives it (an async job, a batch) runs on its worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

/// How long a worker's runtime waits at shutdown for its blocking tasks before leaving them.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(5);

/// Serving threads when `[server].workers` is not set: half the CPUs, at least one. warden
/// shares its machine with the model servers it fronts, which want every core they can get,
/// and one serving thread proxies well over 10,000 requests a second (BENCHMARKS.md, P1).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1)
}

/// The serving threads. `stop` ends and joins them, last, after every task a request may have
/// started has ended; dropped without it, they end on their own, unjoined.
pub struct Workers {
    spread: Arc<Spread>,
    threads: Vec<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Where new connections go: shared with the accept loop.
pub struct Spread {
    workers: Vec<Worker>,
    /// Where the next search for the least busy worker starts, so ties take turns.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
}

/// A connection's place on a worker; the worker's count goes down when it is dropped.
pub struct Placed {
    pub handle: Handle,
    open: Arc<AtomicUsize>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` serving threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let (mut workers, mut threads) = (Vec::new(), Vec::new());
        for i in 0..n.max(1) {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let thread = std::thread::Builder::new().name(format!("warden-front-{i}")).spawn(move || {
                crate::base::http::serve_here(i);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(SHUTDOWN_WITHIN);
            })?;
            workers.push(Worker { handle, open: Default::default() });
            threads.push((stop, thread));
        }
        Ok(Workers { spread: Arc::new(Spread { workers, next: AtomicUsize::new(0) }), threads })
    }

    pub fn spread(&self) -> Arc<Spread> {
        self.spread.clone()
    }

    /// Stops every worker and waits for its thread (blocking: call it where blocking is fine).
    pub fn stop(self) {
        let (stops, threads): (Vec<_>, Vec<_>) = self.threads.into_iter().unzip();
        drop(stops);
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Spread {
    /// The worker for a new connection: the one serving the fewest, ties taken in turn.
    pub fn place(&self) -> Placed {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        let w = (0..n)
            .map(|k| &self.workers[(start + k) % n])
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .expect("at least one worker");
        w.open.fetch_add(1, Ordering::Relaxed);
        Placed { handle: w.handle.clone(), open: w.open.clone() }
    }
}
