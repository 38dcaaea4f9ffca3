//! Memory pressure: from samples of use against capacity, a level (normal, elevated,
//! critical) with its reasons, a least-squares trend with the projected time to exhaustion,
//! and whether to serve degraded — at once when pressure comes, back only after the use stayed
//! below `upgrade_below` for the whole `stabilization` (the anti-thrash discipline of
//! Kubernetes' HPA and Knative). Pure: samples and `now` in, a decision out.

use serde::Serialize;

/// One measurement of a device's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds on the caller's clock.
    pub at_ms: u64,
    pub used: u64,
    pub capacity: u64,
}

impl Sample {
    /// Share of capacity in use, 0.0–1.0 (1.0 when capacity is unknown or zero).
    pub fn share(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            self.used as f64 / self.capacity as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Normal,
    /// At or past `degrade_at`, or projected to run out soon: serve smaller rungs.
    Elevated,
    /// At or past `stop_idle_at`: also stop sleepable services that hold nothing in flight.
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::Critical => "critical",
        }
    }
}

/// A hardware tier's thresholds (shares of capacity, durations in ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    pub degrade_at: f64,
    pub upgrade_below: f64,
    pub stop_idle_at: f64,
    pub stabilization_ms: u64,
    pub horizon_ms: u64,
    pub window_ms: u64,
}

/// The trend of use over the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trend {
    /// Bytes per second (least squares); positive = use is growing.
    pub bytes_per_sec: f64,
    /// At this slope, when use reaches capacity (None: not growing, or too far to say).
    pub exhausted_in_ms: Option<u64>,
}

/// Least-squares slope of use over the samples within `window_ms` of `now_ms`, and when it
/// reaches capacity from the latest sample. None until there are at least three samples
/// spanning half the window: a trend from a couple of points would read every service start
/// (a step) as a runaway ramp.
pub fn trend(samples: &[Sample], window_ms: u64, now_ms: u64) -> Option<Trend> {
    let recent: Vec<&Sample> = samples.iter().filter(|s| now_ms.saturating_sub(s.at_ms) <= window_ms).collect();
    let span = recent.last()?.at_ms.saturating_sub(recent.first()?.at_ms);
    if recent.len() < 3 || span < window_ms / 2 {
        return None;
    }
    let n = recent.len() as f64;
    // Centred on the first sample's time, in seconds, for numeric stability.
    let t0 = recent[0].at_ms;
    let xs: Vec<f64> = recent.iter().map(|s| s.at_ms.saturating_sub(t0) as f64 / 1000.0).collect();
    let ys: Vec<f64> = recent.iter().map(|s| s.used as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let last = recent[recent.len() - 1];
    let exhausted_in_ms = (slope > 0.0).then(|| {
        let left = last.capacity.saturating_sub(last.used) as f64;
        ((left / slope) * 1000.0).min(u64::MAX as f64 / 2.0) as u64
    });
    Some(Trend { bytes_per_sec: slope, exhausted_in_ms })
}

/// What the hysteresis remembers between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Hold {
    /// Serving degraded now.
    pub degraded: bool,
    /// Since when use has stayed below `upgrade_below` without a break (while degraded).
    pub calm_since_ms: Option<u64>,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub level: Level,
    /// Serve smaller rungs now.
    pub degraded: bool,
    /// The level changed the degraded state this step: true = degrade, false = upgrade.
    pub switched: Option<bool>,
    pub reasons: Vec<String>,
    pub trend: Option<Trend>,
}

/// Takes the latest samples (the last one is now's) and the hold, and decides. `lead_ms` is how
/// long relief would take to arrive (the smaller rung's measured cold start): a trend that
/// reaches capacity within `horizon + lead` degrades now, before things break.
pub fn decide(samples: &[Sample], t: &Thresholds, lead_ms: u64, hold: &mut Hold, now_ms: u64) -> Decision {
    let Some(last) = samples.last().copied() else {
        return Decision {
            level: Level::Normal,
            degraded: hold.degraded,
            switched: None,
            reasons: vec![],
            trend: None,
        };
    };
    let share = last.share();
    let trend = trend(samples, t.window_ms, now_ms);
    let mut reasons = Vec::new();
    let mut level = Level::Normal;
    if share >= t.degrade_at {
        level = Level::Elevated;
        reasons.push(format!("{:.0} % of capacity in use (degrade_at {:.0} %)", share * 100.0, t.degrade_at * 100.0));
    }
    if let Some(ms) = trend.and_then(|tr| tr.exhausted_in_ms) {
        if ms <= t.horizon_ms + lead_ms {
            level = level.max(Level::Elevated);
            reasons.push(format!(
                "at the current trend memory runs out in {:.1} s (within horizon {:.0} s + cold start {:.1} s)",
                ms as f64 / 1000.0,
                t.horizon_ms as f64 / 1000.0,
                lead_ms as f64 / 1000.0
            ));
        }
    }
    if share >= t.stop_idle_at {
        level = Level::Critical;
        reasons.push(format!("{:.0} % in use: at stop_idle_at ({:.0} %)", share * 100.0, t.stop_idle_at * 100.0));
    }
    let was = hold.degraded;
    if level >= Level::Elevated {
        // Degrade at once; any pressure breaks the calm.
        hold.degraded = true;
        hold.calm_since_ms = None;
    } else if hold.degraded {
        if share < t.upgrade_below {
            let since = *hold.calm_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= t.stabilization_ms {
                hold.degraded = false;
                hold.calm_since_ms = None;
                reasons.push(format!(
                    "below upgrade_below ({:.0} %) for {:.0} s: back to the full models",
                    t.upgrade_below * 100.0,
                    t.stabilization_ms as f64 / 1000.0
                ));
            } else {
                reasons.push(format!(
                    "calm for {:.0} s of the {:.0} s stabilization",
                    now_ms.saturating_sub(since) as f64 / 1000.0,
                    t.stabilization_ms as f64 / 1000.0
                ));
            }
        } else {
            // Between the thresholds: still degraded, and the calm starts over.
            hold.calm_since_ms = None;
            reasons.push(format!(
                "{:.0} % in use: not yet below upgrade_below ({:.0} %)",
                share * 100.0,
                t.upgrade_below * 100.0
            ));
        }
    }
    let switched = (was != hold.degraded).then_some(hold.degraded);
    Decision { level, degraded: hold.degraded, switched, reasons, trend }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn t() -> Thresholds {
        Thresholds {
            degrade_at: 0.80,
            upgrade_below: 0.70,
            stop_idle_at: 0.85,
            stabilization_ms: 300_000,
            horizon_ms: 30_000,
            window_ms: 60_000,
        }
    }

    /// Feeds shares (of a 10 GiB capacity) sampled every 2 s; returns each step's decision.
    fn run(shares: &[f64], lead_ms: u64) -> Vec<Decision> {
        let mut hold = Hold::default();
        let mut samples: Vec<Sample> = Vec::new();
        let mut out = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            let at = i as u64 * 2000;
            samples.push(Sample { at_ms: at, used: (share * (10 * GIB) as f64) as u64, capacity: 10 * GIB });
            out.push(decide(&samples, &t(), lead_ms, &mut hold, at));
        }
        out
    }

    fn switches(d: &[Decision]) -> usize {
        d.iter().filter(|d| d.switched.is_some()).count()
    }

    #[test]
    fn a_ramp_degrades_before_exhaustion() {
        // +1 % of capacity every 2 s from 50 %: degrade_at (80 %) is reached at step 30. With a
        // smaller rung that takes 30 s to start, the trend (0.5 %/s) sees exhaustion within the
        // 30 s horizon + 30 s once 30 % is left: at step 20.
        let ramp: Vec<f64> = (0..45).map(|i| 0.50 + 0.01 * i as f64).collect();
        let d = run(&ramp, 30_000);
        let first = d.iter().position(|d| d.degraded).expect("degrades");
        assert_eq!(first, 20, "degraded at step {first}, ten steps before reaching degrade_at");
        assert!(d[first].reasons.iter().any(|r| r.contains("runs out in")), "{:?}", d[first].reasons);
        let tr = d[first].trend.unwrap();
        assert!((tr.bytes_per_sec - 0.005 * (10 * GIB) as f64).abs() < 1e3, "{tr:?}");
        assert!(d.iter().skip(first).all(|d| d.degraded), "never upgrades while pressure grows");
    }

    #[test]
    fn oscillation_around_degrade_at_switches_at_most_once_per_stabilization() {
        // ±15 % around 80 %, alternating every 10 s, for 20 minutes.
        let shares: Vec<f64> = (0..600).map(|i| if (i / 5) % 2 == 0 { 0.95 } else { 0.65 }).collect();
        let d = run(&shares, 0);
        // Degrades once and never sees 5 calm minutes in a row: one switch in all.
        assert_eq!(switches(&d), 1);
        assert!(d.last().unwrap().degraded);
    }

    #[test]
    fn a_sudden_drop_in_free_memory_degrades_at_once() {
        let mut shares = vec![0.40; 20];
        shares.push(0.90);
        let d = run(&shares, 0);
        assert!(!d[19].degraded);
        assert_eq!((d[20].degraded, d[20].switched, d[20].level), (true, Some(true), Level::Critical));
    }

    #[test]
    fn stable_load_never_switches() {
        for share in [0.10, 0.50, 0.69, 0.75, 0.79] {
            let d = run(&vec![share; 400], 5_000);
            assert_eq!(switches(&d), 0, "at {share}");
            assert!(d.iter().all(|d| d.level == Level::Normal), "at {share}");
        }
    }

    #[test]
    fn recovery_upgrades_only_after_stabilization() {
        // Pressure for a minute, then calm at 50 %.
        let mut shares = vec![0.90; 30];
        shares.extend(vec![0.50; 200]);
        let d = run(&shares, 0);
        let up = d.iter().position(|d| d.switched == Some(false)).expect("upgrades");
        // Calm from step 30 (t = 60 s); 300 s later is step 180.
        assert_eq!(up, 180, "{:?}", d[up].reasons);
        assert!(d[30..180].iter().all(|d| d.degraded));
        // Between the thresholds the calm never starts.
        let mut between = vec![0.90; 5];
        between.extend(vec![0.75; 300]);
        assert!(run(&between, 0).last().unwrap().degraded);
    }

    #[test]
    fn the_trend_is_a_least_squares_fit() {
        let s = |at_ms, used| Sample { at_ms, used, capacity: 1000 };
        let tr = trend(&[s(0, 100), s(1000, 200), s(2000, 300)], 4000, 2000).unwrap();
        assert!((tr.bytes_per_sec - 100.0).abs() < 1e-9);
        assert_eq!(tr.exhausted_in_ms, Some(7000));
        // Falling use never exhausts; old samples leave the window; too few samples, or too
        // short a span of them, is no trend.
        assert_eq!(trend(&[s(0, 300), s(1000, 250), s(2000, 200)], 4000, 2000).unwrap().exhausted_in_ms, None);
        assert!(trend(&[s(0, 100), s(100_000, 200), s(100_001, 200)], 60_000, 100_001).is_none());
        assert!(trend(&[s(0, 100), s(1000, 200)], 2000, 1000).is_none());
        assert!(trend(&[s(0, 100), s(100, 200), s(200, 300)], 60_000, 200).is_none(), "a step is no ramp");
    }
}
