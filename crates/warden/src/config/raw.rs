//! The config file exactly as written: serde structs with `deny_unknown_fields`.
//! Only shape and units are checked here; meaning is checked in `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use super::units::{parse_duration, parse_size};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub idle: RawIdle,
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub resources: RawResources,
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    #[serde(default)]
    pub clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub scheduler: RawScheduler,
    #[serde(default)]
    pub pressure: super::adapt::RawPressure,
    #[serde(default)]
    pub tasks: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub optimizer: RawOptimizer,
    #[serde(default)]
    pub state: RawState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// "redis://127.0.0.1:6379/0": replicas share budgets, pools, concurrency and the cache.
    pub shared: Option<String>,
    pub key_prefix: Option<String>,
    /// "refuse" | "local"
    pub on_unavailable: Option<String>,
    pub hold_ttl: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptimizer {
    pub downgrade_classes: Option<Vec<String>>,
    pub downgrade_over_budget: Option<f64>,
    pub batches_off_peak: Option<bool>,
    pub batch_concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub store: Option<String>,
    pub max_size: Option<HumanSize>,
    pub ttl: Option<HumanDuration>,
    pub scope: Option<String>,
    pub when: Option<String>,
    pub semantic: Option<RawSemantic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemantic {
    pub model: String,
    pub threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub unit: Option<String>,
    pub capacity: Option<u64>,
    pub refill_per_sec: Option<f64>,
    pub sharing: Option<String>,
    pub reserved: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_1k: Option<f64>,
    pub output_per_1k: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduler {
    /// "22:00-06:00", UTC: when `deferred` requests run.
    pub off_peak: Option<String>,
    /// Requests waiting at once, all classes; past it, 503.
    pub max_queue: Option<usize>,
    /// The longest a request waits for its turn; past it, 503 with Retry-After.
    pub queue_timeout: Option<HumanDuration>,
    /// Waiting this long earns the full 20 aging points.
    pub aging: Option<HumanDuration>,
    /// Waiting this long runs a request before any score (oldest first).
    pub starvation: Option<HumanDuration>,
    pub fairness_half_life: Option<HumanDuration>,
    /// Output tokens reserved (and sent upstream as max_tokens) when a priced request sets none.
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub priority: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub monthly_budget_usd: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// Hex SHA-256 of the API key.
    pub key_sha256: Option<String>,
    /// Or: the environment variable holding the key.
    pub key_env: Option<String>,
    pub tier: Option<String>,
    pub monthly_budget_usd: Option<f64>,
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    /// "auto" or a size.
    pub ram: Option<String>,
    /// "auto", "none" or a size.
    pub vram: Option<String>,
    pub threshold: Option<f64>,
    pub reserve: Option<HumanSize>,
    /// A service started to make room is not offloaded again for this long (no thrash).
    pub min_residency: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawDevice {
    Gpu,
    Cpu,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The service that serves it; may be left out for a model a service already lists.
    pub service: Option<String>,
    pub smaller: Option<String>,
    pub fallback: Option<Vec<String>>,
    pub on_pressure: Option<String>,
    /// A p95 latency over this (last 5 minutes) counts the model as pressured.
    pub max_p95: Option<HumanDuration>,
    /// A failure rate over this share (last 5 minutes) counts the model as pressured.
    pub max_failure_rate: Option<f64>,
    pub keep_alive: Option<HumanDuration>,
    pub pools: Option<Vec<String>>,
    pub price: Option<RawPrice>,
    /// "always", "never" or "deterministic": overrides `[cache].when` for this model.
    pub cache: Option<String>,
    /// Concurrent embeddings requests arriving within this window go upstream as one call.
    pub coalesce: Option<HumanDuration>,
    /// Inputs in one coalesced call at most (default 32).
    pub coalesce_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub max_body: Option<HumanSize>,
    /// How long SIGTERM waits for in-flight requests before stopping services anyway.
    pub drain_timeout: Option<HumanDuration>,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Option<HumanDuration>,
    /// Client connections open at once; past it new ones get 503.
    pub max_connections: Option<usize>,
    /// Threads that serve client connections (default: half the CPUs, at least one).
    pub workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdle {
    pub enabled: Option<bool>,
    pub timeout: Option<HumanDuration>,
    pub keep_alive: Option<HumanDuration>,
    pub check_interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    Process,
    Container,
    /// A hosted OpenAI-compatible API: always up, never started or stopped.
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RawApi {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "llamacpp-router")]
    LlamacppRouter,
    #[serde(rename = "ollama")]
    Ollama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawDesired {
    On,
    Off,
}

/// `tls = { ca = "…", cert = "…", key = "…" }`: the PEM files of an https container engine
/// (its CA, and warden's client certificate and key), as `docker --tlsverify` uses them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngineTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub kind: RawKind,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub port: Option<u16>,
    pub health: Option<String>,
    pub start_timeout: Option<HumanDuration>,
    pub response_timeout: Option<HumanDuration>,
    pub stop_timeout: Option<HumanDuration>,
    pub stop_command: Option<Vec<String>>,
    #[serde(default)]
    pub models: Vec<String>,
    pub idle_sleep: Option<bool>,
    pub idle_timeout: Option<HumanDuration>,
    pub desired: Option<RawDesired>,
    pub max_queue: Option<usize>,
    /// Requests it serves at once; more wait in the priority queue.
    pub max_concurrent: Option<u32>,
    /// How the service hosts models: one fixed model ("openai", the default) or many that are
    /// loaded and unloaded through its API ("llamacpp-router", "ollama").
    pub api: Option<RawApi>,
    // kind = "remote": the environment variable holding the upstream API key.
    pub api_key_env: Option<String>,
    /// PEM CA certificates an https upstream's certificate must chain to (a private CA).
    pub ca_file: Option<String>,
    /// Skip certificate verification: an explicit, logged opt-in.
    pub tls_insecure: Option<bool>,
    // kind = "container"
    pub container: Option<String>,
    pub engine: Option<String>,
    pub tls: Option<RawEngineTls>,
    pub url: Option<String>,
    pub image: Option<String>,
    pub ports: Option<Vec<String>>,
    // memory orchestration
    /// A size, or "auto" (llama.cpp: from the GGUF file named by -m/--model).
    pub memory: Option<String>,
    pub device: Option<RawDevice>,
    pub priority: Option<i32>,
    pub reload: Option<bool>,
    pub group: Option<String>,
    /// "gzip": request bodies over 1 KiB are sent compressed.
    pub compress_upstream: Option<String>,
}

/// A duration written as a human string; rejected at deserialization so the error carries the
/// key path and line.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(de::Error::custom)
    }
}

/// A byte size written as a human string ("32MiB").
#[derive(Debug, Clone, Copy)]
pub struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_size(&text).map(HumanSize).map_err(de::Error::custom)
    }
}
