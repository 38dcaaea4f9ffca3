//! How each model performs: every finished request's response time, time to first byte,
//! tokens per second (where its usage was read), success, and task. Written to SQLite (the
//! store's writer thread) and kept in memory for the last day (bounded, reloaded from SQLite at
//! start), summed up for `GET /admin/performance` per model and per task (from SQLite for
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
    })
}

fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

/// Figures of a set of samples (none when it is empty).
pub fn summarize<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<Summary> {
    let samples: Vec<&Sample> = samples.collect();
    if samples.is_empty() {
        return None;
    }
    let mut total: Vec<u32> = samples.iter().map(|s| s.total_ms).collect();
    total.sort_unstable();
    let mut first: Vec<u32> = samples.iter().filter_map(|s| s.first_byte_ms).collect();
    first.sort_unstable();
    let (tokens, ms) = samples
        .iter()
        .filter_map(|s| Some((s.tokens?, s.total_ms)))
        .fold((0u64, 0u64), |(t, m), (tok, ms)| (t + u64::from(tok), m + u64::from(ms)));
    Some(Summary {
        requests: samples.len(),
        success_rate: samples.iter().filter(|s| s.ok).count() as f64 / samples.len() as f64,
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
        Ok(Tracker { samples: Mutex::new(samples), store: Some(store), cache: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, sample: Sample) {
        if let Some(store) = &self.store {
            store.record_perf(PerfRecord {
                model: sample.model.to_string(),
                task: sample.task.as_deref().map(str::to_string),
                ok: sample.ok,
                total_ms: sample.total_ms,
                first_byte_ms: sample.first_byte_ms,
                tokens: sample.tokens,
                finished_at_ms: clock::unix_ms(),
            });
        }
        if let Some(c) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&*sample.model) {
            c.new_since += 1;
        }
        let mut samples = self.lock();
        while samples.len() >= KEEP || samples.front().is_some_and(|s| s.at.elapsed() > KEEP_FOR) {
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
