//! The shared counts' part of admission, for replicas (`[state].shared`): after the local
//! books let a request in, Redis must too (see `crate::shared`); when it settles, both settle.

use std::time::Instant;

use super::{Ask, Gate};
use crate::base::errors::ApiError;
use crate::config::{OnUnavailable, ServiceKind};
use crate::shared::{Held, PoolTake, Refused};
use policy::bucket::Sharing;
use policy::budget::{Micros, OverBudget};

impl Gate {
    /// Takes the request's budget, concurrency slots and pool units in the shared counts
    /// (waiting, bounded by `queue_timeout`, for slots and units held elsewhere). None: warden
    /// runs alone, the request has nothing to count, or Redis is away and
    /// `on_unavailable = "local"` lets the local books decide.
    pub(super) async fn admit_shared(&self, ask: &Ask, reserved: Micros, month: u32) -> Result<Option<Held>, ApiError> {
        let Some(sh) = &self.shared else { return Ok(None) };
        let (shared_ask, client, wait) = {
            let config = self.config();
            let client = self.client_name(ask.client);
            let configured = ask.client.and_then(|c| config.clients.get(c));
            let mut concurrency = Vec::new();
            if let Some(max) = configured.and_then(|c| c.max_concurrent) {
                concurrency.push((format!("client:{client}"), max));
            }
            // A hosted API is the same for every replica; a local service is each replica's own.
            let service = &config.services[ask.service];
            if let (ServiceKind::Remote(_), Some(max)) = (&service.kind, service.max_concurrent) {
                concurrency.push((format!("service:{}", service.name), max));
            }
            let pools: Vec<PoolTake> = self
                .pool_units(ask.model.as_deref(), &ask.estimate)
                .into_iter()
                .map(|(p, units)| {
                    let pool = &config.pools[p];
                    let bucket = match pool.sharing {
                        Sharing::Dedicated => format!("{}:{client}", pool.name),
                        _ => pool.name.clone(),
                    };
                    PoolTake {
                        pool: p,
                        bucket,
                        capacity: pool.capacity,
                        refill_per_sec: pool.refill_per_sec,
                        units: units.min(pool.capacity),
                    }
                })
                .collect();
            let budget = configured.and_then(|c| c.monthly_budget);
            if reserved == 0 && budget.is_none() && concurrency.is_empty() && pools.is_empty() {
                return Ok(None);
            }
            let ask = (budget, concurrency, pools);
            (ask, client, config.scheduler.queue_timeout)
        };
        let (budget, concurrency, pools) = shared_ask;
        let shared_ask = crate::shared::Ask {
            request_id: &ask.request_id,
            client: &client,
            month,
            reserve: reserved,
            budget,
            concurrency,
            pools,
        };
        match sh.admit(&shared_ask, Instant::now() + wait).await {
            Ok(held) => Ok(Some(held)),
            Err(Refused::Budget { spent, held }) => Err(ApiError::OverBudget {
                client,
                over: OverBudget { limit: budget.unwrap_or(0), spent, reserved: held, asked: reserved },
            }),
            Err(Refused::Timeout) => Err(ApiError::QueueTimeout { waited: wait, class: ask.class.as_str() }),
            Err(Refused::Unavailable(detail)) => {
                let refuse = sh.on_unavailable == OnUnavailable::Refuse;
                let then = match refuse {
                    true => "requests that count against shared limits are refused (on_unavailable = \"refuse\")",
                    false => "requests are admitted by this replica's own counts (on_unavailable = \"local\"), so replicas together may exceed shared limits",
                };
                let msg = format!("shared state at {} is unreachable ({detail}); {then}", sh.url);
                self.alerts.raise("shared_state_unavailable", &sh.url, msg);
                match refuse {
                    true => Err(ApiError::SharedStateUnavailable { url: sh.url.clone(), detail }),
                    false => Ok(None),
                }
            }
        }
    }

    /// Reads a client's spend and holds from the shared counts into the views (nothing when
    /// warden runs alone or Redis is away: the views show the latest seen).
    pub async fn refresh_standing(&self, client: Option<usize>) {
        if let Some(sh) = &self.shared {
            let (_, month) = self.now();
            let _ = sh.standing(&self.client_name(client), month).await;
        }
    }
}
