//! How each model performs: every finished request's response time, time to first byte,
//! tokens per second (where its usage was read), success, and task. Kept in memory for the last
//! day (bounded), summed up for `GET /admin/performance` per model and per task, and read by
//! the ladder: a model whose p95 latency or failure rate crosses its configured bound counts as
//! pressured.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

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
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, sample: Sample) {
        let mut samples = self.lock();
        while samples.len() >= KEEP || samples.front().is_some_and(|s| s.at.elapsed() > KEEP_FOR) {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Per model and per task, over the requests that finished within `since`.
    pub fn summary(&self, since: Duration) -> (BTreeMap<String, Summary>, BTreeMap<String, Summary>) {
        let samples = self.lock();
        let recent: Vec<&Sample> = samples.iter().rev().take_while(|s| s.at.elapsed() <= since).collect();
        let group = |key: &dyn Fn(&Sample) -> Option<String>| {
            let mut by: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
            for s in &recent {
                if let Some(k) = key(s) {
                    by.entry(k).or_default().push(s);
                }
            }
            by.into_iter().filter_map(|(k, v)| Some((k, summarize(v.into_iter())?))).collect()
        };
        (group(&|s| Some(s.model.to_string())), group(&|s| s.task.as_ref().map(|t| t.to_string())))
    }

    /// `model`'s figures over the last `window`.
    pub fn model(&self, model: &str, window: Duration) -> Option<Summary> {
        let samples = self.lock();
        let recent = samples.iter().rev().take_while(|s| s.at.elapsed() <= window).filter(|s| &*s.model == model);
        summarize(recent)
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
        let (models, tasks) = t.summary(Duration::from_secs(3600));
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
    }
}
