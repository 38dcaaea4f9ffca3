//! Holds for callers outside the request path (`/internal/reserve|release|consume`): another
//! gateway, or a batch runner that calls a hosted API itself, can hold budget and pool units in
//! warden's books, then settle what it really used. A hold that is neither consumed nor
//! released expires after its TTL and gives everything back, so a crashed caller never leaks
//! capacity. (Not to be confused with the budget reservation every front-door request makes in
//! `admit.rs`: that one lives and dies with its request.)

use std::time::{Duration, Instant};

use super::slot;
use super::{Gate, State};
use crate::account::store::UsageRecord;
use crate::base::clock;
use crate::base::errors::ApiError;
use policy::bucket::From;
use policy::budget::Micros;
use policy::estimate::Estimate;

/// One hold, by its id in `State::holds`.
pub struct Hold {
    client: usize,
    model: Option<String>,
    reserved: Micros,
    month: u32,
    estimate: Estimate,
    /// (pool, where from, units taken)
    taken: Vec<(usize, From, u64)>,
    expires: Instant,
}

/// What `hold` gives back to the caller.
pub struct HoldTaken {
    pub id: String,
    pub reserved: Micros,
    pub expires_in: Duration,
}

/// What the caller really used.
pub enum Used {
    Tokens { prompt: u64, completion: u64 },
    Cost(Micros),
}

impl Gate {
    /// Holds `amount` (or the estimate's cost at the model's price) against the client's
    /// budget and takes the model's pool units now; 402 or 429 when it cannot.
    pub fn hold(
        &self,
        client: Option<usize>,
        model: Option<&str>,
        estimate: Estimate,
        amount: Option<Micros>,
        ttl: Duration,
    ) -> Result<HoldTaken, ApiError> {
        let client = slot(client);
        let reserved = amount.unwrap_or_else(|| self.cost(model, estimate.prompt_tokens, estimate.completion_tokens));
        let units = self.pool_units(model, &estimate);
        let (now, month) = self.now();
        let mut st = self.lock();
        let mut taken = Vec::new();
        for (p, n) in units {
            let n = n.min(st.d.pools[p].max_take(client, now.ms));
            match st.d.pools[p].try_take(client, n, now.ms) {
                Some(from) => taken.push((p, from, n)),
                None => {
                    let wait = st.d.pools[p].wait_ms(client, n, now.ms).unwrap_or(1000);
                    give_back(&mut st, &taken, now.ms);
                    let pool = self.config().pools[p].name.clone();
                    return Err(ApiError::PoolShort { pool, wait: Duration::from_millis(wait) });
                }
            }
        }
        if let Err(over) = st.ledgers[client].reserve(reserved, month) {
            give_back(&mut st, &taken, now.ms);
            return Err(ApiError::OverBudget { client: self.slot_name(client).to_string(), over });
        }
        self.budget_alerts(client, &st.ledgers[client]);
        let id = format!("res-{}", crate::base::http::new_request_id());
        let held = Hold {
            client,
            model: model.map(str::to_string),
            reserved,
            month,
            estimate,
            taken,
            expires: Instant::now() + ttl,
        };
        st.holds.insert(id.clone(), held);
        self.changed.notify_one();
        Ok(HoldTaken { id, reserved, expires_in: ttl })
    }

    /// Settles a reservation: `None` releases it (nothing was used), `Some` charges what was
    /// used and records it. Only its own client (or the admin, `client = None`) may.
    pub fn settle_hold(&self, id: &str, client: Option<usize>, used: Option<Used>) -> Result<Micros, ApiError> {
        let (now, month) = self.now();
        let mut st = self.lock();
        let held = match st.holds.get(id) {
            Some(h) if client.is_none_or(|c| slot(Some(c)) == h.client) => st.holds.remove(id).expect("present"),
            _ => return Err(ApiError::NotFound(format!("reservation {id}"))),
        };
        let record = used.is_some();
        let (prompt, completion, cost) = match used {
            None => (0, 0, 0),
            Some(Used::Cost(c)) => (held.estimate.prompt_tokens, held.estimate.completion_tokens, c),
            Some(Used::Tokens { prompt, completion }) => {
                (prompt, completion, self.cost(held.model.as_deref(), prompt, completion))
            }
        };
        for &(p, from, took) in &held.taken {
            let used = match self.config().pools[p].unit {
                crate::config::PoolUnit::Tokens => prompt + completion,
                crate::config::PoolUnit::Requests => u64::from(cost > 0 || prompt + completion > 0) * took,
            };
            st.d.pools[p].adjust(from, took, used, now.ms);
        }
        st.ledgers[held.client].settle(held.reserved, cost, month.max(held.month));
        self.budget_alerts(held.client, &st.ledgers[held.client]);
        self.dispatch(&mut st, now);
        drop(st);
        if record {
            self.store.record(UsageRecord {
                request_id: id.to_string(),
                client: self.slot_name(held.client).to_string(),
                model: held.model,
                service: "external".into(),
                class: "external".into(),
                status: 200,
                prompt_tokens: prompt,
                completion_tokens: completion,
                cost_micros: cost,
                estimated: false,
                queued_ms: 0,
                duration_ms: 0,
                finished_at_ms: clock::unix_ms(),
                month,
                cached: false,
                saved_micros: 0,
                downgraded_from: None,
                body_hash: None,
            });
        }
        Ok(cost)
    }

    /// Releases reservations past their TTL; returns when the next one expires.
    pub(super) fn expire_holds(&self) -> Option<Duration> {
        let now = Instant::now();
        let expired: Vec<String> = {
            let st = self.lock();
            st.holds.iter().filter(|(_, h)| h.expires <= now).map(|(id, _)| id.clone()).collect()
        };
        for id in expired {
            tracing::warn!("Reservation {id} expired unsettled; its budget and pool units are released");
            let _ = self.settle_hold(&id, None, None);
        }
        self.lock().holds.values().map(|h| h.expires.saturating_duration_since(now)).min()
    }
}

fn give_back(st: &mut State, taken: &[(usize, From, u64)], now_ms: u64) {
    for &(p, from, took) in taken {
        st.d.pools[p].adjust(from, took, 0, now_ms);
    }
}
