use proptest::prelude::*;

use super::*;
use crate::bucket::Sharing;

const SETTINGS: Settings =
    Settings { aging_full_ms: 60_000, starve_ms: 300_000, fairness_half_life_ms: 60_000, off_peak: None };

fn at(ms: u64) -> Now {
    Now { ms, minute_utc: 12 * 60 }
}

/// `clients` clients of unlimited concurrency, one service running one request at a time.
fn one_at_a_time(clients: usize) -> Dispatcher {
    let limits = Limits { client_max: vec![None; clients], service_max: vec![Some(1)] };
    Dispatcher::new(clients, limits, Vec::new(), SETTINGS)
}

fn req(client: usize, tier: u32, class: Class, ms: u64) -> Waiting {
    Waiting { client, tier, class, service: 0, route: 0, pools: Vec::new(), enqueued_ms: ms }
}

#[test]
fn a_higher_class_overtakes_queued_batch_work() {
    let mut d = one_at_a_time(1);
    let first = d.push(req(0, 20, Class::Batch, 0));
    let running = d.next(at(0)).unwrap();
    assert_eq!(running.id, first);
    let batch: Vec<Id> = (1..=3).map(|i| d.push(req(0, 20, Class::Batch, i))).collect();
    let urgent = d.push(req(0, 20, Class::Immediate, 10));
    assert!(d.next(at(10)).is_none(), "the service is busy");
    assert_eq!(d.position(urgent, at(10)), Some(1));
    d.finish(&running, None, 20);
    assert_eq!(d.next(at(20)).unwrap().id, urgent);
    assert_eq!(d.position(batch[0], at(20)), Some(1));
}

#[test]
fn tier_then_age_then_fairness() {
    let mut d = Dispatcher::new(2, Limits { client_max: vec![None; 2], service_max: vec![Some(1)] }, vec![], SETTINGS);
    let low = d.push(req(0, 10, Class::Normal, 0));
    let high = d.push(req(1, 30, Class::Normal, 0));
    assert_eq!(d.next(at(0)).unwrap().id, high);
    // Waiting 60 s is worth 20 points: a tier-10 request that waited beats a fresh tier-20 one.
    let mut d = one_at_a_time(2);
    let old = d.push(req(0, 10, Class::Normal, 0));
    let _fresh = d.push(req(1, 20, Class::Normal, 60_000));
    assert_eq!(d.score_of(old, 60_000).unwrap().aging, 2000);
    assert_eq!(d.next(at(60_000)).unwrap().id, old);
    let _ = low;
}

#[test]
fn the_client_that_used_less_goes_first_among_equals() {
    let mut d = Dispatcher::new(2, Limits { client_max: vec![None; 2], service_max: vec![None] }, vec![], SETTINGS);
    for i in 0..5 {
        d.push(req(0, 20, Class::Normal, i));
        d.next(at(i)).unwrap();
    }
    let busy = d.push(req(0, 20, Class::Normal, 10));
    let quiet = d.push(req(1, 20, Class::Normal, 11));
    assert_eq!(d.fairness(), vec![0, 1000]);
    assert!(d.score_of(quiet, 11).unwrap().total() > d.score_of(busy, 11).unwrap().total());
    assert_eq!(d.next(at(11)).unwrap().id, quiet);
    // quiet's one dispatch is newer than busy's five: it weighs a little more than one of them.
    let f = d.fairness();
    assert!(f[0] < f[1] && f[0] < 170, "{f:?}");
    // A minute later (one half-life) a dispatch weighs twice one a minute earlier: busy's
    // request (aged, so it runs first) counts 2 against quiet's 1, on top of busy's 5.
    d.push(req(1, 20, Class::Normal, 60_011));
    assert_eq!(d.next(at(60_011)).unwrap().id, busy);
    assert_eq!(d.fairness(), vec![125, 875]);
}

#[test]
fn concurrency_limits_hold_per_client_and_per_service() {
    let limits = Limits { client_max: vec![Some(2), None], service_max: vec![Some(3)] };
    let mut d = Dispatcher::new(2, limits, vec![], SETTINGS);
    for i in 0..4 {
        d.push(req(0, 40, Class::Immediate, i));
    }
    let other = d.push(req(1, 0, Class::Batch, 5));
    let a = d.next(at(5)).unwrap();
    d.next(at(5)).unwrap();
    assert_eq!(d.running(0), 2);
    assert_eq!(d.next(at(5)).unwrap().id, other, "client 0 is at its limit; client 1 is not");
    assert!(d.next(at(5)).is_none(), "the service is at its limit");
    d.finish(&a, None, 6);
    assert_eq!(d.next(at(6)).unwrap().waiting.client, 0);
}

#[test]
fn a_pool_refills_and_a_big_request_is_not_starved_by_small_ones() {
    let pool = Pool::new(100, 10.0, &Sharing::Shared, 0);
    let limits = Limits { client_max: vec![None; 2], service_max: vec![None] };
    let mut d = Dispatcher::new(2, limits, vec![pool], SETTINGS);
    let with = |client, tier, n, ms| Waiting { pools: vec![(0, n)], ..req(client, tier, Class::Normal, ms) };
    d.push(with(0, 20, 60, 0));
    d.next(at(0)).unwrap();
    let big = d.push(with(0, 40, 80, 1));
    let small = d.push(with(1, 10, 10, 2));
    // 40 left: the big one must wait 4 s; the small one fits but ranks lower, so it waits too.
    assert!(d.next(at(2)).is_none());
    assert_eq!(d.wake_in_ms(at(2)), Some(3_998));
    assert_eq!(d.next(at(4_000)).unwrap().id, big);
    assert_eq!(d.wake_in_ms(at(4_000)), Some(1_000));
    assert_eq!(d.next(at(5_000)).unwrap().id, small);
    assert!(d.is_empty());
}

#[test]
fn a_pool_is_corrected_to_real_use() {
    let pool = Pool::new(100, 0.0, &Sharing::Shared, 0);
    let mut d = Dispatcher::new(1, Limits { client_max: vec![None], service_max: vec![None] }, vec![pool], SETTINGS);
    d.push(Waiting { pools: vec![(0, 90)], ..req(0, 20, Class::Normal, 0) });
    let g = d.next(at(0)).unwrap();
    assert_eq!(g.taken, vec![(0, From::Shared, 90)]);
    d.finish(&g, Some(&[30]), 1);
    assert_eq!(d.pools[0].level(None, 1), (70, 100));
}

#[test]
fn deferred_work_runs_only_off_peak() {
    let settings = Settings { off_peak: Some(Window::parse("22:00-06:00").unwrap()), ..SETTINGS };
    let mut d = Dispatcher::new(1, Limits { client_max: vec![None], service_max: vec![None] }, vec![], settings);
    let id = d.push(req(0, 40, Class::Deferred, 0));
    let noon = Now { ms: 0, minute_utc: 12 * 60 };
    assert!(d.next(noon).is_none());
    assert_eq!(d.wake_in_ms(noon), Some(10 * 60 * 60_000));
    // Starving does not matter: deferred means off-peak.
    assert!(d.next(Now { ms: 10_000_000, minute_utc: 21 * 60 + 59 }).is_none());
    assert_eq!(d.next(Now { ms: 10_000_000, minute_utc: 22 * 60 }).unwrap().id, id);
}

#[test]
fn paused_dispatches_nothing_and_cancelled_requests_vanish() {
    let mut d = one_at_a_time(1);
    let a = d.push(req(0, 20, Class::Normal, 0));
    let b = d.push(req(0, 20, Class::Normal, 1));
    d.paused = true;
    assert!(d.next(at(2)).is_none());
    d.paused = false;
    assert_eq!(d.cancel(a).map(|w| w.enqueued_ms), Some(0));
    assert_eq!(d.len(), 1);
    assert_eq!(d.position(b, at(2)), Some(1));
    assert_eq!(d.next(at(2)).unwrap().id, b);
    assert!(d.cancel(a).is_none());
}

proptest! {
    /// Under any sustained stream of higher-class work from busier, better-tier clients, a
    /// basic batch request still runs within the starvation bound (plus one service time).
    #[test]
    fn nothing_starves(
        arrivals in proptest::collection::vec((0usize..3, 0usize..3), 50..400),
        step_ms in 500u64..5_000,
    ) {
        let mut d = one_at_a_time(4);
        let victim = d.push(req(3, 10, Class::Batch, 0));
        let mut running: Option<Grant> = None;
        let mut now = 0u64;
        let mut ran_at = None;
        for (client, class) in arrivals {
            d.push(req(client, 40, Class::ALL[class], now));
            if let Some(g) = running.take() {
                d.finish(&g, None, now);
            }
            running = d.next(at(now));
            if running.as_ref().is_some_and(|g| g.id == victim) {
                ran_at = Some(now);
                break;
            }
            now += step_ms;
        }
        if let Some(t) = ran_at {
            prop_assert!(t <= SETTINGS.starve_ms + step_ms, "ran only at {t} ms");
        } else {
            prop_assert!(now < SETTINGS.starve_ms + step_ms, "never ran in {now} ms");
        }
    }

    /// Starting a request at once when it can, else queueing it, decides exactly what queueing
    /// it and dispatching does: the same requests run, in the same order, with the same pool
    /// units taken, through limits, pools, pauses and the off-peak window.
    #[test]
    fn starting_at_once_decides_as_the_queue_would(
        ops in proptest::collection::vec((0usize..3, 0usize..5, 0u64..60, 0usize..4), 1..300),
    ) {
        let make = || {
            let limits = Limits { client_max: vec![Some(2), Some(1), None], service_max: vec![Some(3)] };
            let settings = Settings { off_peak: Some(Window::parse("22:00-06:00").unwrap()), ..SETTINGS };
            Dispatcher::new(3, limits, vec![Pool::new(100, 20.0, &Sharing::Shared, 0)], settings)
        };
        let (mut queued, mut direct) = (make(), make());
        let (mut ran_q, mut ran_d): (Vec<Grant>, Vec<Grant>) = (Vec::new(), Vec::new());
        for (i, (client, class, units, op)) in ops.into_iter().enumerate() {
            let now = Now { ms: i as u64 * 300, minute_utc: if i % 7 == 0 { 23 * 60 } else { 12 * 60 } };
            let pools = if units < 30 { Vec::new() } else { vec![(0, units)] };
            let w = Waiting { pools, ..req(client, 20, Class::ALL[class], now.ms) };
            match op {
                // One ends (the oldest), in both.
                0 if !ran_q.is_empty() => {
                    let (g, h) = (ran_q.remove(0), ran_d.remove(0));
                    queued.finish(&g, None, now.ms);
                    direct.finish(&h, None, now.ms);
                }
                1 => (queued.paused, direct.paused) = (!queued.paused, !direct.paused),
                _ => {}
            }
            queued.push(w.clone());
            match direct.start_now(w, now) {
                Ok(g) => ran_d.push(g),
                Err(w) => { direct.push(w); }
            }
            while let Some(g) = queued.next(now) {
                ran_q.push(g);
            }
            while let Some(g) = direct.next(now) {
                ran_d.push(g);
            }
            let seen = |r: &[Grant]| r.iter().map(|g| (g.id, g.taken.clone())).collect::<Vec<_>>();
            prop_assert_eq!(seen(&ran_q), seen(&ran_d));
            prop_assert_eq!(queued.len(), direct.len());
        }
    }

    /// Whatever arrives, the dispatcher never runs more than a client's or a service's limit.
    #[test]
    fn limits_always_hold(ops in proptest::collection::vec((0usize..3, 0usize..5, any::<bool>()), 1..300)) {
        let limits = Limits { client_max: vec![Some(2), Some(1), None], service_max: vec![Some(3)] };
        let mut d = Dispatcher::new(3, limits, vec![], SETTINGS);
        let mut running: Vec<Grant> = Vec::new();
        for (i, (client, class, finish)) in ops.into_iter().enumerate() {
            let now = i as u64 * 100;
            d.push(req(client, 20, Class::ALL[class.min(3)], now));
            if finish && !running.is_empty() {
                let g = running.remove(0);
                d.finish(&g, None, now);
            }
            while let Some(g) = d.next(at(now)) {
                running.push(g);
            }
            prop_assert!(running.len() <= 3);
            prop_assert!(running.iter().filter(|g| g.waiting.client == 0).count() <= 2);
            prop_assert!(running.iter().filter(|g| g.waiting.client == 1).count() <= 1);
        }
    }
}

#[test]
fn the_oldest_wait_and_a_learned_limit() {
    let mut d = one_at_a_time(2);
    assert_eq!(d.oldest_enqueued_ms(), None);
    d.push(req(0, 20, Class::Batch, 50));
    d.push(req(1, 20, Class::Normal, 30));
    d.push(req(1, 20, Class::Normal, 40));
    assert_eq!(d.oldest_enqueued_ms(), Some(30));
    let first = d.next(at(60)).unwrap();
    assert!(d.next(at(60)).is_none(), "one at a time");
    // The service says it serves two at once: the next one runs, not a third.
    d.set_service_limit(0, Some(2));
    assert_eq!(d.service_limit(0), Some(2));
    assert!(d.next(at(61)).is_some());
    assert!(d.next(at(61)).is_none());
    d.finish(&first, None, 62);
    assert!(d.next(at(62)).is_some());
    assert_eq!(d.oldest_enqueued_ms(), None);
}

#[test]
fn background_classes_wait_while_the_cpu_is_busy() {
    let limits = Limits { client_max: vec![None], service_max: vec![None] };
    let mut d = Dispatcher::new(1, limits, Vec::new(), SETTINGS);
    d.background_held = true;
    let batch = d.push(req(0, 20, Class::Batch, 0));
    let urgent = d.push(req(0, 20, Class::Immediate, 1));
    assert_eq!(d.next(at(5)).unwrap().id, urgent);
    assert!(d.next(at(5)).is_none(), "batch waits while the CPU is busy");
    d.background_held = false;
    assert_eq!(d.next(at(6)).unwrap().id, batch);
}

#[test]
fn a_reconfigure_adds_clients_and_services_and_keeps_what_waits_and_runs() {
    let mut d = one_at_a_time(1);
    let running = d.push(req(0, 20, Class::Normal, 0));
    let running = d.next(at(0)).filter(|g| g.id == running).expect("runs");
    let waiting = d.push(req(0, 20, Class::Normal, 1));
    assert!(d.next(at(1)).is_none(), "the service runs one at a time");
    // A reload adds client 1 and service 1, and lets service 0 run two at once.
    let limits = Limits { client_max: vec![None, Some(1)], service_max: vec![Some(2), None] };
    d.reconfigure(2, limits, SETTINGS);
    assert_eq!(d.next(at(2)).map(|g| g.id), Some(waiting), "the waiting request runs under the new limit");
    assert_eq!(d.service_running(0), 2);
    let newcomer = d.push(Waiting { service: 1, ..req(1, 20, Class::Normal, 3) });
    assert_eq!(d.next(at(3)).map(|g| g.id), Some(newcomer), "the new client reaches the new service");
    d.finish(&running, None, 4);
    assert_eq!((d.running(0), d.service_running(0)), (1, 1), "a grant from before the reload settles in place");
}
