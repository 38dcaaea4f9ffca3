//! Shared state for replicas (`[state] shared = "redis://…"`): several wardens count each
//! client's budget, the pools and the concurrency limits in one Redis, so three replicas never
//! let a client spend three budgets.
//!
//! Each admission is one server-side script (`admit.lua`): reserve the budget, take a
//! concurrency slot of every counter, take the pool units, all or nothing, on Redis's clock.
//! Each settle is one script too (`settle.lua`), idempotent by request id. What a request
//! holds in Redis expires `hold_ttl` after this replica last refreshed it (`tasks.rs` refreshes
//! the live ones), so a replica that dies mid-request leaks nothing beyond the TTL.
//!
//! Spend is kept per replica (`spend:{client}:{month}` is a hash, one field per replica), so a
//! replica can always put back its own share from its SQLite ledger (`reseed.lua`): at start,
//! and whenever Redis lost it (restarted empty: the replica's `seeded` marker is gone).
//!
//! The local gate still runs its own books in front of this: they count only this replica's
//! share of the same limits, so they never refuse what Redis would grant; Redis is the one
//! that binds. With Redis unreachable, `on_unavailable = "local"` lets the local books decide
//! alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, Notify};

use crate::account::store::Store;
use crate::config::{OnUnavailable, StateConfig};
use policy::budget::Micros;

mod cache;
mod tasks;

/// A pool's part of an admission: which bucket and how much of it.
#[derive(Debug, Clone)]
pub struct PoolTake {
    /// The pool's place in the config (for its unit when the request settles).
    pub pool: usize,
    /// Key suffix: the pool's name (and the client's, for a dedicated pool).
    pub bucket: String,
    pub capacity: u64,
    pub refill_per_sec: f64,
    pub units: u64,
}

/// What an admission asks of the shared counts.
pub struct Ask<'a> {
    pub request_id: &'a str,
    pub client: &'a str,
    pub month: u32,
    pub reserve: Micros,
    pub budget: Option<Micros>,
    /// (counter key suffix, limit): "client:acme", "service:openai".
    pub concurrency: Vec<(String, u32)>,
    pub pools: Vec<PoolTake>,
}

/// What an admitted request holds in Redis until it settles.
#[derive(Debug)]
pub struct Held {
    request_id: String,
    client: String,
    month: u32,
    /// The concurrency counters it holds a slot of (full keys).
    counters: Vec<String>,
    pub pools: Vec<PoolTake>,
}

/// Why the shared counts did not let a request in.
pub enum Refused {
    /// The client's budget (every replica's spend and holds) has no room for this.
    Budget { spent: Micros, held: Micros },
    /// Its wait for a concurrency slot or pool units passed the deadline.
    Timeout,
    /// Redis could not be asked.
    Unavailable(String),
}

/// What the writer task sends to Redis, in order.
enum Write {
    Settle(Settle),
    /// A cached answer (encoded), kept for `ttl`; lost if Redis is away (a miss, never wrong).
    Answer {
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    },
}

/// A settle waiting to be sent (the writer sends them in order, retrying while Redis is away:
/// a settle is idempotent, so a retry never charges twice).
struct Settle {
    held: Held,
    cost: Micros,
    /// Pool units given back, by `held.pools` index.
    back: Vec<u64>,
}

pub struct Shared {
    con: ConnectionManager,
    /// For the pub/sub connection (a connection of its own).
    client: redis::Client,
    /// The URL without a password, for messages.
    pub url: String,
    prefix: String,
    /// This replica's name in the spend hashes, kept in `state_dir/replica-id`.
    replica: String,
    pub on_unavailable: OnUnavailable,
    ttl: Duration,
    /// Woken when capacity frees anywhere (a settle publishes on `{prefix}freed`).
    freed: Notify,
    /// Requests admitted here and not yet settled: request id → the zsets that hold it (for
    /// the refresh task).
    live: Mutex<HashMap<String, Vec<String>>>,
    writes: mpsc::UnboundedSender<Write>,
    /// Taken by the writer task when it starts.
    writes_rx: Mutex<Option<mpsc::UnboundedReceiver<Write>>>,
    /// This replica's usage ledger: its share of the spend, put back into Redis when Redis
    /// lost it.
    store: Arc<Store>,
    /// The latest (spent, held) Redis reported for each client, for views.
    seen: Mutex<HashMap<String, (Micros, Micros)>>,
    /// Redis was unreachable at the last call (to log the change once, not every request).
    down: std::sync::atomic::AtomicBool,
}

/// How long one Redis call may take before the request is answered without it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a waiter sleeps between looks when no release is announced (a missed message
/// while the pub/sub connection reconnects costs at most this).
const FALLBACK_POLL: Duration = Duration::from_secs(1);

static ADMIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(concat!(include_str!("prelude.lua"), include_str!("admit.lua"))));
static SETTLE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(concat!(include_str!("prelude.lua"), include_str!("settle.lua"))));
static REFRESH: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(concat!(include_str!("prelude.lua"), include_str!("refresh.lua"))));
static STANDING: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(concat!(include_str!("prelude.lua"), include_str!("standing.lua"))));
static RESEED: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(concat!(include_str!("prelude.lua"), include_str!("reseed.lua"))));

impl Shared {
    /// Sets up the connection (lazily: warden starts even while Redis is down, and answers by
    /// `on_unavailable` until it is back). None without `[state].shared`.
    pub fn open(
        config: &StateConfig,
        state_dir: &std::path::Path,
        store: Arc<Store>,
    ) -> Result<Option<Arc<Shared>>, String> {
        let Some(url) = config.shared.as_deref() else { return Ok(None) };
        let client = redis::Client::open(url).map_err(|e| format!("state.shared: {e}"))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| format!("state.shared: {e}"))?;
        let (writes, writes_rx) = mpsc::unbounded_channel();
        Ok(Some(Arc::new(Shared {
            con,
            client,
            url: redact(url),
            prefix: config.key_prefix.clone(),
            replica: replica_id(state_dir)?,
            on_unavailable: config.on_unavailable,
            ttl: config.hold_ttl,
            freed: Notify::new(),
            live: Mutex::new(HashMap::new()),
            writes,
            writes_rx: Mutex::new(Some(writes_rx)),
            store,
            seen: Mutex::new(HashMap::new()),
            down: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn spend_key(&self, client: &str, month: u32) -> String {
        self.key(&format!("spend:{client}:{month}"))
    }

    fn seeded_key(&self, month: u32) -> String {
        self.key(&format!("seeded:{}:{month}", self.replica))
    }

    fn channel(&self) -> String {
        self.key("freed")
    }

    /// Lets a request in by the shared counts, waiting (until `deadline`) for a concurrency
    /// slot or pool units another request, on any replica, is holding.
    pub async fn admit(&self, ask: &Ask<'_>, deadline: Instant) -> Result<Held, Refused> {
        let counters: Vec<String> = ask.concurrency.iter().map(|(k, _)| self.key(&format!("conc:{k}"))).collect();
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .key(self.seeded_key(ask.month))
            .key(self.spend_key(ask.client, ask.month))
            .key(self.key(&format!("hold:{}", ask.client)))
            .key(self.key(&format!("hexp:{}", ask.client)));
        counters.iter().for_each(|k| {
            invocation.key(k);
        });
        ask.pools.iter().for_each(|p| {
            invocation.key(self.key(&format!("pool:{}", p.bucket)));
        });
        invocation
            .arg(ask.request_id)
            .arg(ask.reserve)
            .arg(ask.budget.unwrap_or(-1))
            .arg(self.ttl.as_millis() as u64)
            .arg(counters.len());
        ask.concurrency.iter().for_each(|(_, limit)| {
            invocation.arg(*limit);
        });
        invocation.arg(ask.pools.len());
        ask.pools.iter().for_each(|p| {
            invocation.arg(p.capacity).arg(p.refill_per_sec).arg(p.units);
        });
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before asking: a release announced while the script runs still wakes us.
            freed.as_mut().enable();
            let reply: Vec<redis::Value> = self.run(&invocation).await.map_err(Refused::Unavailable)?;
            let word =
                reply.first().and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()).unwrap_or_default();
            let num = |i: usize| reply.get(i).and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok()).unwrap_or(0);
            let wait = match word.as_str() {
                "ok" => {
                    self.saw(ask.client, num(1), num(2));
                    let mut zsets = counters.clone();
                    if ask.reserve > 0 {
                        zsets.push(self.key(&format!("hexp:{}", ask.client)));
                    }
                    self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(ask.request_id.to_string(), zsets);
                    return Ok(Held {
                        request_id: ask.request_id.to_string(),
                        client: ask.client.to_string(),
                        month: ask.month,
                        counters,
                        pools: ask.pools.clone(),
                    });
                }
                "reseed" => {
                    self.reseed(ask.month).await.map_err(Refused::Unavailable)?;
                    continue;
                }
                "budget" => {
                    self.saw(ask.client, num(1), num(2));
                    return Err(Refused::Budget { spent: num(1), held: num(2) });
                }
                "pool" => Duration::from_millis(num(2).max(1) as u64).min(FALLBACK_POLL),
                _ => FALLBACK_POLL,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Refused::Timeout);
            }
            let _ = tokio::time::timeout(wait.min(deadline - now), freed).await;
        }
    }

    /// Settles what `held` holds: `cost` is charged to this replica's spend, `back[i]` units go
    /// back to pool `i`. Sent by the settle task (in order, retried while Redis is away).
    pub fn settle(&self, held: Held, cost: Micros, back: Vec<u64>) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&held.request_id);
        let _ = self.writes.send(Write::Settle(Settle { held, cost, back }));
    }

    /// Settles now (the writer task's call; `settle` queues for it). Idempotent by request id:
    /// a second call for the same request changes nothing, so the writer may retry freely.
    pub async fn settle_now(&self, held: &Held, cost: Micros, back: &[u64]) -> Result<(), String> {
        let mut invocation = SETTLE.prepare_invoke();
        invocation
            .key(self.key(&format!("settled:{}", held.request_id)))
            .key(self.spend_key(&held.client, held.month))
            .key(self.key(&format!("hold:{}", held.client)))
            .key(self.key(&format!("hexp:{}", held.client)));
        held.counters.iter().for_each(|k| {
            invocation.key(k);
        });
        held.pools.iter().for_each(|p| {
            invocation.key(self.key(&format!("pool:{}", p.bucket)));
        });
        invocation
            .arg(&held.request_id)
            .arg(&self.replica)
            .arg(cost)
            .arg(self.channel())
            .arg(held.counters.len())
            .arg(held.pools.len());
        for (p, back) in held.pools.iter().zip(back) {
            invocation.arg(p.capacity).arg(p.refill_per_sec).arg(*back);
        }
        let (_, spent, now_held): (i64, i64, i64) = self.run(&invocation).await?;
        self.saw(&held.client, spent, now_held);
        Ok(())
    }

    /// Puts this replica's spend of `month` back from its ledger where Redis has less, and
    /// marks it done (until Redis loses the marker with the rest).
    pub async fn reseed(&self, month: u32) -> Result<(), String> {
        let ledger = self.store.spend_by_client(month)?;
        let mut invocation = RESEED.prepare_invoke();
        invocation.key(self.seeded_key(month)).arg(&self.replica);
        for (client, spent) in &ledger {
            invocation.key(self.spend_key(client, month)).arg(*spent);
        }
        let _: i64 = self.run(&invocation).await?;
        tracing::info!(
            "Shared state at {}: this replica's spend of the month is in place ({} clients from its ledger)",
            self.url,
            ledger.len()
        );
        Ok(())
    }

    /// A client's (spent, held) of `month` across every replica, read now.
    pub async fn standing(&self, client: &str, month: u32) -> Result<(Micros, Micros), String> {
        let mut invocation = STANDING.prepare_invoke();
        invocation
            .key(self.spend_key(client, month))
            .key(self.key(&format!("hold:{client}")))
            .key(self.key(&format!("hexp:{client}")));
        let standing: (i64, i64) = self.run(&invocation).await?;
        self.saw(client, standing.0, standing.1);
        Ok(standing)
    }

    /// The latest (spent, held) Redis reported for a client, if any.
    pub fn seen(&self, client: &str) -> Option<(Micros, Micros)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(client).copied()
    }

    fn saw(&self, client: &str, spent: Micros, held: Micros) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(client.to_string(), (spent, held));
    }

    /// Runs a script, bounded (see `call`).
    async fn run<T: redis::FromRedisValue>(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<T, String> {
        self.call(|mut con| async move { invocation.invoke_async(&mut con).await }).await
    }

    /// One Redis call, bounded. A connection found dropped (Redis restarted since the last
    /// call) is tried once more on the connection the manager makes anew. An error is logged
    /// once when Redis goes away and once when it is back.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        use std::sync::atomic::Ordering;
        let once = || tokio::time::timeout(CALL_TIMEOUT, f(self.con.clone()));
        let result = match once().await {
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => once().await,
            first => first,
        };
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
        };
        match &result {
            Ok(_) if self.down.swap(false, Ordering::Relaxed) => {
                tracing::info!("Shared state at {} is reachable again", self.url)
            }
            Err(e) if !self.down.swap(true, Ordering::Relaxed) => {
                tracing::warn!("Shared state at {} is unreachable: {e}", self.url)
            }
            _ => {}
        }
        result
    }
}

/// This replica's stable name: kept in `state_dir/replica-id`, made on first start.
fn replica_id(state_dir: &std::path::Path) -> Result<String, String> {
    let path = state_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("r{}", crate::base::http::new_request_id().replace('-', ""));
            std::fs::write(&path, &id).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
    }
}

/// The URL as shown to people: no password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact("redis://:secret@10.0.0.1:6379/0"), "redis://…@10.0.0.1:6379/0");
        assert_eq!(super::redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
