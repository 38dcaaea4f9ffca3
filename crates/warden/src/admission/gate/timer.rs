//! The timer task: dispatches what time alone unblocks (pool refill, the off-peak window),
//! expires `/internal` holds at their TTL, and raises the long-wait alert. Between those it
//! sleeps until the next moment due, or until the gate says something changed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Gate;

impl Gate {
    /// Dispatches what time alone unblocks (pool refill, the off-peak window) and watches for
    /// requests waiting too long, until shutdown.
    pub async fn run_timer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = {
                let mut st = self.lock();
                let (now, _) = self.now();
                if let Some(oldest) = st.d.oldest_enqueued_ms() {
                    self.wait_alerts(now.ms.saturating_sub(oldest));
                }
                st.d.wake_in_ms(now).map_or(Duration::from_secs(60), |ms| Duration::from_millis(ms.clamp(1, 60_000)))
            };
            let wait = self.expire_holds().map_or(wait, |next| wait.min(next.max(Duration::from_millis(1))));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let mut st = self.lock();
            let (now, _) = self.now();
            self.run_ready(&mut st, now);
        }
    }
}
