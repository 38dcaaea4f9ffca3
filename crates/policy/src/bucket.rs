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

#[derive(Debug, Clone)]
pub struct Pool {
    capacity: u64,
    refill_milli: u64,
    dedicated: bool,
    shared: Bucket,
    own: HashMap<usize, Bucket>,
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
        Pool { capacity, refill_milli, dedicated, shared, own }
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
        let amount = amount.min(self.max_take(client, now_ms));
        if self.own(client, now_ms).is_some_and(|b| b.try_take(amount, now_ms)) {
            return Some(From::Own(client));
        }
        (!self.dedicated && self.shared.try_take(amount, now_ms)).then_some(From::Shared)
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
        match (own, shared) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
