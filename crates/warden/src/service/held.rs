//! The requests a service's owner holds: waiting for the service to start, or for a model to
//! load in a multi-model server. Bounded by `max_queue` (the owner refuses past it) and by
//! the start's deadline; a held request whose client went away is pruned.

use tokio::sync::oneshot;

use super::lease::Lease;
use super::owner::Owner;
use super::Unavailable;

/// The answer a held request waits for: a lease, or why there is none.
pub(super) type Waiter = oneshot::Sender<Result<Lease, Unavailable>>;

/// A request held until the service is ready.
pub(super) struct HeldRequest {
    /// The model it wants (its index in the service's models), if any: once the service runs
    /// it may still have to wait for that model to load.
    pub model: Option<usize>,
    pub reply: Waiter,
}

/// Every request the owner holds, oldest first.
pub(super) struct Held {
    /// Waiting for the service to be ready.
    pub start: Vec<HeldRequest>,
    /// Per model (same order as the service's models): waiting for it to load.
    pub models: Vec<Vec<Waiter>>,
}

impl Held {
    pub fn new(models: usize) -> Held {
        Held { start: Vec::new(), models: (0..models).map(|_| Vec::new()).collect() }
    }

    /// Requests held for a start or a model load.
    pub fn count(&self) -> usize {
        self.start.len() + self.models.iter().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Drops the requests whose clients went away.
    pub fn prune(&mut self) {
        self.start.retain(|h| !h.reply.is_closed());
        for waiters in &mut self.models {
            waiters.retain(|w| !w.is_closed());
        }
    }

    /// Answers every request held for the start with `error`.
    pub fn fail_start(&mut self, error: impl Fn() -> Unavailable) {
        for h in self.start.drain(..) {
            let _ = h.reply.send(Err(error()));
        }
    }

    /// Answers every request held for a model load with `error`.
    pub fn fail_models(&mut self, error: impl Fn() -> Unavailable) {
        for w in self.models.iter_mut().flat_map(|w| w.drain(..)) {
            let _ = w.send(Err(error()));
        }
    }
}

impl Owner {
    /// The service is running: lease every held request whose model is ready; start loading
    /// the models the others want.
    pub(super) fn release_held(&mut self) {
        if self.held.start.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held.start);
        let (need_load, ready): (Vec<_>, Vec<_>) = {
            let live = self.shared.live();
            held.into_iter().partition(|h| h.model.is_some_and(|m| !live.model_loaded(m) || live.models[m].changing))
        };
        self.lease_to(ready);
        for h in need_load {
            self.wait_for_model(h.model.expect("partitioned on it"), h.reply);
        }
        self.publish_queue();
    }

    /// Hands a lease to each held request. Sent outside the lock: a lease whose client left is
    /// dropped on the spot, and dropping a lease locks.
    pub(super) fn lease_to(&mut self, held: Vec<HeldRequest>) {
        let leases: Vec<Option<Lease>> = {
            let mut live = self.shared.live();
            let upstream = live.upstream.clone();
            held.iter()
                .map(|h| upstream.clone().map(|up| Lease::take(self.shared.clone(), &mut live, up, h.model)))
                .collect()
        };
        for (h, lease) in held.into_iter().zip(leases) {
            let _ = h.reply.send(lease.ok_or(Unavailable::Stopped { reason: "the service stopped".into() }));
        }
    }

    pub(super) fn fail_held_start(&mut self, error: impl Fn() -> Unavailable) {
        self.held.fail_start(error);
        self.publish_queue();
    }

    pub(super) fn fail_held_models(&mut self, error: impl Fn() -> Unavailable) {
        self.held.fail_models(error);
        self.publish_queue();
    }

    pub(super) fn fail_all_held(&mut self, error: impl Fn() -> Unavailable) {
        self.held.fail_start(&error);
        self.held.fail_models(&error);
        self.publish_queue();
    }

    pub(super) fn prune_held(&mut self) {
        self.held.prune();
        self.publish_queue();
    }

    /// Publishes how many requests are held (`queued` in the service's status).
    pub(super) fn publish_queue(&self) {
        self.shared.live().queued = self.held.count();
    }
}
