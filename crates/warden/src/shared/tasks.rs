//! The shared state's background tasks, each named and stopped on shutdown:
//! - `shared writes`: sends settles and cached answers in order; while Redis is away it keeps
//!   the settles and retries (a settle is idempotent by request id) and drops the answers (a
//!   miss, never a wrong answer); on shutdown it drains what it can, bounded.
//! - `shared releases`: listens on `{prefix}freed` and wakes this replica's waiters.
//! - `shared refresh`: pushes back the expiry of what live requests hold, every third of the
//!   TTL, so only a dead replica's holds expire.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Shared, Write};

/// How long shutdown waits for settles still to be sent.
const DRAIN: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(500);

impl Shared {
    /// Starts the tasks on warden's tracker, and puts this replica's spend in place.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker, shutdown: CancellationToken) {
        let rx = self.writes_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rx) = rx {
            let writes = self.clone().writes_loop(rx, shutdown.clone());
            tasks.spawn(writes.instrument(tracing::info_span!("shared writes")));
        }
        tasks.spawn(self.clone().releases(shutdown.clone()).instrument(tracing::info_span!("shared releases")));
        tasks.spawn(self.clone().refresh(shutdown).instrument(tracing::info_span!("shared refresh")));
    }

    /// Sends one write; Err: a settle that must be tried again.
    async fn write(&self, w: &Write) -> Result<(), String> {
        match w {
            Write::Settle(s) => self.settle_now(&s.held, s.cost, &s.back).await,
            Write::Answer { key, value, ttl } => {
                let _ = self.keep(key, value, *ttl).await;
                Ok(())
            }
        }
    }

    async fn writes_loop(self: Arc<Self>, mut rx: UnboundedReceiver<Write>, shutdown: CancellationToken) {
        loop {
            let w = tokio::select! {
                w = rx.recv() => match w { Some(w) => w, None => return },
                _ = shutdown.cancelled() => break,
            };
            while let Err(e) = self.write(&w).await {
                tracing::debug!("a settle is not sent yet: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.cancelled() => {
                        self.drain(Some(w), &mut rx).await;
                        return;
                    }
                }
            }
        }
        self.drain(None, &mut rx).await;
    }

    /// Sends what is left, for at most `DRAIN`. A settle that cannot be sent is in this
    /// replica's ledger: the next start puts it back into Redis (`reseed`).
    async fn drain(&self, first: Option<Write>, rx: &mut UnboundedReceiver<Write>) {
        let deadline = tokio::time::Instant::now() + DRAIN;
        let mut left = first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())).collect::<Vec<_>>();
        while let Some(w) = left.first() {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            match self.write(w).await {
                Ok(()) => {
                    left.remove(0);
                }
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        }
        let settles = left.iter().filter(|w| matches!(w, Write::Settle(_))).count();
        if settles > 0 {
            tracing::warn!(
                "{settles} settles could not reach the shared state at {}; this replica's ledger has them and the next start puts them back",
                self.url
            );
        }
    }

    async fn releases(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = self.channel();
        while !shutdown.is_cancelled() {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        // Anything freed while we were away: let the waiters look.
                        self.freed.notify_waiters();
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                m = messages.next() => match m {
                                    Some(_) => self.freed.notify_waiters(),
                                    None => break,
                                },
                                _ = shutdown.cancelled() => return,
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!("shared releases: cannot subscribe: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn refresh(self: Arc<Self>, shutdown: CancellationToken) {
        let (month, _) = crate::base::clock::month_and_minute();
        if let Err(e) = self.reseed(month).await {
            tracing::warn!(
                "Shared state at {}: this replica's spend is put in place once it is reachable ({e})",
                self.url
            );
        }
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            let pairs: Vec<(String, String)> = {
                let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                live.iter().flat_map(|(id, keys)| keys.iter().map(move |k| (k.clone(), id.clone()))).collect()
            };
            if pairs.is_empty() {
                continue;
            }
            let mut invocation = super::REFRESH.prepare_invoke();
            invocation.arg(self.ttl.as_millis() as u64);
            for (key, id) in &pairs {
                invocation.key(key).arg(id);
            }
            let _: Result<i64, String> = self.run(&invocation).await;
        }
    }
}
