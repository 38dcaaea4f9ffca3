//! Does a service fit, and if not, what to offload: pure, `now` passed in.
//!
//! Rules, in order:
//! 1. A service that cannot fit even alone (need > limit) is impossible: fail at once, never an
//!    evict/reload loop.
//! 2. Running services in the newcomer's exclusive group must go, whatever the room.
//! 3. If the rest fits under the limit, nothing else moves.
//! 4. Otherwise victims are chosen among services that may sleep (never pinned or
//!    `idle_sleep = false`), idle ones before busy ones (a busy victim is drained first, never
//!    cut), lowest priority first, then least recently used; then the set is pruned to the
//!    smallest that still makes room.
//! 5. A service whose current run was itself a swap (it displaced others to start, or it was
//!    reloaded after being offloaded) is not offloaded before its minimum residency: that is
//!    what stops two services from swapping back and forth on every request. A service that
//!    started without displacing anyone may go at once, so a first swap never waits. If only
//!    protected services could make room, the plan says to wait, and which services would go
//!    once the wait is over.

use std::time::{Duration, Instant};

/// How soon to look again when only a starting service could make room.
pub const STARTING_RECHECK: Duration = Duration::from_millis(100);

/// A running service on the same device as the newcomer.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident {
    pub id: usize,
    /// Measured footprint, or the estimate until measured.
    pub bytes: u64,
    pub priority: i32,
    /// Last request activity; None = never used since it started.
    pub last_used: Option<Instant>,
    /// May be put to sleep at all (idle sleep on, not pinned).
    pub may_sleep: bool,
    /// Requests in flight now: offloading it waits for them to finish.
    pub in_flight: u32,
    pub running_since: Instant,
    /// Its current run was a swap (it displaced others, or was reloaded): only such a run is
    /// protected by the minimum residency.
    pub swapped: bool,
    pub group: Option<String>,
    /// Still starting: holds its memory but cannot be offloaded until it has run (its held
    /// requests would fail); a plan that needs it says to wait.
    pub starting: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Newcomer {
    pub id: usize,
    pub need: u64,
    /// What the others are projected to add by the time it is ready (the memory trend times
    /// its cold start): a start that fits now but would not fit then is treated as not fitting.
    pub growth: u64,
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub total: u64,
    /// Offload when use would exceed this share of `total`.
    pub threshold: f64,
    /// Always left free.
    pub reserve: u64,
}

impl Capacity {
    /// `reserve` None takes the default: 1 GiB, or an eighth of `total` where that is less
    /// (inside a small container a fixed 1 GiB would leave nothing to run).
    pub fn new(total: u64, threshold: f64, reserve: Option<u64>) -> Capacity {
        Capacity { total, threshold, reserve: reserve.unwrap_or((total / 8).min(1 << 30)) }
    }

    /// The most managed services may use together.
    pub fn limit(&self) -> u64 {
        let by_share = (self.total as f64 * self.threshold.clamp(0.0, 1.0)) as u64;
        by_share.min(self.total.saturating_sub(self.reserve))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Start now; `victims` (maybe none) go first, busy ones after draining.
    Go { victims: Vec<usize>, need: u64, free: u64 },
    /// Cannot fit even alone.
    Impossible { need: u64, limit: u64 },
    /// Room exists only by offloading services that are pinned or too freshly swapped in.
    /// With `retry_in`, room comes once that much time has passed, by offloading `victims`.
    Wait { retry_in: Option<Duration>, victims: Vec<usize>, need: u64, free: u64 },
}

impl Plan {
    pub fn fits(&self) -> bool {
        matches!(self, Plan::Go { .. })
    }
}

pub fn plan(cap: Capacity, residents: &[Resident], new: &Newcomer, min_residency: Duration, now: Instant) -> Plan {
    let planned = plan_growing(cap, residents, new, min_residency, now);
    if new.growth == 0 || planned.fits() {
        return planned;
    }
    // The trend is a projection: it makes room where room can be made, but never refuses a
    // start that fits now (under a sudden jump the slope runs high for a whole window, and
    // refusing would fail the very smaller rung the pressure cascade sends requests to).
    let now_only = Newcomer { growth: 0, ..new.clone() };
    match plan_growing(cap, residents, &now_only, min_residency, now) {
        fits @ Plan::Go { .. } => fits,
        _ => planned,
    }
}

fn plan_growing(cap: Capacity, residents: &[Resident], new: &Newcomer, min_residency: Duration, now: Instant) -> Plan {
    match plan_at(cap, residents, new, min_residency, now) {
        // Say who would go once the wait is over: the plan with the residency run out.
        Plan::Wait { retry_in: Some(after), need, free, .. } => {
            let victims = match plan_at(cap, residents, new, Duration::ZERO, now) {
                Plan::Go { victims, .. } => victims,
                _ => Vec::new(),
            };
            Plan::Wait { retry_in: Some(after), victims, need, free }
        }
        p => p,
    }
}

fn plan_at(cap: Capacity, residents: &[Resident], new: &Newcomer, min_residency: Duration, now: Instant) -> Plan {
    let limit = cap.limit();
    if new.need > limit {
        return Plan::Impossible { need: new.need, limit };
    }
    let others: Vec<&Resident> = residents.iter().filter(|r| r.id != new.id).collect();
    let used: u64 = others.iter().map(|r| r.bytes).sum();
    let free = limit.saturating_sub(used);
    // What is left of a resident's protection: only a swapped-in run is protected.
    let residency_left = |r: &Resident| {
        if r.swapped {
            min_residency.saturating_sub(now.saturating_duration_since(r.running_since))
        } else {
            Duration::ZERO
        }
    };
    let may_go = |r: &Resident| r.may_sleep && !r.starting && residency_left(r).is_zero();
    // When the earliest blocker could go: after its residency; a starting one, once it has run
    // (at least a moment, to look again).
    let retry_in = |blocking: &mut dyn Iterator<Item = &&Resident>| {
        blocking
            .filter(|r| r.may_sleep)
            .map(|r| if r.starting { residency_left(r).max(STARTING_RECHECK) } else { residency_left(r) })
            .min()
    };

    // Exclusive group members must go regardless of room.
    let group_mates: Vec<&Resident> =
        others.iter().copied().filter(|r| new.group.is_some() && r.group == new.group).collect();
    if group_mates.iter().any(|r| !may_go(r)) {
        let mut blocking = group_mates.iter().filter(|r| !may_go(r));
        return Plan::Wait { retry_in: retry_in(&mut blocking), victims: Vec::new(), need: new.need, free };
    }
    let mut victims: Vec<&Resident> = group_mates;
    let mut freed: u64 = victims.iter().map(|r| r.bytes).sum();
    if used - freed + new.need + new.growth <= limit {
        return Plan::Go { victims: victims.iter().map(|r| r.id).collect(), need: new.need, free };
    }

    let mut candidates: Vec<&Resident> =
        others.iter().copied().filter(|r| may_go(r) && !victims.iter().any(|v| v.id == r.id)).collect();
    candidates.sort_by(|a, b| {
        (a.in_flight > 0)
            .cmp(&(b.in_flight > 0))
            .then(a.priority.cmp(&b.priority))
            .then(a.last_used.cmp(&b.last_used))
            .then(b.bytes.cmp(&a.bytes))
            .then(a.id.cmp(&b.id))
    });
    let mandatory = victims.len();
    for c in candidates {
        if used - freed + new.need + new.growth <= limit {
            break;
        }
        freed += c.bytes;
        victims.push(c);
    }
    if used - freed + new.need + new.growth > limit {
        let mut blocking = others.iter().filter(|r| !may_go(r));
        return Plan::Wait { retry_in: retry_in(&mut blocking), victims: Vec::new(), need: new.need, free };
    }
    // Smallest set: drop chosen victims (latest first) that turn out not to be needed.
    let mut i = victims.len();
    while i > mandatory {
        i -= 1;
        if used - (freed - victims[i].bytes) + new.need + new.growth <= limit {
            freed -= victims[i].bytes;
            victims.remove(i);
        }
    }
    Plan::Go { victims: victims.iter().map(|r| r.id).collect(), need: new.need, free }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cap(total_gib: u64) -> Capacity {
        Capacity { total: total_gib * GIB, threshold: 1.0, reserve: 0 }
    }

    fn res(id: usize, gib: u64, t0: Instant) -> Resident {
        Resident {
            id,
            bytes: gib * GIB,
            priority: 50,
            last_used: Some(t0),
            may_sleep: true,
            in_flight: 0,
            running_since: t0,
            swapped: false,
            group: None,
            starting: false,
        }
    }

    fn new(id: usize, gib: u64) -> Newcomer {
        Newcomer { id, need: gib * GIB, growth: 0, group: None }
    }

    fn go(victims: &[usize]) -> impl Fn(&Plan) -> bool + '_ {
        move |p| matches!(p, Plan::Go { victims: v, .. } if v == victims)
    }

    #[test]
    fn limit_is_the_lower_of_threshold_and_reserve() {
        let c = Capacity { total: 16 * GIB, threshold: 0.75, reserve: GIB };
        assert_eq!(c.limit(), 12 * GIB);
        let c = Capacity { total: 16 * GIB, threshold: 1.0, reserve: 3 * GIB };
        assert_eq!(c.limit(), 13 * GIB);
        let c = Capacity { total: GIB, threshold: 1.0, reserve: 2 * GIB };
        assert_eq!(c.limit(), 0);
    }

    #[test]
    fn the_default_reserve_shrinks_with_a_small_capacity() {
        assert_eq!(Capacity::new(16 * GIB, 1.0, None).reserve, GIB);
        assert_eq!(Capacity::new(800 << 20, 1.0, None).reserve, 100 << 20);
        assert_eq!(Capacity::new(800 << 20, 1.0, None).limit(), 700 << 20);
        assert_eq!(Capacity::new(16 * GIB, 1.0, Some(0)).reserve, 0);
    }

    #[test]
    fn fits_without_moving_anything() {
        let t0 = Instant::now();
        let p = plan(cap(16), &[res(1, 4, t0)], &new(2, 8), Duration::ZERO, t0);
        assert!(go(&[])(&p), "{p:?}");
        assert_eq!(p, Plan::Go { victims: vec![], need: 8 * GIB, free: 12 * GIB });
    }

    #[test]
    fn impossible_when_it_cannot_fit_alone() {
        let t0 = Instant::now();
        let c = Capacity { total: 16 * GIB, threshold: 0.75, reserve: 0 };
        assert_eq!(plan(c, &[], &new(1, 13), Duration::ZERO, t0), Plan::Impossible { need: 13 * GIB, limit: 12 * GIB });
    }

    #[test]
    fn offloads_lowest_priority_then_least_recently_used() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut a = res(1, 6, t0);
        a.priority = 90;
        let b = Resident { last_used: Some(later), ..res(2, 6, t0) };
        let c = res(3, 6, t0); // same priority as b, used earlier
        let p = plan(cap(20), &[a, b, c], &new(9, 6), Duration::ZERO, later);
        assert!(go(&[3])(&p), "{p:?}");
    }

    #[test]
    fn never_offloads_pinned_or_no_sleep_services() {
        let t0 = Instant::now();
        let pinned = Resident { may_sleep: false, ..res(1, 10, t0) };
        let p = plan(cap(16), std::slice::from_ref(&pinned), &new(2, 8), Duration::ZERO, t0);
        assert_eq!(p, Plan::Wait { retry_in: None, victims: vec![], need: 8 * GIB, free: 6 * GIB });
        // 6 GiB pinned + 4 GiB idle + 8 GiB needed > 16: the idle one goes, the pinned one stays.
        let pinned = Resident { bytes: 6 * GIB, ..pinned };
        let p = plan(cap(16), &[pinned, res(3, 4, t0)], &new(2, 8), Duration::ZERO, t0);
        assert!(go(&[3])(&p), "{p:?}");
    }

    #[test]
    fn prefers_idle_victims_over_busy_ones() {
        let t0 = Instant::now();
        let busy = Resident { in_flight: 2, priority: 10, ..res(1, 6, t0) };
        let idle = Resident { priority: 80, ..res(2, 6, t0) };
        let p = plan(cap(16), &[busy.clone(), idle], &new(3, 8), Duration::ZERO, t0);
        assert!(go(&[2])(&p), "{p:?}");
        // A busy one is chosen (and drained, not cut) only when nothing else makes room.
        let p = plan(cap(16), &[busy], &new(3, 12), Duration::ZERO, t0);
        assert!(go(&[1])(&p), "{p:?}");
    }

    #[test]
    fn picks_the_smallest_set_that_makes_room() {
        let t0 = Instant::now();
        // Same priority, LRU order 1,2,3: greedy takes 1 (2 GiB) and 2 (8 GiB); 1 is not needed.
        let a = Resident { last_used: Some(t0), ..res(1, 2, t0) };
        let b = Resident { last_used: Some(t0 + Duration::from_secs(1)), ..res(2, 8, t0) };
        let c = Resident { last_used: Some(t0 + Duration::from_secs(2)), ..res(3, 4, t0) };
        let p = plan(cap(16), &[a, b, c], &new(9, 8), Duration::ZERO, t0 + Duration::from_secs(5));
        assert!(go(&[2])(&p), "{p:?}");
    }

    #[test]
    fn exclusive_group_mates_always_go() {
        let t0 = Instant::now();
        let mate = Resident { group: Some("gpu-big".into()), ..res(1, 1, t0) };
        let other = res(2, 1, t0);
        let newcomer = Newcomer { group: Some("gpu-big".into()), ..new(3, 1) };
        let p = plan(cap(16), &[mate.clone(), other], &newcomer, Duration::ZERO, t0);
        assert!(go(&[1])(&p), "{p:?}");
        // A pinned group mate blocks the newcomer.
        let pinned = Resident { may_sleep: false, ..mate };
        assert!(matches!(plan(cap(16), &[pinned], &newcomer, Duration::ZERO, t0), Plan::Wait { .. }));
    }

    #[test]
    fn minimum_residency_prevents_thrash_and_says_when_and_who() {
        let t0 = Instant::now();
        // Swapped in 10 s ago (it displaced someone): protected for 20 s more, then it goes.
        let fresh = Resident { swapped: true, ..res(1, 10, t0) };
        let min = Duration::from_secs(30);
        let p = plan(cap(16), std::slice::from_ref(&fresh), &new(2, 8), min, t0 + Duration::from_secs(10));
        assert_eq!(
            p,
            Plan::Wait { retry_in: Some(Duration::from_secs(20)), victims: vec![1], need: 8 * GIB, free: 6 * GIB }
        );
        let p = plan(cap(16), &[fresh], &new(2, 8), min, t0 + Duration::from_secs(30));
        assert!(go(&[1])(&p), "{p:?}");
    }

    #[test]
    fn a_first_swap_never_waits_for_the_minimum_residency() {
        let t0 = Instant::now();
        // Started 1 s ago on its own (nobody displaced): it may go at once.
        let first = res(1, 10, t0);
        let p = plan(cap(16), &[first], &new(2, 8), Duration::from_secs(30), t0 + Duration::from_secs(1));
        assert!(go(&[1])(&p), "{p:?}");
    }

    #[test]
    fn a_starting_service_is_waited_for_not_offloaded() {
        let t0 = Instant::now();
        let starting = Resident { starting: true, running_since: t0, ..res(1, 10, t0) };
        let p = plan(cap(16), std::slice::from_ref(&starting), &new(2, 8), Duration::ZERO, t0);
        assert_eq!(p, Plan::Wait { retry_in: Some(STARTING_RECHECK), victims: vec![], need: 8 * GIB, free: 6 * GIB });
        let swapping = Resident { swapped: true, ..starting };
        let p = plan(cap(16), &[swapping], &new(2, 8), Duration::from_secs(2), t0);
        assert_eq!(
            p,
            Plan::Wait { retry_in: Some(Duration::from_secs(2)), victims: vec![], need: 8 * GIB, free: 6 * GIB }
        );
    }

    #[test]
    fn a_start_that_would_not_fit_by_the_time_it_is_ready_does_not_fit_now() {
        let t0 = Instant::now();
        // 8 GiB used of 16, 6 GiB needed: fits now. With the others growing 3 GiB while it
        // starts, it would not: the idle one goes first.
        let p = plan(cap(16), &[res(1, 8, t0)], &new(2, 6), Duration::ZERO, t0);
        assert!(go(&[])(&p), "{p:?}");
        let growing = Newcomer { growth: 3 * GIB, ..new(2, 6) };
        let p = plan(cap(16), &[res(1, 8, t0)], &growing, Duration::ZERO, t0);
        assert!(go(&[1])(&p), "{p:?}");
        // Growth so large that no offload could make room: a start that fits now still goes.
        let soaring = Newcomer { growth: 100 * GIB, ..new(2, 6) };
        let p = plan(cap(16), &[res(1, 8, t0)], &soaring, Duration::ZERO, t0);
        assert!(go(&[])(&p), "{p:?}");
        // And one that does not fit now is refused as before.
        let p = plan(cap(16), &[Resident { may_sleep: false, ..res(1, 12, t0) }], &soaring, Duration::ZERO, t0);
        assert!(!p.fits(), "{p:?}");
    }

    #[test]
    fn the_newcomer_itself_is_never_counted_or_chosen() {
        let t0 = Instant::now();
        let p = plan(cap(16), &[res(1, 10, t0)], &new(1, 10), Duration::ZERO, t0);
        assert!(go(&[])(&p), "{p:?}");
    }

    /// Exhaustive over small worlds: every plan that says go leaves room, never names a
    /// pinned, too-fresh or the newcomer's own service, and no smaller victim set would do.
    #[test]
    fn exhaustive_small_worlds_are_sound_and_minimal() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let sizes = [1u64, 3, 5];
        for mask in 0..(1u32 << 9) {
            let residents: Vec<Resident> = (0..3)
                .map(|i| {
                    let bits = (mask >> (i * 3)) & 0b111;
                    Resident {
                        id: i,
                        bytes: sizes[i] * GIB,
                        priority: (bits & 1) as i32 * 10,
                        last_used: Some(t0 + Duration::from_secs(i as u64)),
                        may_sleep: bits & 2 == 0,
                        in_flight: (bits >> 2) & 1,
                        running_since: t0,
                        swapped: false,
                        group: None,
                        starting: false,
                    }
                })
                .collect();
            for need in [1u64, 4, 8, 12] {
                let newcomer = new(7, need);
                let c = cap(10);
                match plan(c, &residents, &newcomer, Duration::ZERO, now) {
                    Plan::Go { victims, .. } => {
                        let kept: u64 = residents.iter().filter(|r| !victims.contains(&r.id)).map(|r| r.bytes).sum();
                        assert!(kept + need * GIB <= c.limit(), "no room: {mask} {need} {victims:?}");
                        for v in &victims {
                            assert!(residents[*v].may_sleep, "pinned victim: {mask} {need}");
                        }
                        for skip in 0..victims.len() {
                            let fewer: Vec<usize> =
                                victims.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, v)| *v).collect();
                            let kept: u64 = residents.iter().filter(|r| !fewer.contains(&r.id)).map(|r| r.bytes).sum();
                            assert!(kept + need * GIB > c.limit(), "not minimal: {mask} {need} {victims:?}");
                        }
                    }
                    Plan::Impossible { .. } => assert!(need * GIB > c.limit()),
                    Plan::Wait { .. } => {
                        let sleepers: u64 = residents.iter().filter(|r| !r.may_sleep).map(|r| r.bytes).sum();
                        assert!(sleepers + need * GIB > c.limit(), "could have made room: {mask} {need}");
                    }
                }
            }
        }
    }
}
