//! The priority queue and its dispatcher: who runs next when capacity frees. Pure: time, the
//! UTC minute of day and every limit are arguments; nothing here waits or reads a clock.
//!
//! Shape: one FIFO lane per (client, class, route). Within a lane every request has the same
//! tier, urgency, fairness, service and pools, and the older one has waited longer, so the
//! head is always the lane's best: only the k lane heads are scored, never all n requests.
//! Push is O(1); choosing is O(k) in the number of non-empty lanes, independent of how many
//! requests wait: each lane entry carries what its rank needs (tier, enqueue time), so the
//! usual dispatch scores every head with integer math and no map lookups, fairness being
//! computed once per client.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use crate::bucket::{From, Pool};
use crate::class::{Class, Window};

pub type Id = u64;

/// Ids are sequential integers: a multiplicative hash spreads them at a fraction of SipHash's
/// cost (a dispatch looks up every lane head; at 800 lanes SipHash was most of the time).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by request id (or another small internal key), hashed with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A request waiting for capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub client: usize,
    /// The client's tier priority, 0–40.
    pub tier: u32,
    pub class: Class,
    pub service: usize,
    /// Requests with the same route go to the same service through the same pools.
    pub route: u32,
    /// (pool, estimated units) this request takes.
    pub pools: Vec<(usize, u64)>,
    pub enqueued_ms: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Waiting this long earns the full 20 aging points.
    pub aging_full_ms: u64,
    /// Waiting this long puts a request ahead of every score, oldest first: nothing starves.
    pub starve_ms: u64,
    /// How fast a client's recent use is forgotten for fairness.
    pub fairness_half_life_ms: u64,
    pub off_peak: Option<Window>,
}

/// Concurrency limits, by client and by service (None = unlimited).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub client_max: Vec<Option<u32>>,
    pub service_max: Vec<Option<u32>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic milliseconds.
    pub ms: u64,
    /// UTC minute of the day, for the off-peak window.
    pub minute_utc: u32,
}

/// A request let through, with the capacity it holds until [`Dispatcher::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: Id,
    pub waiting: Waiting,
    /// (pool, bucket, units taken).
    pub taken: Vec<(usize, From, u64)>,
}

/// The score's parts, each in hundredths of a point (the total is 0–10,000 for 0–100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    pub tier: u32,
    pub urgency: u32,
    pub aging: u32,
    pub fairness: u32,
}

impl Score {
    pub fn total(&self) -> u32 {
        self.tier + self.urgency + self.aging + self.fairness
    }
}

pub fn score(w: &Waiting, now_ms: u64, fairness: u32, s: &Settings) -> Score {
    score_of(w.tier, w.class, now_ms.saturating_sub(w.enqueued_ms), fairness, s)
}

fn score_of(tier: u32, class: Class, waited_ms: u64, fairness: u32, s: &Settings) -> Score {
    Score {
        tier: tier.min(40) * 100,
        urgency: class.urgency() * 100,
        aging: (waited_ms.saturating_mul(2000) / s.aging_full_ms.max(1)).min(2000) as u32,
        fairness,
    }
}

/// (not starving, score, enqueued, id): ascending = the order requests would run in.
type Key = (Reverse<bool>, Reverse<u32>, u64, Id);

/// A request in its lane, with what its rank needs besides the lane's own client and class.
#[derive(Debug, Clone, Copy)]
struct Queued {
    id: Id,
    tier: u32,
    enqueued_ms: u64,
}

/// A request's rank key: starving ones oldest first (they ignore the score), then by score,
/// then oldest.
fn rank_key(w: &Waiting, id: Id, now: Now, settings: &Settings, fairness: u32) -> Key {
    rank(w.tier, w.class, w.enqueued_ms, id, now, settings, fairness)
}

fn rank(tier: u32, class: Class, enqueued_ms: u64, id: Id, now: Now, s: &Settings, fairness: u32) -> Key {
    let waited = now.ms.saturating_sub(enqueued_ms);
    let starving = waited >= s.starve_ms;
    // Starving requests ignore the score: oldest first.
    let total = if starving { 0 } else { score_of(tier, class, waited, fairness, s).total() };
    (Reverse(starving), Reverse(total), enqueued_ms, id)
}

/// Fairness points (hundredths, 0–1000) of a client given everyone's decayed use: 10 for one
/// that used nothing recently, down to 0 for one that had it all.
fn fairness_share(recent: &[f64], total: f64, client: usize) -> u32 {
    if total <= 0.0 {
        return 1000;
    }
    (1000.0 * (1.0 - recent[client] / total)).round().clamp(0.0, 1000.0) as u32
}

pub struct Dispatcher {
    entries: IdMap<Id, Waiting>,
    lanes: IdMap<(usize, Class, u32), VecDeque<Queued>>,
    next_id: Id,
    client_running: Vec<u32>,
    service_running: Vec<u32>,
    pub pools: Vec<Pool>,
    /// Per client: dispatches, each weighted 2^((t - recent_ref_ms) / half-life). Decay
    /// scales every client alike, so shares of the total need no clock: one division, no
    /// powf per client per dispatch. Rebased before the weights could overflow.
    recent: Vec<f64>,
    recent_total: f64,
    recent_ref_ms: u64,
    limits: Limits,
    settings: Settings,
    /// `/admin/scheduler/stop`: nothing is dispatched, requests keep queueing.
    pub paused: bool,
    /// The CPU is busy (`[pressure] cpu_defer_at`): `batch` and `deferred` requests wait
    /// (bounded by their queue timeout, as always).
    pub background_held: bool,
}

impl Dispatcher {
    pub fn new(clients: usize, limits: Limits, pools: Vec<Pool>, settings: Settings) -> Self {
        Dispatcher {
            entries: IdMap::default(),
            lanes: IdMap::default(),
            next_id: 1,
            client_running: vec![0; clients],
            service_running: vec![0; limits.service_max.len()],
            pools,
            recent: vec![0.0; clients],
            recent_total: 0.0,
            recent_ref_ms: 0,
            limits,
            settings,
            paused: false,
            background_held: false,
        }
    }

    /// Changes a service's concurrency limit (learned from the service itself, say); requests
    /// already running keep running, the next dispatch applies it.
    pub fn set_service_limit(&mut self, service: usize, limit: Option<u32>) {
        if let Some(slot) = self.limits.service_max.get_mut(service) {
            *slot = limit;
        }
    }

    /// A reloaded config: more clients and services (slots are only ever added, so queued and
    /// running requests keep theirs), new limits and settings. Requests already running keep
    /// running; the next dispatch applies the rest.
    pub fn reconfigure(&mut self, clients: usize, limits: Limits, settings: Settings) {
        let clients = clients.max(self.client_running.len());
        self.client_running.resize(clients, 0);
        self.recent.resize(clients, 0.0);
        let services = limits.service_max.len().max(self.service_running.len());
        self.service_running.resize(services, 0);
        self.limits = limits;
        self.limits.client_max.resize(clients, None);
        self.limits.service_max.resize(services, None);
        self.settings = settings;
    }

    /// A service's concurrency limit now.
    pub fn service_limit(&self, service: usize) -> Option<u32> {
        self.limits.service_max.get(service).copied().flatten()
    }

    pub fn push(&mut self, w: Waiting) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        let queued = Queued { id, tier: w.tier, enqueued_ms: w.enqueued_ms };
        self.lanes.entry((w.client, w.class, w.route)).or_default().push_back(queued);
        self.entries.insert(id, w);
        id
    }

    /// Takes a request out of the queue (it gave up or was cancelled). Its lane slot is
    /// dropped lazily when it reaches the head.
    pub fn cancel(&mut self, id: Id) -> Option<Waiting> {
        self.entries.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: Id) -> Option<&Waiting> {
        self.entries.get(&id)
    }

    pub fn waiting(&self) -> impl Iterator<Item = (&Id, &Waiting)> {
        self.entries.iter()
    }

    /// When the longest-waiting request was queued: each lane is FIFO, so only lane heads are
    /// looked at (O(lanes), whatever the number of requests queued).
    pub fn oldest_enqueued_ms(&mut self) -> Option<u64> {
        let heads = self.heads();
        heads.iter().filter_map(|id| self.entries.get(id)).map(|w| w.enqueued_ms).min()
    }

    pub fn running(&self, client: usize) -> u32 {
        self.client_running.get(client).copied().unwrap_or(0)
    }

    pub fn service_running(&self, service: usize) -> u32 {
        self.service_running.get(service).copied().unwrap_or(0)
    }

    /// Counts one dispatch of `client` at `now_ms` in its decayed use.
    fn note_use(&mut self, client: usize, now_ms: u64) {
        let half = self.settings.fairness_half_life_ms.max(1) as f64;
        let mut exp = now_ms.saturating_sub(self.recent_ref_ms) as f64 / half;
        if exp > 512.0 {
            let scale = 0.5f64.powf(exp);
            self.recent.iter_mut().for_each(|w| *w *= scale);
            self.recent_total *= scale;
            self.recent_ref_ms = now_ms;
            exp = 0.0;
        }
        let weight = 2f64.powf(exp);
        self.recent[client] += weight;
        self.recent_total += weight;
    }

    /// Fairness points (hundredths, 0–1000) of a client: 10 for one that used nothing
    /// recently, down to 0 for one that had it all.
    fn fairness_of(&self, client: usize) -> u32 {
        fairness_share(&self.recent, self.recent_total, client)
    }

    /// Fairness points of every client.
    pub fn fairness(&self) -> Vec<u32> {
        (0..self.recent.len()).map(|c| self.fairness_of(c)).collect()
    }

    /// Background classes wait while the CPU is busy.
    fn held_back(&self, class: Class) -> bool {
        self.background_held && matches!(class, Class::Batch | Class::Deferred)
    }

    fn off_peak(&self, now: Now) -> bool {
        self.settings.off_peak.is_some_and(|w| w.contains(now.minute_utc))
    }

    /// Each request's rank key: ascending is the order it would run, best first: starving ones
    /// oldest first, then by score, then oldest.
    fn keys(&self, ids: impl Iterator<Item = Id>, now: Now) -> Vec<Key> {
        ids.filter_map(|id| {
            let w = self.entries.get(&id)?;
            Some(rank_key(w, id, now, &self.settings, self.fairness_of(w.client)))
        })
        .collect()
    }

    /// Every waiting request in the order it would run, best first.
    fn order(&self, ids: impl Iterator<Item = Id>, now: Now) -> Vec<Id> {
        let mut keyed = self.keys(ids, now);
        keyed.sort_unstable();
        keyed.into_iter().map(|k| k.3).collect()
    }

    /// The best lane head (the smallest rank key), with cancelled requests dropped from the
    /// front of their lanes and empty lanes forgotten, in one pass.
    fn best_head(&mut self, now: Now) -> Option<Id> {
        let fairness: Vec<u32> = (0..self.recent.len()).map(|c| self.fairness_of(c)).collect();
        loop {
            let settings = &self.settings;
            let mut best: Option<(Key, (usize, Class, u32))> = None;
            self.lanes.retain(|&(client, class, route), lane| {
                let Some(head) = lane.front() else { return false };
                let key = rank(head.tier, class, head.enqueued_ms, head.id, now, settings, fairness[client]);
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, (client, class, route)));
                }
                true
            });
            let (key, lane) = best?;
            // A cancelled request stays in its lane until it reaches the front: drop it, look again.
            if self.entries.contains_key(&key.3) {
                return Some(key.3);
            }
            if let Some(l) = self.lanes.get_mut(&lane) {
                l.pop_front();
            }
        }
    }

    /// `fits` for a request that takes no pool units: only the concurrency limits and the
    /// off-peak window (no allocation).
    fn fits_without_pools(&self, w: &Waiting, now: Now) -> bool {
        let full =
            |max: &[Option<u32>], i: usize, running: u32| max.get(i).copied().flatten().is_some_and(|m| running >= m);
        !full(&self.limits.client_max, w.client, self.running(w.client))
            && !full(&self.limits.service_max, w.service, self.service_running(w.service))
            && (w.class != Class::Deferred || self.off_peak(now))
            && !self.held_back(w.class)
    }

    /// Lane heads, with cancelled requests dropped from the front of their lanes.
    fn heads(&mut self) -> Vec<Id> {
        let entries = &self.entries;
        self.lanes.retain(|_, lane| {
            while lane.front().is_some_and(|q| !entries.contains_key(&q.id)) {
                lane.pop_front();
            }
            !lane.is_empty()
        });
        self.lanes.values().filter_map(|l| l.front().map(|q| q.id)).collect()
    }

    /// Whether `w` could run now; Err carries the pools it waits for.
    fn fits(&mut self, w: &Waiting, now: Now) -> Result<(), Vec<usize>> {
        let client_full =
            self.limits.client_max.get(w.client).copied().flatten().is_some_and(|m| self.running(w.client) >= m);
        let service_full = self
            .limits
            .service_max
            .get(w.service)
            .copied()
            .flatten()
            .is_some_and(|m| self.service_running(w.service) >= m);
        if client_full || service_full || (w.class == Class::Deferred && !self.off_peak(now)) || self.held_back(w.class)
        {
            return Err(Vec::new());
        }
        let short: Vec<usize> = w
            .pools
            .iter()
            .filter(|&&(p, n)| self.pools[p].wait_ms(w.client, n, now.ms) != Some(0))
            .map(|&(p, _)| p)
            .collect();
        if short.is_empty() {
            Ok(())
        } else {
            Err(short)
        }
    }

    /// The next request to run, with its capacity taken; None when nothing can run now.
    /// A request held up by a pool keeps that pool for itself: nothing ranked below it may
    /// take from the pool, so a large request is not starved by a stream of small ones.
    pub fn next(&mut self, now: Now) -> Option<Grant> {
        if self.paused || self.entries.is_empty() {
            return None;
        }
        // Usually the best lane head fits: found in one pass over the lanes, no allocation.
        if let Some(id) = self.best_head(now) {
            let w = &self.entries[&id];
            if w.pools.is_empty() && self.fits_without_pools(w, now) {
                let w = self.entries[&id].clone();
                return Some(self.start(id, w, now));
            }
        }
        let heads = self.heads();
        let mut held: HashSet<usize> = HashSet::new();
        // A heap, not a sort: usually the best head fits, so this is O(lanes), not O(lanes log lanes).
        let mut ranked: BinaryHeap<Reverse<Key>> = self.keys(heads.into_iter(), now).into_iter().map(Reverse).collect();
        while let Some(Reverse((_, _, _, id))) = ranked.pop() {
            let w = self.entries[&id].clone();
            if w.pools.iter().any(|(p, _)| held.contains(p)) {
                continue;
            }
            match self.fits(&w, now) {
                Ok(()) => return Some(self.start(id, w, now)),
                Err(short) => held.extend(short),
            }
        }
        None
    }

    /// Runs `w` at once when nothing waits and it fits, without queueing it: with no one
    /// ahead there is no order to keep, so this is what [`push`](Self::push) then
    /// [`next`](Self::next) would decide, minus the lane, the entry and the ranking (the
    /// usual case, whenever warden keeps up). Otherwise `w` comes back, to be pushed.
    pub fn start_now(&mut self, w: Waiting, now: Now) -> Result<Grant, Waiting> {
        if self.paused || !self.entries.is_empty() || self.fits(&w, now).is_err() {
            return Err(w);
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(self.take_capacity(id, w, now))
    }

    fn start(&mut self, id: Id, w: Waiting, now: Now) -> Grant {
        self.entries.remove(&id);
        if let Some(lane) = self.lanes.get_mut(&(w.client, w.class, w.route)) {
            lane.pop_front();
        }
        self.take_capacity(id, w, now)
    }

    /// Its slots and pool units, taken for a request that starts now.
    fn take_capacity(&mut self, id: Id, w: Waiting, now: Now) -> Grant {
        let taken = w
            .pools
            .iter()
            .filter_map(|&(p, n)| {
                let n = n.min(self.pools[p].max_take(w.client, now.ms));
                self.pools[p].try_take(w.client, n, now.ms).map(|from| (p, from, n))
            })
            .collect();
        self.client_running[w.client] += 1;
        if let Some(s) = self.service_running.get_mut(w.service) {
            *s += 1;
        }
        self.note_use(w.client, now.ms);
        Grant { id, waiting: w, taken }
    }

    /// The granted request ended: its slots free up, and each pool is corrected to what it
    /// really used (`used[i]` for `taken[i]`; None = as estimated).
    pub fn finish(&mut self, grant: &Grant, used: Option<&[u64]>, now_ms: u64) {
        let c = &mut self.client_running[grant.waiting.client];
        *c = c.saturating_sub(1);
        if let Some(s) = self.service_running.get_mut(grant.waiting.service) {
            *s = s.saturating_sub(1);
        }
        for (i, &(p, from, took)) in grant.taken.iter().enumerate() {
            if let Some(&u) = used.and_then(|u| u.get(i)) {
                self.pools[p].adjust(from, took, u, now_ms);
            }
        }
    }

    /// When time alone (a pool refilling, the off-peak window opening) could let a waiting
    /// request run; None if only a finishing request can.
    pub fn wake_in_ms(&mut self, now: Now) -> Option<u64> {
        if self.paused {
            return None;
        }
        let heads = self.heads();
        let mut soonest: Option<u64> = None;
        for id in heads {
            let w = self.entries[&id].clone();
            let at = if w.class == Class::Deferred && !self.off_peak(now) {
                self.settings.off_peak.map(|win| u64::from(win.minutes_until_open(now.minute_utc)).max(1) * 60_000)
            } else {
                w.pools
                    .iter()
                    .filter_map(|&(p, n)| self.pools[p].wait_ms(w.client, n, now.ms))
                    .max()
                    .filter(|&ms| ms > 0)
            };
            if let Some(at) = at {
                soonest = Some(soonest.map_or(at, |s| s.min(at)));
            }
        }
        soonest
    }

    /// 1-based place of a waiting request in the order it would run now.
    pub fn position(&self, id: Id, now: Now) -> Option<usize> {
        self.entries.get(&id)?;
        self.order(self.entries.keys().copied(), now).iter().position(|&i| i == id).map(|p| p + 1)
    }

    pub fn score_of(&self, id: Id, now_ms: u64) -> Option<Score> {
        let w = self.entries.get(&id)?;
        Some(score(w, now_ms, self.fairness_of(w.client), &self.settings))
    }
}

#[cfg(test)]
mod tests;
