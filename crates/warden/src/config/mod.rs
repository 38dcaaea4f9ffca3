//! Configuration: read raw (`raw`), then validated into the runtime [`Config`] (`validate`).
//! Every error names the full key path and the line it stands on.

pub mod adapt;
mod locate;
pub mod raw;
pub mod reload;
mod tenants;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use tenants::sha256;
pub use validate::validate;

/// The validated configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub idle: IdleConfig,
    /// Services by name, in name order.
    pub services: Vec<ServiceConfig>,
    /// Model name → its service and its place in that service's `models`.
    pub models: BTreeMap<String, ModelRef>,
    pub resources: ResourcesConfig,
    pub tiers: BTreeMap<String, Tier>,
    /// Empty: warden runs open (one anonymous client).
    pub clients: Vec<ClientConfig>,
    /// Token buckets, in name order.
    pub pools: Vec<PoolConfig>,
    /// Pools and prices of models that have them.
    pub model_terms: BTreeMap<String, ModelTerms>,
    pub scheduler: SchedulerConfig,
    /// `[pressure]`: the monitor's pace and thresholds.
    pub pressure: adapt::PressureConfig,
    /// Model → its ladder (`smaller`, `fallback`, `on_pressure`), for models that have one.
    pub ladders: BTreeMap<String, adapt::Ladder>,
    /// `[tasks.X]`: parameter presets by task name.
    pub tasks: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// The file it was read from (what a reload reads again); None when parsed from text.
    pub source: Option<PathBuf>,
    /// `[cache]`: the response cache.
    pub cache: CacheConfig,
    /// Models whose own `cache` overrides `[cache].when`.
    pub cache_by_model: BTreeMap<String, policy::cache::When>,
    /// `[optimizer]`: when a request goes one rung down its model's `smaller` ladder.
    pub optimizer: OptimizerConfig,
    /// Models whose concurrent embeddings requests are coalesced (`[models.X] coalesce`).
    pub coalesce: BTreeMap<String, Coalesce>,
    /// `[state]`: where budgets, pools and concurrency are counted (in process, or shared).
    pub state: StateConfig,
    /// Environment variables that hold keys (`key_env`, `api_key_env`): warden reads them, and
    /// the services it starts do not inherit them (unless a service's own `env` sets one).
    pub secret_env: Vec<String>,
}

/// `[models.X] coalesce`: embeddings requests for the model that arrive within `window` of
/// each other go upstream as one call of at most `max` inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    pub window: Duration,
    pub max: usize,
}

/// `[state]`: several wardens (replicas) count budgets, pools, concurrency and the cache in
/// one Redis, so N replicas never let a client spend N budgets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateConfig {
    /// The Redis URL ("redis://host:port/db" or "unix:///path"); None: everything in process.
    pub shared: Option<String>,
    /// Every key warden writes starts with this, so wardens of different deployments can
    /// share one Redis.
    pub key_prefix: String,
    /// Redis unreachable: refuse (503; nothing admitted on a guess) or admit by this
    /// replica's own counts (an explicit opt-in, logged and alerted).
    pub on_unavailable: OnUnavailable,
    /// What a request holds in Redis expires this long after the replica last refreshed it,
    /// so a replica that dies mid-request leaks nothing past it.
    pub hold_ttl: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnavailable {
    #[default]
    Refuse,
    Local,
}

/// `[optimizer]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerConfig {
    /// Requests of these classes are served one rung down (never `immediate`).
    pub downgrade_classes: Vec<policy::class::Class>,
    /// So are a client's requests once it has used (spent and reserved) this share of its
    /// monthly budget.
    pub downgrade_over_budget: Option<f64>,
    /// Batch API lines run `deferred` (inside `[scheduler].off_peak` only) instead of `batch`.
    pub batches_off_peak: bool,
    /// Lines of one batch in flight at once (the priority queue orders them behind
    /// interactive work; this bounds what one batch holds in it).
    pub batch_concurrency: usize,
}

/// `[cache]`: answers kept and served again for identical requests.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    /// `state_dir/cache.db` (kept across restarts), or in memory only.
    pub on_disk: bool,
    /// Bytes of answers kept at most; the least recently used go first.
    pub max_size: u64,
    pub ttl: Duration,
    /// A client never receives another client's answer (false: one cache for everyone).
    pub per_client: bool,
    pub when: policy::cache::When,
    /// Near-identical prompts served the same answer (off unless set).
    pub semantic: Option<SemanticCache>,
}

/// `[cache] semantic`: a chat request whose exact key misses is looked up by the embedding of
/// its last user message among stored answers to requests that differ only in that message.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticCache {
    /// The embeddings model (a configured model) that embeds the message.
    pub model: String,
    /// Cosine similarity at least this is the same question.
    pub threshold: f64,
}

impl Config {
    /// When `model`'s answers are cached (never with the cache off).
    pub fn cache_when(&self, model: &str) -> policy::cache::When {
        match self.cache.enabled {
            false => policy::cache::When::Never,
            true => self.cache_by_model.get(model).copied().unwrap_or(self.cache.when),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolUnit {
    Tokens,
    Requests,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// Removed by a reload: kept in its place (admission indexes pools), used by no model.
    pub retired: bool,
    pub unit: PoolUnit,
    pub capacity: u64,
    pub refill_per_sec: f64,
    pub sharing: policy::bucket::Sharing,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelTerms {
    /// Indexes into `Config::pools`.
    pub pools: Vec<usize>,
    pub price: Option<policy::budget::Price>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub off_peak: Option<policy::class::Window>,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub aging: Duration,
    pub starvation: Duration,
    pub fairness_half_life: Duration,
    pub default_max_tokens: u64,
}

/// A secret from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub priority: u32,
    /// None = no limit.
    pub max_concurrent: Option<u32>,
    /// Micro-dollars a month; None = no budget.
    pub monthly_budget: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub name: String,
    /// Removed by a reload: kept in its place (admission indexes clients, and its spend stays
    /// on record), but its key no longer lets anyone in.
    pub retired: bool,
    pub key_sha256: [u8; 32],
    pub tier: String,
    pub priority: u32,
    pub max_concurrent: Option<u32>,
    /// Micro-dollars a month; None = no budget.
    pub monthly_budget: Option<i64>,
    /// Model patterns: exact names, `*`, or a prefix ending in `*`.
    pub models: Vec<String>,
}

impl ClientConfig {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpec {
    /// Sent upstream as `Authorization: Bearer …` in place of the client's.
    pub api_key: Option<Secret>,
    /// Whom an https upstream's certificate must be signed by.
    pub trust: Trust,
}

/// Whom an https upstream must prove itself to.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Trust {
    /// Mozilla's roots.
    #[default]
    Public,
    /// Only these CAs (`ca_file`): a private deployment's own.
    Only(std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>),
    /// No verification at all (`tls_insecure = true`, logged when the service is set up).
    Insecure,
}

/// A device's capacity as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySetting {
    /// Detect it (RAM: /proc/meminfo and the cgroup limit; VRAM: NVML).
    Auto,
    /// Not managed.
    None,
    Bytes(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourcesConfig {
    pub ram: CapacitySetting,
    pub vram: CapacitySetting,
    pub threshold: f64,
    /// Bytes always left free; None: the default, 1 GiB or an eighth of the capacity where that
    /// is less (inside a small container a fixed 1 GiB would leave nothing to run).
    pub reserve: Option<u64>,
    pub min_residency: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySetting {
    Bytes(u64),
    /// From the GGUF file the command names.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRef {
    pub service: usize,
    pub index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub name: String,
    /// None = the global `[idle].keep_alive`, as now set.
    pub keep_alive: Option<Duration>,
}

/// How a service hosts models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// One fixed model: unloading it means stopping the service.
    Single,
    /// llama-server in router mode: `POST /models/load`, `POST /models/unload`, `GET /models`.
    LlamacppRouter,
    /// Ollama: load by a request, unload with `keep_alive: 0`, `GET /api/ps`.
    Ollama,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Single => "openai",
            Api::LlamacppRouter => "llamacpp-router",
            Api::Ollama => "ollama",
        }
    }

    /// Hosts many models, each loaded and unloaded on its own.
    pub fn multi_model(self) -> bool {
        self != Api::Single
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub admin_token: Option<String>,
    pub max_body: usize,
    pub drain_timeout: Duration,
    /// Bound on reading a request's headers and on an idle keep-alive connection (default 30s):
    /// a client that sends half a request is closed, not kept forever.
    pub header_timeout: Duration,
    /// Client connections at once (None: as many as the open-file limit allows, less a
    /// reserve for services, logs and the database).
    pub max_connections: Option<usize>,
    /// Threads serving client connections, each with its own event loop (None: half the CPUs).
    pub workers: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleConfig {
    pub enabled: bool,
    pub timeout: Duration,
    pub keep_alive: Duration,
    pub check_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// GET this path; 2xx means ready.
    Path(String),
    /// Ready once the port accepts a connection.
    Port,
    /// The container's own HEALTHCHECK status is "healthy".
    Docker,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub stop_command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Name or id of the container.
    pub container: String,
    /// Docker Engine API address ("unix:///path", "tcp://host:port" or "https://host:port");
    /// None = the usual places.
    pub engine: Option<String>,
    /// For an https engine: its CA, and warden's client certificate and key (PEM files).
    pub tls: Option<EngineTls>,
    /// Create the container from this image when it does not exist.
    pub image: Option<String>,
    pub ports: Vec<PortMap>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl ContainerSpec {
    /// Its engine is reached over the network: the container runs on another machine, so
    /// its memory is not this machine's to plan (a loopback address is taken at its word too).
    pub fn engine_elsewhere(&self) -> bool {
        self.engine.as_deref().is_some_and(|e| !e.starts_with("unix://"))
    }
}

/// `"127.0.0.1:6333:6333"` or `"6333:6333"` (host IP, host port, container port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServiceKind {
    Process(ProcessSpec),
    Container(ContainerSpec),
    Remote(RemoteSpec),
}

impl ServiceKind {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceKind::Process(_) => "process",
            ServiceKind::Container(_) => "container",
            ServiceKind::Remote(_) => "remote",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Removed by a reload: kept in its place (owners, admission and the directory index
    /// services) while it drains and stops; nothing routes to it.
    pub retired: bool,
    pub kind: ServiceKind,
    /// 0 = pick a free port at each start.
    pub port: u16,
    pub health: Health,
    /// Its base URL ("http://127.0.0.1:6333", "https://api.example.com/v1") when warden does not
    /// pick it (containers, hosted APIs).
    pub upstream: Option<String>,
    pub api: Api,
    pub start_timeout: Duration,
    /// How long a request waits for the service's response headers.
    pub response_timeout: Duration,
    pub stop_timeout: Duration,
    pub models: Vec<ModelConfig>,
    pub idle_sleep: bool,
    /// None = the global `[idle].timeout`.
    pub idle_timeout: Option<Duration>,
    pub desired: Desired,
    pub max_queue: usize,
    /// Requests it serves at once, as configured (None: not set; see `concurrency`); more wait
    /// in the priority queue.
    pub max_concurrent: Option<u32>,
    /// The estimate until measured; None = unknown (counts as 0 until measured).
    pub memory: Option<MemorySetting>,
    pub device: Device,
    /// Higher = kept longer when choosing what to offload.
    pub priority: i32,
    /// Bring it back after it was offloaded.
    pub reload: bool,
    /// Services in one exclusive group never run together.
    pub group: Option<String>,
    /// Request bodies over 1 KiB go to it gzip-compressed (`compress_upstream = "gzip"`), for
    /// an upstream that accepts `Content-Encoding: gzip`.
    pub compress_upstream: bool,
}

/// Requests a local service (process or container) is sent at once unless configured: a burst
/// released by a cold start must not swamp a backend with a small accept backlog (Python's is
/// 5), and the rest wait in warden's queue, where priority applies. llama-server's own slot
/// count replaces it once learned.
pub const DEFAULT_LOCAL_CONCURRENCY: u32 = 32;

impl ServiceConfig {
    /// Whether it holds memory on this machine when it runs: not a hosted API, nor a container
    /// on another machine's engine. Only those count in memory planning and pressure.
    pub fn on_this_machine(&self) -> bool {
        match &self.kind {
            ServiceKind::Process(_) => true,
            ServiceKind::Container(c) => !c.engine_elsewhere(),
            ServiceKind::Remote(_) => false,
        }
    }

    /// Requests sent to it at once: as configured, else the default for local services (a
    /// hosted API has no default: its pools and rate limits shape it).
    pub fn concurrency(&self) -> Option<u32> {
        match self.kind {
            _ if self.max_concurrent.is_some() => self.max_concurrent,
            ServiceKind::Remote(_) => None,
            ServiceKind::Process(_) | ServiceKind::Container(_) => Some(DEFAULT_LOCAL_CONCURRENCY),
        }
    }
}

/// A config error for people: `services.llama.start_timeout: invalid duration "5 minutes" at line 14`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates config text. `base` resolves relative paths (the config file's folder).
pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
        path: String::new(),
        message: e.message().to_string(),
        line: e.span().map(|s| locate::line_of_offset(text, s.start)),
    })?;
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let line =
            inner.span().map(|s| locate::line_of_offset(text, s.start)).or_else(|| locate::line_of_path(text, &path));
        ConfigError { path, message: inner.message().to_string(), line }
    })?;
    validate(raw, base).map_err(|mut e| {
        e.line = locate::line_of_path(text, &e.path);
        e
    })
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot read {}: {e}", path.display()),
        line: None,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    // Absolute, so relative `cwd`, programs and `state_dir` mean the config's folder whatever
    // warden's own working directory (a child resolves its program after changing directory).
    let base = std::path::absolute(base).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot resolve {}: {e}", base.display()),
        line: None,
    })?;
    let mut config = parse(&text, &base)?;
    config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    Ok(config)
}

impl Config {
    /// A service by name (not one a reload removed). A scan: after a reload, services are in
    /// the order they were first configured, not by name, and there are few.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| !s.retired && s.name == name)
    }

    /// The services in force (not removed by a reload), with their places.
    pub fn live_services(&self) -> impl Iterator<Item = (usize, &ServiceConfig)> {
        self.services.iter().enumerate().filter(|(_, s)| !s.retired)
    }
}
