//! What a running request holds: its grant (slots, pool units) and its reservation. Dropped
//! when its answer ends, whatever the path: it settles the real cost against the reservation,
//! corrects the pools, frees its slots and records the usage.

use crate::account::recent::Finished;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Gate;
use crate::account::store::UsageRecord;
use crate::account::usage::Usage;
use crate::base::clock;
use crate::config::PoolUnit;
use policy::budget::Micros;
use policy::class::Class;
use policy::estimate::{charge, Charge, Ending, Estimate};
use policy::queue::Grant;

/// Capacity held by a running request. Dropped when its response ends: it settles the real
/// cost against the reservation, corrects the pools, frees its slots and records the usage.
pub struct Ticket {
    pub(super) gate: Arc<Gate>,
    /// The slots and pool units the dispatcher gave it; taken when it settles.
    pub(super) grant: Option<Grant>,
    /// Index into the ledgers (the anonymous client last).
    pub(super) client: usize,
    /// Held against the client's budget until the real cost is known.
    pub(super) reserved: Micros,
    /// What the reservation was computed from; charged as is when the answer reports no usage.
    pub(super) estimate: Estimate,
    pub(super) model: Option<Arc<str>>,
    /// The service's name, for the usage record.
    pub(super) service: Arc<str>,
    pub(super) class: Class,
    pub request_id: Arc<str>,
    /// How long it waited for its turn.
    pub(super) queued: Duration,
    /// When it was let in, for the usage record's duration.
    pub(super) started: Instant,
    /// The upstream's status, once it answered.
    pub status: Option<u16>,
    /// What the answer reported using.
    pub usage: Option<Usage>,
    /// The service died mid-answer after about this many completion tokens reached the client.
    pub cut_after: Option<u64>,
    /// Its usage is worth reading and a durable row ([`Gate::accounts`]).
    pub accounted: bool,
    /// The optimizer served it one rung down from this model: what it saved is what it would
    /// have cost there.
    pub downgraded_from: Option<String>,
    /// A hash of the request's path and body, for the usage record (repeats show there).
    pub body_hash: Option<i64>,
    /// How long the request waited for its service to be ready after its turn (a cold start,
    /// a model load; about nothing when warm), for the dashboard.
    pub service_wait: Duration,
    /// What it holds in the shared counts (replicas); settled there when it ends.
    pub(super) shared: Option<crate::shared::Held>,
}

impl Ticket {
    pub fn queued(&self) -> Duration {
        self.queued
    }

    /// When it was let in.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// An upstream failure a person must fix (a certificate): an alert of `kind`.
    pub fn upstream_failed(&self, kind: &'static str, service: &str, detail: &str) {
        let msg = format!("service {service}: {detail} (request {})", self.request_id);
        self.gate.alerts.raise(kind, service, msg);
    }

    /// The upstream announced its rate limits (or refused for rate): the model's pools adopt it.
    pub fn upstream_said(&self, said: &super::UpstreamLimits) {
        self.gate.upstream_said(self.model.as_deref(), said);
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

impl Ticket {
    /// The client it runs for ("anonymous" for none).
    pub fn client_name(&self) -> String {
        self.gate.slot_name(self.client)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(grant) = self.grant.take() else { return };
        let gate = &self.gate;
        let ok = self.status.is_some_and(|s| (200..300).contains(&s));
        let ending = match (ok, self.usage, self.cut_after) {
            (false, _, _) => Ending::Failed,
            (true, Some(u), _) => {
                Ending::Reported { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }
            }
            (true, None, Some(delivered_tokens)) => Ending::Cut { delivered_tokens },
            (true, None, None) => Ending::Unreported,
        };
        let Charge { prompt_tokens: prompt, completion_tokens: completion, estimated } = charge(ending, self.estimate);
        let cost = gate.cost(self.model.as_deref(), prompt, completion);
        let used: Vec<u64> = grant
            .taken
            .iter()
            .map(|&(p, _, took)| match gate.config().pools[p].unit {
                PoolUnit::Tokens if ok => prompt + completion,
                PoolUnit::Tokens => 0,
                PoolUnit::Requests => took,
            })
            .collect();
        // The clocks read once for all this records (each reading is a fair part of a
        // microsecond in a VM).
        let (at, wall) = (Instant::now(), std::time::SystemTime::now());
        let (now, month) = gate.now_at(at, wall);
        let (finished_at_ms, duration_ms) = (
            clock::since_epoch(wall).as_millis() as u64,
            at.saturating_duration_since(self.started).as_millis() as u64,
        );
        {
            let mut st = gate.lock();
            st.d.finish(&grant, Some(&used), now.ms);
            st.ledgers[self.client].settle(self.reserved, cost, month);
            st.running.remove(&self.request_id);
            gate.budget_alerts(self.client, &st.ledgers[self.client]);
            gate.dispatch(&mut st, now);
        }
        if let (Some(sh), Some(held)) = (&gate.shared, self.shared.take()) {
            let back = held
                .pools
                .iter()
                .map(|p| match gate.config().pools[p.pool].unit {
                    PoolUnit::Tokens if ok => p.units.saturating_sub(prompt + completion),
                    PoolUnit::Tokens => p.units,
                    PoolUnit::Requests => 0,
                })
                .collect();
            sh.settle(held, cost, back);
        }
        // The recent-requests ring takes the names; the usage row below needs them too, so
        // they are copied only for a request that gets one.
        gate.recent.record(Finished {
            at_unix_ms: finished_at_ms,
            request_id: self.request_id.clone(),
            client: gate.slot_label(self.client),
            model: self.model.clone(),
            service: self.service.clone(),
            class: self.class.as_str(),
            status: self.status.unwrap_or(0),
            duration_ms,
            queued_ms: self.queued.as_millis() as u64,
            service_wait_ms: self.service_wait.as_millis() as u64,
            cost_micros: cost,
            cached: false,
        });
        if !self.accounted {
            return;
        }
        let saved = match &self.downgraded_from {
            Some(from) => (gate.cost(Some(from), prompt, completion) - cost).max(0),
            None => 0,
        };
        gate.store.record(UsageRecord {
            request_id: self.request_id.to_string(),
            client: gate.slot_name(self.client),
            model: self.model.take().map(|m| m.to_string()),
            service: self.service.to_string(),
            class: self.class.as_str().to_string(),
            status: self.status.unwrap_or(0),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost_micros: cost,
            estimated,
            queued_ms: self.queued.as_millis() as u64,
            duration_ms,
            finished_at_ms,
            month,
            cached: false,
            saved_micros: saved,
            downgraded_from: self.downgraded_from.take(),
            body_hash: self.body_hash,
        });
    }
}

/// A request answered from the response cache.
pub struct CachedAnswer<'a> {
    pub client: Option<usize>,
    pub request_id: String,
    pub model: &'a str,
    pub service: String,
    pub class: Class,
    /// The tokens the cached answer reported when it was made.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration: std::time::Duration,
}

impl Gate {
    /// Records a cache hit: it cost nothing and took no budget or pool units; what it saved is
    /// what its answer costs at the model's price now. Returns that saving.
    pub fn record_cached(&self, hit: CachedAnswer) -> policy::budget::Micros {
        let saved = self.cost(Some(hit.model), hit.prompt_tokens, hit.completion_tokens);
        let (_, month) = self.now();
        self.recent.record(Finished {
            at_unix_ms: clock::unix_ms(),
            request_id: hit.request_id.as_str().into(),
            client: self.client_name(hit.client).into(),
            model: Some(hit.model.into()),
            service: hit.service.as_str().into(),
            class: hit.class.as_str(),
            status: 200,
            duration_ms: hit.duration.as_millis() as u64,
            queued_ms: 0,
            service_wait_ms: 0,
            cost_micros: 0,
            cached: true,
        });
        self.store.record(UsageRecord {
            request_id: hit.request_id,
            client: self.client_name(hit.client),
            model: Some(hit.model.to_string()),
            service: hit.service,
            class: hit.class.as_str().to_string(),
            status: 200,
            prompt_tokens: hit.prompt_tokens,
            completion_tokens: hit.completion_tokens,
            cost_micros: 0,
            estimated: false,
            queued_ms: 0,
            duration_ms: hit.duration.as_millis() as u64,
            finished_at_ms: clock::unix_ms(),
            month,
            cached: true,
            saved_micros: saved,
            downgraded_from: None,
            body_hash: None,
        });
        saved
    }
}
