//! How each model performs: every finished request's response time, time to first byte,
//! tokens per second (where its usage was read), success, and task. Kept in memory for the last
//! day (bounded, reloaded from SQLite at start) and written to SQLite (the store's writer
//! thread), thinned under load: at most `STORED_PER_SEC` rows per model a second, the surplus
//! counted in the weight of the model's next stored row (a row per request cost about 9 % of
//! the CPU at saturation, and hundreds of millions of rows a day), summed up for `GET /admin/performance` per model and per task (from SQLite for
//! periods longer than memory holds), and read by the ladder: a model whose p95 latency or
//! failure rate crosses its configured bound counts as pressured.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::store::{PerfRecord, Store};
use crate::base::clock;

/// Samples kept at most (the oldest go first), and for at most this long.
const KEEP: usize = 200_000;
/// Rows written to SQLite per model and second at most; further samples of that second are
/// carried in the weight of the model's next written row. Below it every request is a row.
pub const STORED_PER_SEC: u32 = 20;
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// One finished request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub model: Arc<str>,
    pub task: Option<Arc<str>>,
    /// A 2xx answer that ended whole.
    pub ok: bool,
    /// From the request being sent to the service to the answer's end.
    pub total_ms: u32,
    /// From the request being sent to the answer's first body bytes.
    pub first_byte_ms: Option<u32>,
    /// Completion tokens, where the answer's usage was read.
    pub tokens: Option<u32>,
    /// The requests it stands for: 1, but a sample read back from SQLite may stand for those
    /// left out of the rows of a busy second (`STORED_PER_SEC`).
    pub weight: u32,
}

/// A group's figures over a period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub requests: usize,
    pub success_rate: f64,
    pub p50_ms: u32,
    pub p95_ms: u32,
    pub p50_first_byte_ms: Option<u32>,
    /// Completion tokens per second of answer time, over the requests whose tokens are known.
    pub tokens_per_sec: Option<f64>,
}

#[derive(Default)]
pub struct Tracker {
    /// Finished requests, oldest first.
    samples: Mutex<VecDeque<Sample>>,
    /// Where every sample is also written, so the figures survive a restart and reach back
    /// further than memory. None in unit tests.
    store: Option<Arc<Store>>,
    /// `model()`'s answers while fresh: the ladder asks on every request to a model with
    /// bounds, and summing a busy model's last minutes up means sorting thousands of timings.
    cache: Mutex<HashMap<Arc<str>, Cached>>,
    /// Per model: how its samples are being thinned on their way to SQLite. foldhash: names
    /// of routed models only, looked up on every answer.
    thinning: Mutex<HashMap<Arc<str>, Thinning, foldhash::fast::RandomState>>,
}

/// A model's rows this second and what is left out since its last row.
struct Thinning {
    /// The second (since the tracker's first sample of the model) being counted.
    second: Instant,
    rows: u32,
    /// Samples not written since the last row: the next row stands for them too.
    left_out: u32,
}

impl Thinning {
    /// Whether a sample at `at` is written, and the weight its row carries.
    fn admit(&mut self, at: Instant) -> Option<u32> {
        if at.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            (self.second, self.rows) = (at, 0);
        }
        if self.rows >= STORED_PER_SEC {
            self.left_out += 1;
            return None;
        }
        self.rows += 1;
        Some(1 + std::mem::take(&mut self.left_out))
    }
}

/// A model's figures as last summed up.
struct Cached {
    at: Instant,
    window: Duration,
    summary: Option<Summary>,
    /// Its requests recorded since.
    new_since: usize,
}

impl Cached {
    fn fresh(&self, window: Duration, now: Instant) -> bool {
        let counted = self.summary.as_ref().map_or(0, |s| s.requests);
        self.window == window && now.duration_since(self.at) < FRESH && self.new_since * 10 <= counted
    }
}

/// A cached summary is used for at most this long, and only while the requests recorded since
/// are under a tenth of those it counted (so a model with few requests is summed up afresh
/// after each one, and a busy one at most once a second).
const FRESH: Duration = Duration::from_secs(1);

/// Per model and per task.
pub type Summaries = (BTreeMap<String, Summary>, BTreeMap<String, Summary>);

/// Groups `samples` per model and per task and sums each group up.
fn summaries<'a>(samples: impl Iterator<Item = &'a Sample> + Clone) -> Summaries {
    let group = |key: &dyn Fn(&Sample) -> Option<String>| {
        let mut by: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
        for s in samples.clone() {
            if let Some(k) = key(s) {
                by.entry(k).or_default().push(s);
            }
        }
        by.into_iter().filter_map(|(k, v)| Some((k, summarize(v.into_iter())?))).collect()
    };
    (group(&|s| Some(s.model.to_string())), group(&|s| s.task.as_ref().map(|t| t.to_string())))
}

/// A stored timing as a sample; None when it is older than this machine's monotonic clock.
fn from_record(r: PerfRecord, now_ms: u64) -> Option<Sample> {
    let at = Instant::now().checked_sub(Duration::from_millis(now_ms.saturating_sub(r.finished_at_ms)))?;
    Some(Sample {
        at,
        model: r.model.into(),
        task: r.task.map(Into::into),
        ok: r.ok,
        total_ms: r.total_ms,
        first_byte_ms: r.first_byte_ms,
        tokens: r.tokens,
        weight: r.weight.max(1),
    })
}

/// The `p`th percentile of weighted values sorted by value: the value at index
/// `(n - 1) * p / 100` (rounded up) of the list with each value repeated `weight` times.
fn percentile(sorted: &[(u32, u32)], p: usize) -> u32 {
    let n: u64 = sorted.iter().map(|&(_, w)| u64::from(w)).sum();
    if n == 0 {
        return 0;
    }
    let at = ((n - 1) * p as u64).div_ceil(100);
    let mut seen = 0u64;
    for &(value, weight) in sorted {
        seen += u64::from(weight);
        if seen > at {
            return value;
        }
    }
    sorted.last().map_or(0, |&(v, _)| v)
}

/// Figures of a set of samples (none when it is empty).
pub fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<Summary> {
    let samples: Vec<&Sample> = samples.collect();
    if samples.is_empty() {
        return None;
    }
    let mut total: Vec<(u32, u32)> = samples.iter().map(|s| (s.total_ms, s.weight)).collect();
    total.sort_unstable();
    let mut first: Vec<(u32, u32)> = samples.iter().filter_map(|s| Some((s.first_byte_ms?, s.weight))).collect();
    first.sort_unstable();
    let (tokens, ms) = samples
        .iter()
        .filter_map(|s| Some((s.tokens?, s.total_ms, s.weight)))
        .fold((0u64, 0u64), |(t, m), (tok, ms, w)| {
            (t + u64::from(tok) * u64::from(w), m + u64::from(ms) * u64::from(w))
        });
    let requests: u64 = samples.iter().map(|s| u64::from(s.weight)).sum();
    let ok: u64 = samples.iter().filter(|s| s.ok).map(|s| u64::from(s.weight)).sum();
    Some(Summary {
        requests: requests as usize,
        success_rate: ok as f64 / requests as f64,
        p50_ms: percentile(&total, 50),
        p95_ms: percentile(&total, 95),
        p50_first_byte_ms: (!first.is_empty()).then(|| percentile(&first, 50)),
        tokens_per_sec: (ms > 0).then(|| tokens as f64 * 1000.0 / ms as f64),
    })
}

impl Tracker {
    /// A tracker that writes to `store`, holding the last day it recorded there.
    pub fn new(store: Arc<Store>) -> Result<Tracker, String> {
        let now_ms = clock::unix_ms();
        let since = now_ms.saturating_sub(KEEP_FOR.as_millis() as u64);
        let mut samples: VecDeque<Sample> =
            store.perf_since(since)?.into_iter().filter_map(|r| from_record(r, now_ms)).collect();
        while samples.len() > KEEP {
            samples.pop_front();
        }
        Ok(Tracker {
            samples: Mutex::new(samples),
            store: Some(store),
            cache: Mutex::default(),
            thinning: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, sample: Sample) {
        let weight = {
            let mut thinning = self.thinning.lock().unwrap_or_else(|p| p.into_inner());
            let t = thinning.entry(sample.model.clone()).or_insert_with(|| Thinning {
                second: sample.at,
                rows: 0,
                left_out: 0,
            });
            t.admit(sample.at)
        };
        if let (Some(store), Some(weight)) = (&self.store, weight) {
            store.record_perf(PerfRecord {
                model: sample.model.to_string(),
                task: sample.task.as_deref().map(str::to_string),
                ok: sample.ok,
                total_ms: sample.total_ms,
                first_byte_ms: sample.first_byte_ms,
                tokens: sample.tokens,
                finished_at_ms: clock::unix_ms(),
                weight,
            });
        }
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&*sample.model) {
            c.new_since += 1;
        }
        let mut samples = self.lock();
        // Aged against the new sample's time rather than a fresh reading of the clock.
        while samples.len() >= KEEP
            || samples.front().is_some_and(|s| sample.at.saturating_duration_since(s.at) > KEEP_FOR)
        {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Per model and per task, over the requests that finished within `since`: from memory
    /// when it holds that far back, else from SQLite.
    pub fn summary(&self, since: Duration) -> Result<Summaries, String> {
        match &self.store {
            Some(store) if since > KEEP_FOR => {
                let now_ms = clock::unix_ms();
                let rows = store.perf_since(now_ms.saturating_sub(since.as_millis() as u64))?;
                let samples: Vec<Sample> = rows.into_iter().filter_map(|r| from_record(r, now_ms)).collect();
                Ok(summaries(samples.iter()))
            }
            _ => {
                let samples = self.lock();
                let recent: Vec<&Sample> = samples.iter().rev().take_while(|s| s.at.elapsed() <= since).collect();
                Ok(summaries(recent.into_iter()))
            }
        }
    }

    /// `model`'s figures over the last `window` (see [`FRESH`] for how fresh).
    pub fn model(&self, model: &str, window: Duration) -> Option<Summary> {
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(model) {
            if c.fresh(window, Instant::now()) {
                return c.summary.clone();
            }
        }
        let summary = {
            let samples = self.lock();
            let recent = samples.iter().rev().take_while(|s| s.at.elapsed() <= window).filter(|s| &*s.model == model);
            summarize(recent)
        };
        let cached = Cached { at: Instant::now(), window, summary: summary.clone(), new_since: 0 };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(model.into(), cached);
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(model: &str, task: Option<&str>, ok: bool, total_ms: u32, tokens: Option<u32>) -> Sample {
        Sample {
            at: Instant::now(),
            model: model.into(),
            task: task.map(Into::into),
            ok,
            total_ms,
            first_byte_ms: Some(total_ms / 4),
            tokens,
            weight: 1,
        }
    }

    #[test]
    fn figures_per_model_and_per_task() {
        let t = Tracker::default();
        for i in 1..=100 {
            t.record(s("big", Some("chat"), i % 10 != 0, i * 10, Some(10)));
        }
        t.record(s("small", None, true, 50, None));
        let (models, tasks) = t.summary(Duration::from_secs(3600)).unwrap();
        let big = &models["big"];
        assert_eq!((big.requests, big.p50_ms, big.p95_ms), (100, 510, 960));
        assert!((big.success_rate - 0.9).abs() < 1e-9);
        assert_eq!(big.p50_first_byte_ms, Some(127));
        // 1000 tokens over 50,500 ms of answers.
        assert!((big.tokens_per_sec.unwrap() - 1000.0 * 1000.0 / 50_500.0).abs() < 1e-9);
        assert_eq!(models["small"].tokens_per_sec, None);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks["chat"].requests, 100);
        assert_eq!(t.model("small", Duration::from_secs(60)).unwrap().requests, 1);
        assert!(t.model("nope", Duration::from_secs(60)).is_none());
        // A request recorded after a look is seen by the next look (few requests: no caching).
        t.record(s("small", None, true, 70, None));
        assert_eq!(t.model("small", Duration::from_secs(60)).unwrap().requests, 2);
        t.record(s("nope", None, true, 70, None));
        assert_eq!(t.model("nope", Duration::from_secs(60)).unwrap().requests, 1);
        assert_eq!(t.model("big", Duration::from_secs(3600)).unwrap().requests, 100);
        for _ in 0..11 {
            t.record(s("big", None, true, 10, None));
        }
        assert_eq!(t.model("big", Duration::from_secs(3600)).unwrap().requests, 111, "over a tenth more: afresh");
    }

    #[test]
    fn a_busy_second_is_thinned_on_disk_and_still_counted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("warden.db")).unwrap());
        let t = Tracker::new(store.clone()).unwrap();
        let t0 = Instant::now();
        // 1,000 requests in one second: 500 fast ones, then 500 slow ones, 10 % failing.
        for i in 0..1000u32 {
            let mut x = s("big", None, i % 10 != 0, if i < 500 { 100 } else { 300 }, Some(10));
            x.at = t0;
            t.record(x);
        }
        // The next second's first request carries what was left out.
        let mut last = s("big", None, true, 300, Some(10));
        last.at = t0 + Duration::from_millis(1500);
        t.record(last);
        assert!(store.flush());
        let rows = store.perf_since(0).unwrap();
        assert_eq!(rows.len() as u32, STORED_PER_SEC + 1);
        assert_eq!(rows.iter().map(|r| r.weight).sum::<u32>(), 1001);
        assert_eq!(rows.last().unwrap().weight, 1000 - STORED_PER_SEC + 1);
        // Read back from disk (a period longer than memory holds), every request counts.
        let (models, _) = t.summary(KEEP_FOR * 2).unwrap();
        let big = &models["big"];
        assert_eq!(big.requests, 1001);
        // In memory nothing is thinned: the figures are exact.
        let exact = t.model("big", Duration::from_secs(3600)).unwrap();
        assert_eq!((exact.requests, exact.p50_ms, exact.p95_ms), (1001, 300, 300));
        assert!((exact.success_rate - 901.0 / 1001.0).abs() < 1e-9);
    }

    #[test]
    fn weighted_percentiles_count_each_value_weight_times() {
        assert_eq!(percentile(&[(10, 1), (20, 1), (30, 1)], 50), 20);
        assert_eq!(percentile(&[(10, 1), (20, 8), (30, 1)], 95), 30);
        assert_eq!(percentile(&[(10, 1), (20, 8), (30, 1)], 5), 20);
        assert_eq!(percentile(&[(10, 9), (30, 1)], 50), 10);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn a_cached_summary_is_fresh_for_a_second_and_a_tenth_more_requests() {
        let at = Instant::now();
        let summary = summarize([s("big", None, true, 10, None)].iter().cycle().take(100));
        let mut c = Cached { at, window: Duration::from_secs(300), summary, new_since: 10 };
        assert!(c.fresh(Duration::from_secs(300), at + Duration::from_millis(999)));
        assert!(!c.fresh(Duration::from_secs(300), at + FRESH), "a second old");
        assert!(!c.fresh(Duration::from_secs(60), at), "another window");
        c.new_since = 11;
        assert!(!c.fresh(Duration::from_secs(300), at), "over a tenth more recorded since");
        c.summary = None;
        c.new_since = 0;
        assert!(c.fresh(Duration::from_secs(300), at), "nothing then, nothing since");
    }
}
