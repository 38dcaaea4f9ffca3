//! When admission raises an alert, in one place: a pool below 10 %, a client past 80 % and
//! 95 % of its budget, more than 1,000 requests waiting, one waiting over 10 minutes. Alerts
//! are rate-limited by `Alerts` itself.

use policy::budget::Ledger;
use policy::queue::Now;

use super::{Gate, State};

/// A pool with less than this share of its capacity left is low (1/10).
const POOL_LOW_DIVISOR: u64 = 10;
const BUDGET_WARN_PERCENT: u32 = 80;
const BUDGET_CRITICAL_PERCENT: u32 = 95;
/// More requests waiting than this is a long queue.
const QUEUE_LONG: usize = 1000;
/// A request waiting longer than this (ms) for its turn.
const WAIT_LONG_MS: u64 = 600_000;

impl Gate {
    pub(super) fn budget_alerts(&self, client: usize, ledger: &Ledger) {
        let (kind, p) = match ledger.used_percent() {
            Some(p) if p >= BUDGET_CRITICAL_PERCENT => ("budget_95", p),
            Some(p) if p >= BUDGET_WARN_PERCENT => ("budget_80", p),
            _ => return,
        };
        // Named only when there is something to say: this runs twice for every request.
        let name = self.slot_name(client);
        self.alerts.raise(kind, &name, format!("client {name} has used {p} % of its monthly budget"));
    }

    pub(super) fn pool_alerts(&self, st: &mut State, now: Now) {
        for (i, pool) in st.d.pools.iter_mut().enumerate() {
            let (level, cap) = pool.level(None, now.ms);
            if cap > 0 && level * POOL_LOW_DIVISOR < cap {
                let name = &self.config().pools[i].name;
                self.alerts.raise("pool_low", name, format!("pool {name} is below 10 % ({level} of {cap} left)"));
            }
        }
    }

    pub(super) fn queue_alerts(&self, waiting: usize) {
        if waiting > QUEUE_LONG {
            self.alerts.raise("queue_long", "queue", format!("{waiting} requests are waiting"));
        }
    }

    /// `waited_ms`: how long the oldest waiting request has waited.
    pub(super) fn wait_alerts(&self, waited_ms: u64) {
        if waited_ms > WAIT_LONG_MS {
            self.alerts.raise(
                "long_wait",
                "queue",
                format!("a request has waited {} s for its turn", waited_ms / 1000),
            );
        }
    }
}
