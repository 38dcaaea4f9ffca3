//! Read-only views of the gate for the API: the queue, where one request stands, the pools and
//! a client's budget. Each is one short look under the lock.

use serde::Serialize;
use serde_json::{json, Value};

use super::{client_of, slot, Gate};
use crate::config::PoolUnit;
use policy::budget::micros_to_usd;
use policy::class::Class;
use policy::estimate::Estimate;

/// Where one request stands.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Standing {
    Queued {
        position: usize,
        of: usize,
        class: Class,
        /// Its score now, 0–100.
        score: f64,
        waited_ms: u64,
    },
    Running {
        class: Class,
        running_ms: u64,
    },
}

impl Gate {
    /// The queue as a whole: what waits (by class), what runs, whether dispatch is paused.
    pub fn queue_status(&self) -> Value {
        let (now, _) = self.now();
        let st = self.lock();
        let mut by_class = serde_json::Map::new();
        for class in Class::ALL {
            by_class.insert(class.as_str().into(), json!(0));
        }
        let mut oldest = None::<u64>;
        for (_, w) in st.d.waiting() {
            let n = by_class.get_mut(w.class.as_str()).expect("every class listed");
            *n = json!(n.as_u64().unwrap_or(0) + 1);
            oldest = Some(oldest.map_or(w.enqueued_ms, |o| o.min(w.enqueued_ms)));
        }
        let s = &self.config().scheduler;
        json!({
            "paused": st.d.paused,
            "queued": st.d.len(),
            "running": st.running.len(),
            "by_class": by_class,
            "oldest_wait_ms": oldest.map(|o| now.ms.saturating_sub(o)),
            "max_queue": s.max_queue,
            "queue_timeout_ms": s.queue_timeout.as_millis() as u64,
            "off_peak": s.off_peak.map(|w| w.to_string()),
            "off_peak_now": s.off_peak.is_some_and(|w| w.contains(now.minute_utc)),
        })
    }

    /// The client a queued or running request belongs to (None: the anonymous client), and
    /// where it stands.
    pub fn standing(&self, request_id: &str) -> Option<(Option<usize>, Standing)> {
        let (client, standing) = self.standing_of(request_id)?;
        Some((client_of(client), standing))
    }

    fn standing_of(&self, request_id: &str) -> Option<(usize, Standing)> {
        let (now, _) = self.now();
        let st = self.lock();
        if let Some(&super::Running { client, class, started }) = st.running.get(request_id) {
            return Some((client, Standing::Running { class, running_ms: started.elapsed().as_millis() as u64 }));
        }
        let &id = st.by_request.get(request_id)?;
        let w = st.d.get(id)?;
        let score = st.d.score_of(id, now.ms)?;
        let standing = Standing::Queued {
            position: st.d.position(id, now)?,
            of: st.d.len(),
            class: w.class,
            score: f64::from(score.total()) / 100.0,
            waited_ms: now.ms.saturating_sub(w.enqueued_ms),
        };
        Some((w.client, standing))
    }

    /// Every pool's level as `client` sees it (its own bucket where it has one).
    pub fn pools_view(&self, client: Option<usize>) -> Vec<Value> {
        let (now, _) = self.now();
        let mut st = self.lock();
        let client = slot(client);
        self.config()
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let pool = &mut st.d.pools[i];
                let (available, capacity) = pool.level(Some(client), now.ms);
                // What the upstream itself last said of this limit, if it says anything.
                let window = pool.window_left(now.ms);
                let upstream = pool.learned.map(|l| {
                    json!({
                        "limit": l.announced.limit,
                        "remaining": l.announced.remaining,
                        "reset_in_ms": l.announced.reset_ms.map(|r| (l.at_ms + r).saturating_sub(now.ms)),
                        "said_ms_ago": now.ms.saturating_sub(l.at_ms),
                        // What warden still lets through before the upstream's window resets.
                        "window_left": window,
                    })
                });
                json!({
                    "name": p.name,
                    "unit": match p.unit { PoolUnit::Tokens => "tokens", PoolUnit::Requests => "requests" },
                    "available": available,
                    "capacity": capacity,
                    "refill_per_sec": p.refill_per_sec,
                    "paused_ms": pool.paused_ms(now.ms),
                    "upstream": upstream,
                })
            })
            .collect()
    }

    /// (queued, running) requests of a client.
    pub fn client_load(&self, client: Option<usize>) -> (usize, u32) {
        let c = slot(client);
        let st = self.lock();
        (st.d.waiting().filter(|(_, w)| w.client == c).count(), st.d.running(c))
    }

    /// The pool units a request of this estimate takes, by pool name.
    pub fn pool_needs(&self, model: Option<&str>, e: &Estimate) -> Vec<Value> {
        self.pool_units(model, e)
            .into_iter()
            .map(|(p, n)| json!({"name": self.config().pools[p].name, "units": n}))
            .collect()
    }

    /// A client's budget this month, in USD and micro-dollars.
    pub fn budget_view(&self, client: Option<usize>) -> Value {
        let l = self.ledger(client);
        json!({
            "month": policy::calendar::month_label(l.month),
            "budget_usd": l.limit.map(micros_to_usd),
            "spent_usd": micros_to_usd(l.spent),
            "reserved_usd": micros_to_usd(l.reserved),
            "remaining_usd": l.remaining().map(micros_to_usd),
            "spent_micros": l.spent,
            "reserved_micros": l.reserved,
            "used_percent": l.used_percent(),
        })
    }

    /// What a request of this estimate would cost and take, and whether it could run now:
    /// budget, pools, concurrency. Changes nothing.
    pub fn check(&self, client: Option<usize>, service: usize, model: Option<&str>, e: &Estimate) -> Value {
        let cost = self.cost(model, e.prompt_tokens, e.completion_tokens);
        let units = self.pool_units(model, e);
        let (now, month) = self.now();
        let c = slot(client);
        let mut st = self.lock();
        let mut reasons = Vec::new();
        let mut ledger = st.ledgers[c].clone();
        self.as_shared(c, &mut ledger);
        if ledger.reserve(cost, month).is_err() {
            reasons.push(format!(
                "over budget: this request may cost ${:.6}, ${:.6} left",
                micros_to_usd(cost),
                ledger.remaining().map_or(0.0, micros_to_usd)
            ));
        }
        let mut pools = Vec::new();
        for (p, n) in units {
            let wait = st.d.pools[p].wait_ms(c, n, now.ms);
            let name = &self.config().pools[p].name;
            if wait != Some(0) {
                reasons.push(format!("pool {name} is short; refills in {} ms", wait.unwrap_or(0)));
            }
            pools.push(json!({"name": name, "needs": n, "wait_ms": wait}));
        }
        let client_max = client_of(c).and_then(|i| self.config().clients.get(i).and_then(|cl| cl.max_concurrent));
        if client_max.is_some_and(|m| st.d.running(c) >= m) {
            reasons.push("the client's max_concurrent requests are running".into());
        }
        let service_max = st.d.service_limit(service);
        if service_max.is_some_and(|m| st.d.service_running(service) >= m) {
            reasons.push(format!("service {} is at its max_concurrent", self.config().services[service].name));
        }
        if st.d.paused {
            reasons.push("the scheduler is stopped".into());
        }
        json!({
            "can_run_now": reasons.is_empty(),
            "within_budget": !reasons.iter().any(|r| r.starts_with("over budget")),
            "reasons": reasons,
            "estimate": {
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "cost_usd": micros_to_usd(cost),
                "cost_micros": cost,
            },
            "pools": pools,
            "queued_ahead": st.d.len(),
        })
    }
}
