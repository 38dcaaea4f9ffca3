//! Token buckets for `[pools.X]`: upstream rate limits shaped before requests leave.
//! Pure: time is milliseconds passed in by the caller. Amounts are kept in thousandths so
//! fractional refill rates and millisecond steps stay exact.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    capacity: i64,
    /// Per second, in thousandths.
    refill: i64,
    /// In thousandths; below zero after a request used more than it took (repaid by refill).
    level: i64,
    last_ms: u64,
}

impl Bucket {
    /// Starts full. `capacity` in whole units, `refill_milli` in thousandths per second.
    pub fn new(capacity: u64, refill_milli: u64, now_ms: u64) -> Self {
        let capacity = capacity as i64 * 1000;
        Bucket { capacity, refill: refill_milli as i64, level: capacity, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms > self.last_ms {
            let added = (now_ms - self.last_ms) as i128 * self.refill as i128 / 1000;
            self.level = (self.level as i128 + added).min(self.capacity as i128) as i64;
            self.last_ms = now_ms;
        }
    }

    pub fn capacity(&self) -> u64 {
        (self.capacity / 1000) as u64
    }

    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        (self.level.max(0) / 1000) as u64
    }

    pub fn try_take(&mut self, amount: u64, now_ms: u64) -> bool {
        self.refill(now_ms);
        let want = amount as i64 * 1000;
        if self.level >= want {
            self.level -= want;
            true
        } else {
            false
        }
    }

    /// Corrects a take once the real amount is known: gives back the rest, or goes into debt.
    pub fn adjust(&mut self, took: u64, used: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level = (self.level + (took as i64 - used as i64) * 1000).min(self.capacity);
    }

    /// Holds no more than `units` (what the upstream says remains).
    fn cap_at(&mut self, units: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level = self.level.min(units.min(i64::MAX as u64 / 1000) as i64 * 1000);
    }

    /// Milliseconds until `amount` could be taken; None if it never can (no refill).
    pub fn wait_ms(&mut self, amount: u64, now_ms: u64) -> Option<u64> {
        self.refill(now_ms);
        let missing = amount as i64 * 1000 - self.level;
        if missing <= 0 {
            Some(0)
        } else if self.refill == 0 {
            None
        } else {
            Some(((missing as i128 * 1000 + self.refill as i128 - 1) / self.refill as i128) as u64)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sharing {
    /// One bucket for everyone.
    Shared,
    /// Each listed client has its share of capacity and refill to itself; the rest is shared.
    Reserved(Vec<(usize, f64)>),
    /// Every client has a bucket of the full size to itself.
    Dedicated,
}

/// Which bucket a take came from, to correct it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Shared,
    Own(usize),
}

/// What an upstream announced about its limit in this pool's unit (`x-ratelimit-*-requests`
/// or `-tokens`), read from one of its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Announced {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Until its window resets, from when the answer came.
    pub reset_ms: Option<u64>,
}

/// The last announcement, and when it came (for `/api/resources/availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub announced: Announced,
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Pool {
    capacity: u64,
    refill_milli: u64,
    dedicated: bool,
    shared: Bucket,
    own: HashMap<usize, Bucket>,
    /// Nothing is taken before this: the upstream refused for rate (429), and sending more
    /// would only fail.
    paused_until_ms: u64,
    /// What the upstream said remains of its current window: until that window resets, no
    /// more than this is taken, however fast the configured refill is.
    window: Option<Window>,
    pub learned: Option<Learned>,
}

/// The rest of an upstream's announced window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    left: u64,
    until_ms: u64,
    /// The upstream's limit per window: what a fresh window holds.
    limit: Option<u64>,
    /// How long the announced reset was: a fresh window is assumed to last as long (if all
    /// its requests fail without a word, it still ends).
    span_ms: u64,
}

impl Pool {
    pub fn new(capacity: u64, refill_per_sec: f64, sharing: &Sharing, now_ms: u64) -> Self {
        let refill_milli = (refill_per_sec * 1000.0).round() as u64;
        let part =
            |share: f64| Bucket::new((capacity as f64 * share) as u64, (refill_milli as f64 * share) as u64, now_ms);
        let (shared, own, dedicated) = match sharing {
            Sharing::Shared => (Bucket::new(capacity, refill_milli, now_ms), HashMap::new(), false),
            Sharing::Reserved(shares) => {
                let rest = 1.0 - shares.iter().map(|(_, s)| s).sum::<f64>();
                (part(rest.max(0.0)), shares.iter().map(|&(c, s)| (c, part(s))).collect(), false)
            }
            Sharing::Dedicated => (Bucket::new(0, 0, now_ms), HashMap::new(), true),
        };
        Pool { capacity, refill_milli, dedicated, shared, own, paused_until_ms: 0, window: None, learned: None }
    }

    /// The same pool with a new size, refill or sharing (a reloaded config): what it knows of
    /// its upstream (announced window, pause) is kept, and no bucket holds more than it held
    /// before — a reload must not hand out a fresh burst.
    pub fn resized(&mut self, capacity: u64, refill_per_sec: f64, sharing: &Sharing, now_ms: u64) -> Pool {
        let mut new = Pool::new(capacity, refill_per_sec, sharing, now_ms);
        let shared = self.shared.available(now_ms);
        new.shared.cap_at(shared, now_ms);
        for (c, b) in new.own.iter_mut() {
            if let Some(old) = self.own.get_mut(c) {
                b.cap_at(old.available(now_ms), now_ms);
            }
        }
        new.paused_until_ms = self.paused_until_ms;
        new.window = self.window;
        new.learned = self.learned;
        new
    }

    /// Adopts what the upstream announced (it counts what other users of the same key spent
    /// too): no bucket holds more than its share of what remains, and with a reset time, no
    /// more than that is taken before the upstream's window resets.
    pub fn learn(&mut self, announced: Announced, now_ms: u64) {
        self.learned = Some(Learned { announced, at_ms: now_ms });
        let Some(remaining) = announced.remaining else { return };
        let capacity = self.capacity.max(1);
        let share = |b: &Bucket| if self.dedicated { remaining } else { remaining * b.capacity() / capacity };
        let shared = share(&self.shared);
        self.shared.cap_at(shared, now_ms);
        let owns: Vec<(usize, u64)> = self.own.iter().map(|(&c, b)| (c, share(b))).collect();
        for (c, units) in owns {
            if let Some(b) = self.own.get_mut(&c) {
                b.cap_at(units, now_ms);
            }
        }
        if let Some(reset) = announced.reset_ms {
            let until_ms = now_ms.saturating_add(reset);
            // Within a window what remains only shrinks: requests sent after this answer was
            // counted upstream are already taken from `left`, and answers arrive out of order.
            let left = match self.window {
                Some(w) if now_ms < w.until_ms => w.left.min(remaining),
                _ => remaining,
            };
            let window = Window { left, until_ms, limit: announced.limit, span_ms: reset.max(1) };
            self.window = Some(window);
        }
    }

    /// The announced window, while it lasts.
    fn open_window(&mut self, now_ms: u64) -> Option<&mut Window> {
        if let Some(w) = self.window.filter(|w| now_ms >= w.until_ms) {
            // The upstream's window reset: until its next answer says more, the new one holds
            // what its limit allows (unknown limit: only the configured bucket applies).
            self.window = w.limit.map(|limit| Window { left: limit, until_ms: now_ms.saturating_add(w.span_ms), ..w });
        }
        self.window.as_mut()
    }

    /// Units left of the upstream's announced window, while one applies.
    pub fn window_left(&mut self, now_ms: u64) -> Option<u64> {
        self.open_window(now_ms).map(|w| w.left)
    }

    /// The upstream refused for rate: nothing is taken for `for_ms`.
    pub fn pause(&mut self, for_ms: u64, now_ms: u64) {
        self.paused_until_ms = self.paused_until_ms.max(now_ms.saturating_add(for_ms));
    }

    /// How much longer the pool is paused (0 = not paused).
    pub fn paused_ms(&self, now_ms: u64) -> u64 {
        self.paused_until_ms.saturating_sub(now_ms)
    }

    fn own(&mut self, client: usize, now_ms: u64) -> Option<&mut Bucket> {
        if self.dedicated {
            let (c, r) = (self.capacity, self.refill_milli);
            return Some(self.own.entry(client).or_insert_with(|| Bucket::new(c, r, now_ms)));
        }
        self.own.get_mut(&client)
    }

    /// The most one request of this client can ever take: larger costs are clamped to it, so a
    /// big request waits for a full bucket instead of never running.
    pub fn max_take(&mut self, client: usize, now_ms: u64) -> u64 {
        let shared = if self.dedicated { 0 } else { self.shared.capacity() };
        self.own(client, now_ms).map_or(0, |b| b.capacity()).max(shared)
    }

    /// Takes from the client's own bucket first, then from the shared one.
    pub fn try_take(&mut self, client: usize, amount: u64, now_ms: u64) -> Option<From> {
        if self.paused_ms(now_ms) > 0 {
            return None;
        }
        let amount = amount.min(self.max_take(client, now_ms));
        if self.open_window(now_ms).is_some_and(|w| w.left < amount) {
            return None;
        }
        let from = if self.own(client, now_ms).is_some_and(|b| b.try_take(amount, now_ms)) {
            From::Own(client)
        } else if !self.dedicated && self.shared.try_take(amount, now_ms) {
            From::Shared
        } else {
            return None;
        };
        if let Some(w) = self.open_window(now_ms) {
            w.left -= amount;
        }
        Some(from)
    }

    pub fn adjust(&mut self, from: From, took: u64, used: u64, now_ms: u64) {
        match from {
            From::Shared => self.shared.adjust(took, used, now_ms),
            From::Own(c) => {
                if let Some(b) = self.own(c, now_ms) {
                    b.adjust(took, used, now_ms)
                }
            }
        }
    }

    pub fn wait_ms(&mut self, client: usize, amount: u64, now_ms: u64) -> Option<u64> {
        let amount = amount.min(self.max_take(client, now_ms));
        let own = self.own(client, now_ms).and_then(|b| b.wait_ms(amount, now_ms));
        let shared = if self.dedicated { None } else { self.shared.wait_ms(amount, now_ms) };
        let wait = match (own, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Refill goes on during a pause; looking again when it ends is soon enough.
        let mut blocked = self.paused_ms(now_ms);
        if let Some(w) = self.open_window(now_ms).filter(|w| w.left < amount) {
            blocked = blocked.max(w.until_ms - now_ms);
        }
        wait.map(|w| w.max(blocked))
    }

    /// (available, capacity) of what everyone shares, or of the client's own bucket if dedicated.
    pub fn level(&mut self, client: Option<usize>, now_ms: u64) -> (u64, u64) {
        match client.and_then(|c| self.own(c, now_ms)) {
            Some(b) => (b.available(now_ms), b.capacity()),
            None => (self.shared.available(now_ms), self.shared.capacity()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_resized_pool_keeps_its_level_pause_and_window() {
        let mut p = Pool::new(100, 10.0, &Sharing::Shared, 0);
        assert!(p.try_take(0, 70, 0).is_some());
        p.learn(Announced { limit: Some(50), remaining: Some(20), reset_ms: Some(5_000) }, 0);
        p.pause(1_000, 0);
        let mut bigger = p.resized(1_000, 100.0, &Sharing::Shared, 0);
        assert_eq!(bigger.level(None, 0), (20, 1_000), "no fresh burst: the level it had, the new capacity");
        assert_eq!(bigger.paused_ms(0), 1_000);
        assert_eq!(bigger.window_left(0), Some(20));
        let mut smaller = p.resized(10, 1.0, &Sharing::Shared, 0);
        assert_eq!(smaller.level(None, 0), (10, 10), "never above the new capacity");
    }

    #[test]
    fn refills_at_its_rate_up_to_capacity() {
        let mut b = Bucket::new(100, 10_000, 0); // 10/s
        assert!(b.try_take(100, 0));
        assert!(!b.try_take(1, 0));
        assert_eq!(b.wait_ms(5, 0), Some(500));
        assert!(!b.try_take(5, 499));
        assert!(b.try_take(5, 500));
        assert_eq!(b.available(100_000), 100, "never above capacity");
        // A request that used 30 more than it took leaves the bucket in debt.
        assert!(b.try_take(50, 100_000));
        b.adjust(50, 80, 100_000);
        assert_eq!(b.available(100_000), 20);
        b.adjust(50, 0, 100_000);
        assert_eq!(b.available(100_000), 70);
    }

    #[test]
    fn reserved_share_is_kept_for_its_client() {
        // 20 % of 100 for client 0.
        let mut p = Pool::new(100, 10.0, &Sharing::Reserved(vec![(0, 0.2)]), 0);
        assert_eq!(p.try_take(1, 80, 0), Some(From::Shared));
        assert_eq!(p.try_take(1, 1, 0), None, "client 1 has used everything it may");
        assert_eq!(p.try_take(0, 20, 0), Some(From::Own(0)), "client 0's share is still there");
        assert_eq!(p.try_take(0, 1, 0), None);
        // Its own share refills at 2/s, the shared part at 8/s: whichever has 2 first.
        assert_eq!(p.wait_ms(0, 2, 0), Some(250));
        assert_eq!(p.wait_ms(1, 2, 0), Some(250));
        assert_eq!(p.wait_ms(0, 20, 0), Some(2500));
    }

    #[test]
    fn dedicated_buckets_do_not_interact() {
        let mut p = Pool::new(10, 1.0, &Sharing::Dedicated, 0);
        assert!(p.try_take(0, 10, 0).is_some());
        assert!(p.try_take(0, 1, 0).is_none());
        assert!(p.try_take(1, 10, 0).is_some());
    }

    #[test]
    fn oversized_requests_wait_for_a_full_bucket() {
        let mut p = Pool::new(10, 1.0, &Sharing::Shared, 0);
        assert!(p.try_take(0, 50, 0).is_some());
        assert_eq!(p.wait_ms(0, 50, 0), Some(10_000));
    }

    #[test]
    fn an_upstream_announcement_caps_the_level_until_its_window_resets() {
        // The configured refill (1000/s) is far faster than the upstream's real limit.
        let mut p = Pool::new(100, 1000.0, &Sharing::Shared, 0);
        let said = |remaining, reset_ms| Announced { limit: Some(60), remaining: Some(remaining), reset_ms };
        p.learn(said(30, None), 0);
        assert_eq!(p.level(None, 0), (30, 100), "corrected down to what the upstream says");
        assert_eq!(p.level(None, 1_000), (100, 100), "without a reset time, refill brings it back");
        p.learn(said(2, Some(3_000)), 1_000);
        assert_eq!(p.try_take(0, 1, 1_000), Some(From::Shared));
        assert_eq!(p.try_take(0, 1, 1_500), Some(From::Shared), "refilled, but the window has 1 left");
        assert_eq!(p.try_take(0, 1, 1_600), None, "nothing left of the upstream's window");
        assert_eq!(p.wait_ms(0, 1, 1_600), Some(2_400), "look again when it resets");
        p.learn(said(5, Some(2_000)), 1_700);
        assert_eq!(p.window_left(1_700), Some(0), "within a window what remains only shrinks");
        assert_eq!(p.learned.map(|l| l.announced.remaining), Some(Some(5)));
        // The window resets: a fresh one holds the announced limit until the next answer.
        assert_eq!(p.window_left(3_700), Some(60));
        for _ in 0..60 {
            assert!(p.try_take(0, 1, 3_700).is_some());
        }
        assert_eq!(p.try_take(0, 1, 3_700), None);
        assert_eq!(p.wait_ms(0, 1, 3_700), Some(2_000), "a fresh window lasts as long as the last reset said");
        p.learn(said(10, Some(1_000)), 3_800);
        assert_eq!(p.window_left(3_800), Some(0), "what was sent since is not given back");
        assert_eq!(p.window_left(4_800), Some(60));
    }

    #[test]
    fn a_reserved_pool_splits_what_remains_by_share() {
        let mut p = Pool::new(100, 0.0, &Sharing::Reserved(vec![(0, 0.2)]), 0);
        p.learn(Announced { remaining: Some(50), ..Announced::default() }, 0);
        assert_eq!(p.level(Some(0), 0), (10, 20));
        assert_eq!(p.level(Some(1), 0), (40, 80));
    }

    #[test]
    fn a_refusal_pauses_for_as_long_as_the_upstream_says() {
        let mut p = Pool::new(10, 1.0, &Sharing::Dedicated, 0);
        p.pause(1_000, 0);
        p.pause(500, 0);
        assert_eq!(p.paused_ms(0), 1_000, "a shorter pause does not cut a longer one");
        assert!(p.try_take(3, 1, 999).is_none());
        assert!(p.try_take(3, 1, 1_000).is_some());
    }

    proptest! {
        /// Over any stretch of time, what is taken never exceeds capacity plus refill.
        #[test]
        fn takes_never_exceed_capacity_plus_refill(
            cap in 1u64..1000, rate in 1u64..500,
            steps in proptest::collection::vec((0u64..2000, 1u64..300), 1..200),
        ) {
            let mut b = Bucket::new(cap, rate * 1000, 0);
            let (mut now, mut taken) = (0u64, 0u64);
            for (dt, amount) in steps {
                now += dt;
                if b.try_take(amount, now) {
                    taken += amount;
                }
                prop_assert!(taken <= cap + rate * now / 1000, "{taken} at {now} ms");
            }
        }
    }
}
