//! The gate every front-door request passes: its budget is reserved, it waits its turn in
//! the priority queue (bounded), and it leaves with a [`Ticket`] that holds its capacity until
//! its response ends; then the ticket settles cost and pools and records the usage.
//!
//! One mutex guards the dispatcher, the ledgers and the waiters: every decision is a short
//! pure call under it. Dispatch happens on events (a request arrives, a ticket ends) and, for
//! what only time can unblock (pool refill, the off-peak window), on a timer task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

mod reserve;
mod views;

pub use reserve::{Reserved, Used};
pub use views::Standing;

use crate::account::alerts::Alerts;
use crate::account::store::{Store, UsageRecord};
use crate::account::usage::Usage;
use crate::base::clock;
use crate::base::errors::ApiError;
use crate::config::{Config, PoolUnit};
use policy::bucket::Pool;
use policy::budget::{Ledger, Micros};
use policy::class::Class;
use policy::estimate::Estimate;
use policy::queue::{Dispatcher, Grant, Id, Limits, Now, Settings, Waiting};

/// A request asking to be let in.
pub struct Ask {
    /// None = warden runs open.
    pub client: Option<usize>,
    pub class: Class,
    pub service: usize,
    pub model: Option<String>,
    pub estimate: Estimate,
    pub request_id: String,
}

struct Waiter {
    request_id: String,
    tx: oneshot::Sender<Grant>,
}

/// A request that holds capacity, for `/api/execution`.
#[derive(Debug, Clone, Serialize)]
pub struct RunningView {
    pub client: String,
    pub model: Option<String>,
    pub class: Class,
    pub running_ms: u64,
}

struct State {
    d: Dispatcher,
    waiters: HashMap<Id, Waiter>,
    by_request: HashMap<String, Id>,
    running: HashMap<String, (usize, Option<String>, Class, Instant)>,
    /// One per client, then the anonymous one.
    ledgers: Vec<Ledger>,
    /// `/internal/reserve` holds, by reservation id.
    reservations: HashMap<String, reserve::Held>,
}

pub struct Gate {
    config: Arc<Config>,
    state: Mutex<State>,
    /// Wakes the timer task when what it waits for may have changed.
    changed: Notify,
    epoch: Instant,
    pub store: Store,
    pub alerts: Alerts,
}

impl Gate {
    /// Opens the usage database and picks up this month's spend from it.
    pub fn new(config: Arc<Config>) -> Result<Gate, String> {
        let store = Store::open(&config.server.state_dir.join("warden.db"))?;
        let (month, _) = clock::month_and_minute();
        let spent: HashMap<String, i64> = store.spend_by_client(month)?.into_iter().collect();
        let clients = config.clients.len() + 1;
        let mut ledgers: Vec<Ledger> = config
            .clients
            .iter()
            .map(|c| Ledger::new(c.monthly_budget, month, spent.get(&c.name).copied().unwrap_or(0)))
            .collect();
        ledgers.push(Ledger::new(None, month, 0));
        let mut client_max: Vec<Option<u32>> = config.clients.iter().map(|c| c.max_concurrent).collect();
        client_max.push(None);
        let limits = Limits { client_max, service_max: config.services.iter().map(|s| s.max_concurrent).collect() };
        let pools = config.pools.iter().map(|p| Pool::new(p.capacity, p.refill_per_sec, &p.sharing, 0)).collect();
        let s = &config.scheduler;
        let settings = Settings {
            aging_full_ms: s.aging.as_millis() as u64,
            starve_ms: s.starvation.as_millis() as u64,
            fairness_half_life_ms: s.fairness_half_life.as_millis() as u64,
            off_peak: s.off_peak,
        };
        let state = State {
            d: Dispatcher::new(clients, limits, pools, settings),
            waiters: HashMap::new(),
            by_request: HashMap::new(),
            running: HashMap::new(),
            ledgers,
            reservations: HashMap::new(),
        };
        Ok(Gate {
            config,
            state: Mutex::new(state),
            changed: Notify::new(),
            epoch: Instant::now(),
            store,
            alerts: Alerts::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> (Now, u32) {
        let (month, minute_utc) = clock::month_and_minute();
        (Now { ms: self.epoch.elapsed().as_millis() as u64, minute_utc }, month)
    }

    fn anonymous(&self) -> usize {
        self.config.clients.len()
    }

    pub fn client_name(&self, client: usize) -> &str {
        self.config.clients.get(client).map_or("anonymous", |c| c.name.as_str())
    }

    /// Units of each of the model's pools this estimate takes.
    fn pool_units(&self, model: Option<&str>, e: &Estimate) -> Vec<(usize, u64)> {
        let Some(terms) = model.and_then(|m| self.config.model_terms.get(m)) else { return Vec::new() };
        terms
            .pools
            .iter()
            .map(|&p| match self.config.pools[p].unit {
                PoolUnit::Tokens => (p, e.total()),
                PoolUnit::Requests => (p, 1),
            })
            .collect()
    }

    pub fn cost(&self, model: Option<&str>, prompt: u64, completion: u64) -> Micros {
        model
            .and_then(|m| self.config.model_terms.get(m))
            .and_then(|t| t.price)
            .map_or(0, |p| p.cost(prompt, completion))
    }

    /// Reserves the request's cost, queues it, and waits (bounded) for its turn.
    pub async fn admit(self: &Arc<Self>, ask: Ask) -> Result<Ticket, ApiError> {
        let client = ask.client.unwrap_or(self.anonymous());
        let reserved = self.cost(ask.model.as_deref(), ask.estimate.prompt_tokens, ask.estimate.completion_tokens);
        let (now, month) = self.now();
        let waiting = Waiting {
            client,
            tier: self.config.clients.get(client).map_or(20, |c| c.priority),
            class: ask.class,
            service: ask.service,
            route: route_key(ask.service, ask.model.as_deref()),
            pools: self.pool_units(ask.model.as_deref(), &ask.estimate),
            enqueued_ms: now.ms,
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            if let Err(over) = st.ledgers[client].reserve(reserved, month) {
                return Err(ApiError::OverBudget { client: self.client_name(client).to_string(), over });
            }
            self.budget_alerts(client, &st.ledgers[client]);
            if st.d.len() >= self.config.scheduler.max_queue {
                st.ledgers[client].settle(reserved, 0, month);
                return Err(ApiError::QueueFull { limit: self.config.scheduler.max_queue });
            }
            let id = st.d.push(waiting);
            st.waiters.insert(id, Waiter { request_id: ask.request_id.clone(), tx });
            st.by_request.insert(ask.request_id.clone(), id);
            if st.d.len() > 1000 {
                self.alerts.raise("queue_long", "queue", format!("{} requests are waiting", st.d.len()));
            }
            self.dispatch(&mut st, now);
            id
        };
        let mut pending = Pending { gate: self.clone(), id, rx: Some(rx), client, reserved, month, done: false };
        let wait = self.config.scheduler.queue_timeout;
        let rx = pending.rx.as_mut().expect("set above");
        let grant = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => {
                return Err(ApiError::Conflict(format!("request {} was cancelled while queued", ask.request_id)))
            }
            Err(_) => return Err(ApiError::QueueTimeout { waited: wait, class: ask.class.as_str() }),
        };
        pending.done = true;
        let queued = Duration::from_millis(self.now().0.ms.saturating_sub(grant.waiting.enqueued_ms));
        {
            let mut st = self.lock();
            st.running.insert(ask.request_id.clone(), (client, ask.model.clone(), ask.class, Instant::now()));
        }
        Ok(Ticket {
            gate: self.clone(),
            grant: Some(grant),
            client,
            reserved,
            estimate: ask.estimate,
            model: ask.model,
            service: self.config.services[ask.service].name.clone(),
            class: ask.class,
            request_id: ask.request_id,
            queued,
            started: Instant::now(),
            status: None,
            usage: None,
        })
    }

    /// Runs whatever can run now.
    fn dispatch(&self, st: &mut State, now: Now) {
        while let Some(grant) = st.d.next(now) {
            match st.waiters.remove(&grant.id) {
                Some(w) => {
                    st.by_request.remove(&w.request_id);
                    if let Err(grant) = w.tx.send(grant) {
                        // It gave up in the same instant: give the capacity back.
                        st.d.finish(&grant, None, now.ms);
                    }
                }
                None => st.d.finish(&grant, None, now.ms),
            }
        }
        for (i, pool) in st.d.pools.iter_mut().enumerate() {
            let (level, cap) = pool.level(None, now.ms);
            if cap > 0 && level * 10 < cap {
                let name = &self.config.pools[i].name;
                self.alerts.raise("pool_low", name, format!("pool {name} is below 10 % ({level} of {cap} left)"));
            }
        }
        if !st.d.is_empty() {
            self.changed.notify_one();
        }
    }

    fn budget_alerts(&self, client: usize, ledger: &Ledger) {
        let name = self.client_name(client);
        match ledger.used_percent() {
            Some(p) if p >= 95 => {
                self.alerts.raise("budget_95", name, format!("client {name} has used {p} % of its monthly budget"))
            }
            Some(p) if p >= 80 => {
                self.alerts.raise("budget_80", name, format!("client {name} has used {p} % of its monthly budget"))
            }
            _ => {}
        }
    }

    /// Dispatches what time alone unblocks (pool refill, the off-peak window) and watches for
    /// requests waiting too long, until shutdown.
    pub async fn run_timer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = {
                let mut st = self.lock();
                let (now, _) = self.now();
                if let Some(oldest) = st.d.waiting().map(|(_, w)| w.enqueued_ms).min() {
                    let waited = now.ms.saturating_sub(oldest);
                    if waited > 600_000 {
                        self.alerts.raise(
                            "long_wait",
                            "queue",
                            format!("a request has waited {} s for its turn", waited / 1000),
                        );
                    }
                }
                st.d.wake_in_ms(now).map_or(Duration::from_secs(60), |ms| Duration::from_millis(ms.clamp(1, 60_000)))
            };
            let wait = self.expire_reservations().map_or(wait, |next| wait.min(next.max(Duration::from_millis(1))));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let mut st = self.lock();
            let (now, _) = self.now();
            self.dispatch(&mut st, now);
        }
    }

    pub fn set_paused(&self, paused: bool) {
        let mut st = self.lock();
        st.d.paused = paused;
        let (now, _) = self.now();
        self.dispatch(&mut st, now);
    }

    /// Takes a waiting request out of the queue; false if it is not waiting.
    pub fn cancel(&self, request_id: &str) -> bool {
        let mut st = self.lock();
        let Some(id) = st.by_request.remove(request_id) else { return false };
        st.d.cancel(id);
        // Dropping the sender ends the waiter's wait; it releases its own reservation.
        st.waiters.remove(&id);
        true
    }

    pub fn ledger(&self, client: Option<usize>) -> Ledger {
        let client = client.unwrap_or(self.anonymous());
        let (_, month) = self.now();
        let mut st = self.lock();
        // Reading rolls the month like a reservation would.
        let _ = st.ledgers[client].reserve(0, month);
        st.ledgers[client].clone()
    }

    pub fn paused(&self) -> bool {
        self.lock().d.paused
    }
}

/// A stable lane key for (service, model).
fn route_key(service: usize, model: Option<&str>) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (service, model).hash(&mut h);
    h.finish() as u32
}

/// A request waiting for its turn; dropped (timeout, client gone) it leaves the queue and
/// releases its reservation.
struct Pending {
    gate: Arc<Gate>,
    id: Id,
    rx: Option<oneshot::Receiver<Grant>>,
    client: usize,
    reserved: Micros,
    month: u32,
    /// Granted: the ticket owns the reservation now.
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.gate.lock();
        let (now, _) = self.gate.now();
        if st.d.cancel(self.id).is_some() {
            if let Some(w) = st.waiters.remove(&self.id) {
                st.by_request.remove(&w.request_id);
            }
        } else if let Some(grant) = self.rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            // Granted just as it gave up.
            st.d.finish(&grant, None, now.ms);
        }
        st.ledgers[self.client].settle(self.reserved, 0, self.month);
        self.gate.dispatch(&mut st, now);
    }
}

/// Capacity held by a running request. Dropped when its response ends: it settles the real
/// cost against the reservation, corrects the pools, frees its slots and records the usage.
pub struct Ticket {
    gate: Arc<Gate>,
    grant: Option<Grant>,
    client: usize,
    reserved: Micros,
    estimate: Estimate,
    model: Option<String>,
    service: String,
    class: Class,
    pub request_id: String,
    queued: Duration,
    started: Instant,
    /// The upstream's status, once it answered.
    pub status: Option<u16>,
    /// What the answer reported using.
    pub usage: Option<Usage>,
}

impl Ticket {
    pub fn queued(&self) -> Duration {
        self.queued
    }

    pub fn backend_timed_out(&self, service: &str, after: Duration) {
        let msg = format!(
            "service {service} sent no response within {:.1} s (request {})",
            after.as_secs_f64(),
            self.request_id
        );
        self.gate.alerts.raise("backend_timeout", service, msg);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(grant) = self.grant.take() else { return };
        let gate = &self.gate;
        let ok = self.status.is_some_and(|s| (200..300).contains(&s));
        // No answer or an error: nothing was charged. An answer without usage (cut short, or
        // an upstream that does not report it) is charged as reserved, never less.
        let (prompt, completion, cost, estimated) = match (ok, self.usage) {
            (false, _) => (0, 0, 0, false),
            (true, Some(u)) => (
                u.prompt_tokens,
                u.completion_tokens,
                gate.cost(self.model.as_deref(), u.prompt_tokens, u.completion_tokens),
                false,
            ),
            (true, None) => (self.estimate.prompt_tokens, self.estimate.completion_tokens, self.reserved, true),
        };
        let used: Vec<u64> = grant
            .taken
            .iter()
            .map(|&(p, _, took)| match gate.config.pools[p].unit {
                PoolUnit::Tokens if ok => prompt + completion,
                PoolUnit::Tokens => 0,
                PoolUnit::Requests => took,
            })
            .collect();
        let (now, month) = gate.now();
        {
            let mut st = gate.lock();
            st.d.finish(&grant, Some(&used), now.ms);
            st.ledgers[self.client].settle(self.reserved, cost, month);
            st.running.remove(&self.request_id);
            gate.budget_alerts(self.client, &st.ledgers[self.client]);
            gate.dispatch(&mut st, now);
        }
        gate.store.record(UsageRecord {
            request_id: std::mem::take(&mut self.request_id),
            client: gate.client_name(self.client).to_string(),
            model: self.model.take(),
            service: std::mem::take(&mut self.service),
            class: self.class.as_str().to_string(),
            status: self.status.unwrap_or(0),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_micros: cost,
            estimated,
            queued_ms: self.queued.as_millis() as u64,
            duration_ms: self.started.elapsed().as_millis() as u64,
            finished_at_ms: clock::unix_ms(),
            month,
        });
    }
}
