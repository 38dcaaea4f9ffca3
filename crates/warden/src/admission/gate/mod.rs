//! The gate every front-door request passes: its budget is reserved, it waits its turn in
//! the priority queue (bounded), and it leaves with a [`Ticket`] that holds its capacity until
//! its response ends; then the ticket settles cost and pools and records the usage.
//!
//! One mutex guards the dispatcher, the ledgers and the waiters: every decision is a short
//! pure call under it (`warden-policy`). Dispatch happens on events (a request arrives, a
//! ticket ends, a waiter gives up) and, for what only time can unblock (pool refill, the
//! off-peak window, expiring holds), on the timer task.
//!
//! Files: `admit.rs` (reserve, queue, wait), `ticket.rs` (what a running request holds and how
//! it settles), `timer.rs` (the timer task), `alerting.rs` (alert thresholds), `holds.rs`
//! (`/internal` holds for callers outside the request path), `upstream.rs` (rate limits hosted
//! APIs announce), `views.rs` (reads for the API).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::{oneshot, Notify};

mod admit;
mod alerting;
mod holds;
mod shared;
mod ticket;
mod timer;
mod upstream;
mod views;

pub use holds::{HoldTaken, Used};
pub use ticket::{CachedAnswer, Ticket};
pub use upstream::UpstreamLimits;
pub use views::Standing;

use crate::account::alerts::Alerts;
use crate::account::store::Store;
use crate::base::clock;
use crate::config::{Config, PoolUnit};
use policy::bucket::Pool;
use policy::budget::{Ledger, Micros};
use policy::class::Class;
use policy::estimate::Estimate;
use policy::queue::IdMap;
use policy::queue::{Dispatcher, Grant, Id, Limits, Now, Settings};

/// A request asking to be let in.
pub struct Ask {
    /// None = warden runs open.
    pub client: Option<usize>,
    pub class: Class,
    pub service: usize,
    pub model: Option<Arc<str>>,
    pub estimate: Estimate,
    pub request_id: Arc<str>,
}

/// A queued request's way to be told its turn has come.
struct Waiter {
    /// For `by_request`, which must forget it when it leaves.
    request_id: Arc<str>,
    tx: oneshot::Sender<Grant>,
}

/// A request that was let in and holds capacity until its answer ends.
struct Running {
    /// The client's slot (see [`slot`]).
    client: usize,
    class: Class,
    /// For `running_ms` in `/api/queue/position`.
    started: Instant,
}

/// A map by request id. Request ids can come from clients (`x-request-id`), so the hash is
/// seeded per process (foldhash), at a fraction of SipHash's cost on the warm path (a request
/// is added to and removed from these maps once each).
type ByRequest<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Everything admission decides over, behind the gate's one mutex.
struct State {
    /// The pure priority dispatcher: lanes, scores, limits, pools.
    d: Dispatcher,
    /// Queued requests waiting to be told their turn, by dispatcher id.
    waiters: IdMap<Id, Waiter>,
    /// Request id → dispatcher id, to find (and cancel) a queued request by its request id.
    by_request: ByRequest<Id>,
    /// Requests let in and not yet settled, by request id (for positions and status).
    running: ByRequest<Running>,
    /// One budget ledger per client slot (see [`slot`]).
    ledgers: Vec<Ledger>,
    /// `/internal/reserve` holds, by reservation id.
    holds: HashMap<String, holds::Hold>,
}

/// The gate's numbering of clients: slot 0 is the anonymous client (open mode, the admin
/// acting for no client), configured client `i` is slot `i + 1`. A reload only adds clients
/// after the others, so no request's slot ever moves.
pub(crate) fn slot(client: Option<usize>) -> usize {
    client.map_or(0, |c| c + 1)
}

/// The configured client of a slot (None: the anonymous one).
fn client_of(slot: usize) -> Option<usize> {
    slot.checked_sub(1)
}

/// Service and client names as tickets and the recent-requests ring hold them, made once per
/// config: every request names both, and the ring keeps 10,000 requests (copies would each be
/// an allocation, freed long after, cold).
struct Names {
    /// By service index.
    services: Vec<Arc<str>>,
    /// By client slot ([`slot`]): the anonymous client first.
    clients: Vec<Arc<str>>,
}

impl Names {
    fn of(config: &Config) -> Names {
        let mut clients = vec![Arc::from("anonymous")];
        clients.extend(config.clients.iter().map(|c| Arc::from(c.name.as_str())));
        Names { services: config.services.iter().map(|s| Arc::from(s.name.as_str())).collect(), clients }
    }
}

pub struct Gate {
    /// Clients, pools, prices and scheduler settings in force (a reload replaces them).
    config: arc_swap::ArcSwap<Config>,
    /// Names of that config's services and clients, shared (replaced with it).
    names: arc_swap::ArcSwap<Names>,
    state: Mutex<State>,
    /// Wakes the timer task when what it waits for may have changed.
    changed: Notify,
    /// The dispatcher's clock starts here (it counts milliseconds since).
    epoch: Instant,
    /// Where usage records go (SQLite, written by its own thread).
    pub store: Arc<Store>,
    pub alerts: Alerts,
    /// The latest finished requests, for the dashboard.
    pub recent: crate::account::recent::Recent,
    /// The counts shared with other replicas (`[state].shared`); None: warden runs alone.
    pub shared: Option<Arc<crate::shared::Shared>>,
}

impl Gate {
    /// Opens the usage database and picks up this month's spend from it.
    pub fn new(config: Arc<Config>, events: crate::base::events::Events) -> Result<Gate, String> {
        let store = Arc::new(Store::open(&config.server.state_dir.join("warden.db"))?);
        let shared = crate::shared::Shared::open(&config.state, &config.server.state_dir, store.clone())?;
        let (month, _) = clock::month_and_minute();
        let spent: HashMap<String, i64> = store.spend_by_client(month)?.into_iter().collect();
        let clients = config.clients.len() + 1;
        let mut ledgers = vec![Ledger::new(None, month, 0)];
        ledgers.extend(
            config
                .clients
                .iter()
                .map(|c| Ledger::new(c.monthly_budget, month, spent.get(&c.name).copied().unwrap_or(0))),
        );
        let limits = limits(&config, |_| None);
        let pools = config.pools.iter().map(|p| Pool::new(p.capacity, p.refill_per_sec, &sharing(p), 0)).collect();
        let state = State {
            d: Dispatcher::new(clients, limits, pools, settings(&config)),
            waiters: IdMap::default(),
            by_request: ByRequest::default(),
            running: ByRequest::default(),
            ledgers,
            holds: HashMap::new(),
        };
        Ok(Gate {
            names: arc_swap::ArcSwap::from_pointee(Names::of(&config)),
            config: arc_swap::ArcSwap::new(config),
            state: Mutex::new(state),
            changed: Notify::new(),
            epoch: Instant::now(),
            store,
            recent: crate::account::recent::Recent::new(events.clone()),
            alerts: Alerts::new(events),
            shared,
        })
    }

    /// The config in force (a guard: no reference count touched on the request path; held
    /// only within one call, never across an await).
    fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts a reloaded config in force, keeping every ledger (spend and what is reserved),
    /// hold, queued and running request, and what pools learned from their upstreams. New
    /// clients start from this month's spend on record; a changed budget, limit or pool size
    /// applies from the next decision. `learned[i]`: keep service `i`'s concurrency as it is
    /// (learned from the service itself) rather than what its config says.
    pub fn reconfigure(&self, config: Arc<Config>, learned: &[bool]) -> Result<(), String> {
        let (now, month) = self.now();
        let spent: HashMap<String, i64> = self.store.spend_by_client(month)?.into_iter().collect();
        let mut st = self.lock();
        for (i, c) in config.clients.iter().enumerate() {
            match st.ledgers.get_mut(slot(Some(i))) {
                Some(l) => l.limit = c.monthly_budget,
                None => st.ledgers.push(Ledger::new(c.monthly_budget, month, spent.get(&c.name).copied().unwrap_or(0))),
            }
        }
        let limits = limits(&config, |s| learned.get(s).copied().unwrap_or(false).then(|| st.d.service_limit(s)));
        let old = self.config();
        for (i, p) in config.pools.iter().enumerate() {
            let pool = (sharing(p), p.capacity, p.refill_per_sec);
            match (st.d.pools.get_mut(i), old.pools.get(i)) {
                (Some(_), Some(o)) if (sharing(o), o.capacity, o.refill_per_sec) == pool => {}
                (Some(running), _) => *running = running.resized(p.capacity, p.refill_per_sec, &pool.0, now.ms),
                (None, _) => st.d.pools.push(Pool::new(p.capacity, p.refill_per_sec, &pool.0, now.ms)),
            }
        }
        st.d.reconfigure(config.clients.len() + 1, limits, settings(&config));
        self.names.store(Arc::new(Names::of(&config)));
        self.config.store(config);
        self.dispatch(&mut st, now);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> (Now, u32) {
        self.now_at(Instant::now(), SystemTime::now())
    }

    /// [`now`](Self::now) from readings already taken: a request's admission and its settling
    /// each read the two clocks once for everything they time.
    fn now_at(&self, at: Instant, wall: SystemTime) -> (Now, u32) {
        let (month, minute_utc) = policy::calendar::month_and_minute(clock::since_epoch(wall).as_secs());
        (Now { ms: at.saturating_duration_since(self.epoch).as_millis() as u64, minute_utc }, month)
    }

    /// The name of the client in `slot`.
    pub(crate) fn slot_name(&self, slot: usize) -> String {
        self.client_name(client_of(slot))
    }

    /// The name of the client in `slot`, shared.
    fn slot_label(&self, slot: usize) -> Arc<str> {
        self.names.load().clients.get(slot).cloned().unwrap_or_else(|| self.slot_name(slot).into())
    }

    /// The name of service `service`, shared.
    fn service_label(&self, service: usize) -> Arc<str> {
        let names = self.names.load();
        names.services.get(service).cloned().unwrap_or_else(|| self.config().services[service].name.as_str().into())
    }

    /// A configured client's name ("anonymous" for None).
    pub fn client_name(&self, client: Option<usize>) -> String {
        let config = self.config();
        client.and_then(|c| config.clients.get(c)).map_or("anonymous".into(), |c| c.name.clone())
    }

    /// Units of each of the model's pools this estimate takes.
    fn pool_units(&self, model: Option<&str>, e: &Estimate) -> Vec<(usize, u64)> {
        let config = self.config();
        let Some(terms) = model.and_then(|m| config.model_terms.get(m)) else { return Vec::new() };
        terms
            .pools
            .iter()
            .map(|&p| match config.pools[p].unit {
                PoolUnit::Tokens => (p, e.total()),
                PoolUnit::Requests => (p, 1),
            })
            .collect()
    }

    /// Whether a request for `model` is worth a durable usage row (and reading its usage): the
    /// model has a price or pools, or clients are configured (each client's history). An
    /// anonymous request to a free model pays for neither; `/metrics` still counts it.
    pub fn accounts(&self, model: Option<&str>) -> bool {
        let config = self.config();
        !config.clients.is_empty() || model.is_some_and(|m| config.model_terms.contains_key(m))
    }

    pub fn cost(&self, model: Option<&str>, prompt: u64, completion: u64) -> Micros {
        let config = self.config();
        model.and_then(|m| config.model_terms.get(m)).and_then(|t| t.price).map_or(0, |p| p.cost(prompt, completion))
    }

    /// Runs whatever can run now, then wakes the timer to look again at what time alone could
    /// unblock (a request that stays queued may be waiting for a pool to refill).
    fn dispatch(&self, st: &mut State, now: Now) {
        self.run_ready(st, now);
        if !st.d.is_empty() {
            self.changed.notify_one();
        }
    }

    /// Runs whatever can run now. The timer calls this, not `dispatch`: waking itself after
    /// every look would spin a core for as long as a request stays queued.
    fn run_ready(&self, st: &mut State, now: Now) {
        while let Some(grant) = st.d.next(now) {
            match st.waiters.remove(&grant.id) {
                Some(w) => {
                    st.by_request.remove(&w.request_id);
                    let running =
                        Running { client: grant.waiting.client, class: grant.waiting.class, started: Instant::now() };
                    st.running.insert(w.request_id.clone(), running);
                    if let Err(grant) = w.tx.send(grant) {
                        // It gave up in the same instant: give the capacity back.
                        st.d.finish(&grant, None, now.ms);
                        st.running.remove(&w.request_id);
                    }
                }
                None => st.d.finish(&grant, None, now.ms),
            }
        }
        self.pool_alerts(st, now);
    }

    /// A service's concurrency, learned from the service itself (llama-server's slots) where
    /// none is configured.
    pub fn set_service_limit(&self, service: usize, limit: u32) {
        let name = self.config().services[service].name.clone();
        tracing::info!("Service {name} serves {limit} requests at once (it says so); no more are sent to it at once");
        let mut st = self.lock();
        st.d.set_service_limit(service, Some(limit));
        let (now, _) = self.now();
        self.dispatch(&mut st, now);
    }

    /// A service's concurrency limit now (configured, learned, or the default).
    pub fn service_limit(&self, service: usize) -> Option<u32> {
        self.lock().d.service_limit(service)
    }

    /// While the CPU is busy, `batch` and `deferred` requests wait (the pressure monitor says
    /// when); released, they are dispatched at once.
    pub fn set_background_held(&self, held: bool) {
        let mut st = self.lock();
        if st.d.background_held == held {
            return;
        }
        st.d.background_held = held;
        let (now, _) = self.now();
        self.dispatch(&mut st, now);
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
        let client = slot(client);
        let (_, month) = self.now();
        let mut st = self.lock();
        // Reading rolls the month like a reservation would.
        let _ = st.ledgers[client].reserve(0, month);
        let mut ledger = st.ledgers[client].clone();
        drop(st);
        self.as_shared(client, &mut ledger);
        ledger
    }

    /// Replicas: a ledger's spend and holds as Redis last said them (every replica's), in place
    /// of this replica's own share.
    fn as_shared(&self, slot: usize, ledger: &mut Ledger) {
        if let Some(seen) = self.shared.as_ref().and_then(|sh| sh.seen(&self.slot_name(slot))) {
            (ledger.spent, ledger.reserved) = seen;
        }
    }

    pub fn paused(&self) -> bool {
        self.lock().d.paused
    }
}

/// Concurrency limits by client slot and by service; `kept(s)`: Some(limit) keeps service `s`'s
/// limit as it is now.
fn limits(config: &Config, kept: impl Fn(usize) -> Option<Option<u32>>) -> Limits {
    let mut client_max = vec![None];
    client_max.extend(config.clients.iter().map(|c| c.max_concurrent));
    let service_max = config.services.iter().enumerate().map(|(i, s)| kept(i).unwrap_or(s.concurrency())).collect();
    Limits { client_max, service_max }
}

/// A pool's sharing with clients named by their slots.
fn sharing(p: &crate::config::PoolConfig) -> policy::bucket::Sharing {
    use policy::bucket::Sharing;
    match &p.sharing {
        Sharing::Reserved(shares) => Sharing::Reserved(shares.iter().map(|&(c, s)| (slot(Some(c)), s)).collect()),
        other => other.clone(),
    }
}

fn settings(config: &Config) -> Settings {
    let s = &config.scheduler;
    Settings {
        aging_full_ms: s.aging.as_millis() as u64,
        starve_ms: s.starvation.as_millis() as u64,
        fairness_half_life_ms: s.fairness_half_life.as_millis() as u64,
        off_peak: s.off_peak,
    }
}
