//! Letting a request in: its largest cost is reserved against its client's budget, it is
//! queued, and it waits (bounded by `queue_timeout`) for the dispatcher to give it its turn.
//! A request that gives up (timeout, client gone, job cancelled) is a dropped [`Pending`]:
//! it leaves the queue and releases its reservation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ticket::Ticket;
use super::{slot, Ask, Gate, Running, Waiter};
use crate::base::errors::ApiError;
use policy::budget::Micros;
use policy::queue::{Grant, Id, Waiting};

impl Gate {
    /// Reserves the request's cost and lets it in at once when nothing waits and it fits; else
    /// queues it and waits (bounded) for its turn.
    ///
    /// An `async move` block, not an `async fn`: an async fn keeps its arguments twice
    /// (rust-lang/rust#62958), and this future is what a request queued here keeps alive.
    #[allow(clippy::manual_async_fn)]
    pub fn admit(
        self: &Arc<Self>,
        ask: Ask,
    ) -> impl std::future::Future<Output = Result<Ticket, ApiError>> + Send + '_ {
        async move {
            let client = slot(ask.client);
            let reserved = self.cost(ask.model.as_deref(), ask.estimate.prompt_tokens, ask.estimate.completion_tokens);
            // Replicas: the shared counts first (they bind; the local books below count only this
            // replica's share and never refuse what they grant).
            // Boxed, and only with `[state].shared`: its Redis calls would otherwise add a kilobyte to
            // every request held in admission, replicas or not.
            let shared = match self.shared.is_some() {
                true => {
                    let (_, month) = self.now();
                    Box::pin(self.admit_shared(&ask, reserved, month)).await?
                }
                false => None,
            };
            let at = Instant::now();
            let (now, month) = self.now_at(at, std::time::SystemTime::now());
            let waiting = Waiting {
                client,
                tier: ask.client.and_then(|c| self.config().clients.get(c).map(|c| c.priority)).unwrap_or(20),
                class: ask.class,
                service: ask.service,
                route: route_key(ask.service, ask.model.as_deref()),
                pools: self.pool_units(ask.model.as_deref(), &ask.estimate),
                enqueued_ms: now.ms,
            };
            let (id, rx) = {
                let mut st = self.lock();
                if let Err(over) = st.ledgers[client].reserve(reserved, month) {
                    self.release_shared(shared);
                    return Err(ApiError::OverBudget { client: self.slot_name(client).to_string(), over });
                }
                self.budget_alerts(client, &st.ledgers[client]);
                if st.d.len() >= self.config().scheduler.max_queue {
                    st.ledgers[client].settle(reserved, 0, month);
                    self.release_shared(shared);
                    return Err(ApiError::QueueFull { limit: self.config().scheduler.max_queue });
                }
                // Nothing waits and it fits: it runs now, with no waiter, channel or timer.
                let waiting = match st.d.start_now(waiting, now) {
                    Ok(grant) => {
                        // It starts as it arrives: the reading above is its start.
                        let started = at;
                        let running = Running { client, class: ask.class, started };
                        st.running.insert(ask.request_id.clone(), running);
                        self.pool_alerts(&mut st, now);
                        drop(st);
                        return Ok(self.ticket(ask, grant, (client, reserved), Duration::ZERO, started, shared));
                    }
                    Err(waiting) => waiting,
                };
                let (tx, rx) = oneshot::channel();
                let id = st.d.push(waiting);
                st.waiters.insert(id, Waiter { request_id: ask.request_id.clone(), tx });
                st.by_request.insert(ask.request_id.clone(), id);
                self.queue_alerts(st.d.len());
                self.dispatch(&mut st, now);
                (id, rx)
            };
            let mut pending = Pending {
                gate: self.clone(),
                id,
                request_id: ask.request_id.clone(),
                rx: Some(rx),
                client,
                reserved,
                month,
                done: false,
                shared,
            };
            let wait = self.config().scheduler.queue_timeout;
            let rx = pending.rx.as_mut().expect("set above");
            // The turn may have been granted under the same lock (another request ahead of it
            // ended meanwhile): no timer to set up then.
            let (granted, at_once) = match rx.try_recv() {
                Ok(grant) => (Ok(Ok(grant)), true),
                Err(_) => (tokio::time::timeout(wait, rx).await, false),
            };
            let grant = match granted {
                Ok(Ok(grant)) => grant,
                Ok(Err(_)) => {
                    return Err(ApiError::Conflict(format!("request {} was cancelled while queued", ask.request_id)))
                }
                Err(_) => return Err(ApiError::QueueTimeout { waited: wait, class: ask.class.as_str() }),
            };
            // Dispatch recorded it as running when it granted the turn: no second lock here.
            pending.done = true;
            // Granted at once: it did not queue (and the clock need not be read again to say so).
            let queued = match at_once {
                true => Duration::ZERO,
                false => Duration::from_millis(self.now().0.ms.saturating_sub(grant.waiting.enqueued_ms)),
            };
            let shared = pending.shared.take();
            Ok(self.ticket(ask, grant, (client, reserved), queued, Instant::now(), shared))
        }
    }

    /// The ticket of a request let in: `held` is its client's slot and what it reserved there.
    fn ticket(
        self: &Arc<Self>,
        ask: Ask,
        grant: Grant,
        (client, reserved): (usize, Micros),
        queued: Duration,
        started: Instant,
        shared: Option<crate::shared::Held>,
    ) -> Ticket {
        Ticket {
            gate: self.clone(),
            grant: Some(grant),
            client,
            reserved,
            estimate: ask.estimate,
            accounted: self.accounts(ask.model.as_deref()),
            model: ask.model,
            service: self.service_label(ask.service),
            class: ask.class,
            request_id: ask.request_id,
            queued,
            started,
            status: None,
            usage: None,
            cut_after: None,
            downgraded_from: None,
            body_hash: None,
            service_wait: Duration::ZERO,
            shared,
        }
    }
}

/// A stable lane key for (service, model). foldhash, unseeded: model names are the config's
/// (the route was found), and SipHash was a fair part of admission's cost.
fn route_key(service: usize, model: Option<&str>) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one((service, model)) as u32
}

/// A request waiting for its turn; dropped (timeout, client gone) it leaves the queue and
/// releases its reservation.
struct Pending {
    gate: Arc<Gate>,
    /// Its place in the dispatcher.
    id: Id,
    /// To forget it in `running` if it was granted its turn just as it gave up.
    request_id: Arc<str>,
    /// Where its turn is announced.
    rx: Option<oneshot::Receiver<Grant>>,
    client: usize,
    /// Held against the client's budget; released if it never runs.
    reserved: Micros,
    /// The month the reservation was made in (budgets reset monthly).
    month: u32,
    /// Granted: the ticket owns the reservation now.
    done: bool,
    /// What it holds in the shared counts (replicas), given back if it never runs.
    shared: Option<crate::shared::Held>,
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
            st.running.remove(&self.request_id);
        }
        st.ledgers[self.client].settle(self.reserved, 0, self.month);
        self.gate.dispatch(&mut st, now);
        drop(st);
        self.gate.release_shared(self.shared.take());
    }
}

impl Gate {
    /// Gives back what a request that never ran holds in the shared counts.
    fn release_shared(&self, held: Option<crate::shared::Held>) {
        if let (Some(sh), Some(held)) = (&self.shared, held) {
            let back = held.pools.iter().map(|p| p.units).collect();
            sh.settle(held, 0, back);
        }
    }
}
