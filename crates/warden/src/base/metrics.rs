//! The histograms `/metrics` shows, observed where things happen: a service's cold start (its
//! owner), a model request's duration and time to first byte (the pipeline's settle stage).
//! Labels are bounded: service names from the config, model names from the config with every
//! other model (discovered, or since removed) as `other`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Shared with the request's probe: a label is made on every answer.
    pub model: std::sync::Arc<str>,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Cold starts take from milliseconds (a process) to minutes (a large model).
fn start_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Requests take from a fraction of a millisecond (a cache hit) to minutes (a long stream).
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 20))
}

pub struct Metrics {
    /// `warden_cold_start_seconds{service}`: from the demand to ready.
    pub cold_start: Histograms<ServiceLabel>,
    /// `warden_request_duration_seconds{model}`: from sending to the answer's end.
    pub request_duration: Histograms<ModelLabel>,
    /// `warden_time_to_first_byte_seconds{model}`: from sending to the answer's first bytes.
    pub first_byte: Histograms<ModelLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            cold_start: Family::new_with_constructor(start_buckets),
            request_duration: Family::new_with_constructor(request_buckets),
            first_byte: Family::new_with_constructor(request_buckets),
        }
    }
}

impl Metrics {
    pub fn started(&self, service: &str, took: std::time::Duration) {
        self.cold_start.get_or_create(&ServiceLabel { service: service.to_string() }).observe(took.as_secs_f64());
    }

    /// `model`: its label already (a configured name, or `other`).
    pub fn answered(
        &self,
        model: &std::sync::Arc<str>,
        total: std::time::Duration,
        first_byte: Option<std::time::Duration>,
    ) {
        let label = ModelLabel { model: model.clone() };
        self.request_duration.get_or_create(&label).observe(total.as_secs_f64());
        if let Some(f) = first_byte {
            self.first_byte.get_or_create(&label).observe(f.as_secs_f64());
        }
    }
}
