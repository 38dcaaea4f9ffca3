//! Turns the raw file into the runtime [`Config`]: defaults, cross-checks, resolved paths.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawApi, RawConfig, RawDesired, RawDevice, RawEngineTls, RawKind, RawResources, RawService};
use super::units::parse_size;
use super::{adapt, tenants};
use super::{
    Api, CacheConfig, CapacitySetting, Config, ConfigError, ContainerSpec, Desired, Device, EngineTls, Health,
    IdleConfig, MemorySetting, ModelConfig, ModelRef, PortMap, ProcessSpec, RemoteSpec, ResourcesConfig, Secret,
    ServerConfig, ServiceConfig, ServiceKind, Trust,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: u64 = 32 << 20;
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for a slow model's unstreamed answer; a stream's headers come at once.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_QUEUE: usize = 1024;

pub(super) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.into(), message: message.into(), line: None }
}

/// "127.0.0.1:8080", "[::1]:8080", or a host name ("localhost:8080"), resolved now: the first
/// address, IPv4 first (what "localhost" means to most clients).
fn resolve_listen(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text).ok()?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied()
}

pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = resolve_listen(listen_text).ok_or_else(|| {
        err(
            "server.listen",
            format!("invalid address {listen_text:?} (expected e.g. \"127.0.0.1:8080\" or \"localhost:8080\")"),
        )
    })?;
    let secret_env = raw.clients.values().filter_map(|c| c.key_env.clone());
    let secret_env = secret_env.chain(raw.services.values().filter_map(|s| s.api_key_env.clone())).collect();
    let state_dir = base.join(raw.server.state_dir.unwrap_or_else(|| "warden-state".into()));
    let max_body = raw.server.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0);
    if max_body == 0 || max_body > (1 << 32) {
        return Err(err("server.max_body", "must be between 1 byte and 4GiB"));
    }
    if raw.server.admin_token.as_deref() == Some("") {
        return Err(err("server.admin_token", "must not be empty (leave it out to disable)"));
    }
    let server = ServerConfig {
        listen,
        state_dir,
        admin_token: raw.server.admin_token,
        max_body: max_body as usize,
        drain_timeout: raw.server.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        header_timeout: match raw.server.header_timeout {
            None => Duration::from_secs(30),
            Some(d) if d.0.is_zero() => return Err(err("server.header_timeout", "must be more than 0")),
            Some(d) => d.0,
        },
        max_connections: match raw.server.max_connections {
            Some(0) => return Err(err("server.max_connections", "must be at least 1")),
            n => n,
        },
        workers: match raw.server.workers {
            Some(0) => return Err(err("server.workers", "must be at least 1")),
            n => n,
        },
    };

    let idle = IdleConfig {
        enabled: raw.idle.enabled.unwrap_or(true),
        timeout: raw.idle.timeout.map_or(Duration::from_secs(3600), |d| d.0),
        keep_alive: raw.idle.keep_alive.map_or(Duration::from_secs(7200), |d| d.0),
        check_interval: raw.idle.check_interval.map_or(Duration::from_secs(300), |d| d.0),
    };
    if idle.check_interval.is_zero() {
        return Err(err("idle.check_interval", "must be greater than zero"));
    }

    let mut services = Vec::with_capacity(raw.services.len());
    for (name, raw_svc) in raw.services {
        services.push(service(&name, raw_svc, base)?);
    }
    // `[models.X]` tables attach a keep-alive to a model, adding it to its service if needed.
    let mut terms = Vec::new();
    let mut ladders = BTreeMap::new();
    let mut cache_by_model = BTreeMap::new();
    let mut coalesce = BTreeMap::new();
    for (model, raw_model) in raw.models {
        let svc = match &raw_model.service {
            Some(name) => services
                .iter_mut()
                .find(|s| &s.name == name)
                .ok_or_else(|| err(format!("models.{model}.service"), format!("unknown service {name:?}")))?,
            None => services.iter_mut().find(|s| s.models.iter().any(|m| m.name == model)).ok_or_else(|| {
                err(format!("models.{model}.service"), "no service lists this model: name its service here")
            })?,
        };
        let ladder = adapt::Ladder {
            smaller: raw_model.smaller,
            fallback: raw_model.fallback.unwrap_or_default(),
            on_pressure: adapt::on_pressure(&format!("models.{model}.on_pressure"), raw_model.on_pressure.as_deref())?,
            max_p95: raw_model.max_p95.map(|d| d.0),
            max_failure_rate: match raw_model.max_failure_rate {
                Some(r) if !(0.0..=1.0).contains(&r) => {
                    return Err(err(format!("models.{model}.max_failure_rate"), "must be a share between 0 and 1"))
                }
                r => r,
            },
        };
        if ladder != adapt::Ladder::default() {
            ladders.insert(model.clone(), ladder);
        }
        let keep_alive = raw_model.keep_alive.map(|d| d.0);
        terms.push((model.clone(), raw_model.pools, raw_model.price));
        if let Some(text) = &raw_model.cache {
            let when = policy::cache::When::parse(text).ok_or_else(|| {
                err(
                    format!("models.{model}.cache"),
                    format!("{text:?} must be \"always\", \"never\" or \"deterministic\""),
                )
            })?;
            cache_by_model.insert(model.clone(), when);
        }
        match (raw_model.coalesce, raw_model.coalesce_max) {
            (None, Some(_)) => return Err(err(format!("models.{model}.coalesce_max"), "needs coalesce (a window)")),
            (Some(w), _) if w.0.is_zero() || w.0 > Duration::from_secs(1) => {
                return Err(err(format!("models.{model}.coalesce"), "must be more than 0 and at most 1s"))
            }
            (Some(_), Some(0)) => return Err(err(format!("models.{model}.coalesce_max"), "must be at least 1")),
            (Some(w), max) => {
                coalesce.insert(model.clone(), super::Coalesce { window: w.0, max: max.unwrap_or(32) });
            }
            (None, None) => {}
        }
        match svc.models.iter_mut().find(|m| m.name == model) {
            Some(m) => m.keep_alive = keep_alive,
            None => svc.models.push(ModelConfig { name: model, keep_alive }),
        }
    }
    let mut models: BTreeMap<String, ModelRef> = BTreeMap::new();
    // BTreeMap iteration gave name order, which `Config::service_index` relies on.
    for (si, svc) in services.iter().enumerate() {
        for (mi, model) in svc.models.iter().enumerate() {
            if let Some(other) = models.insert(model.name.clone(), ModelRef { service: si, index: mi }) {
                return Err(err(
                    format!("services.{}.models[{mi}]", svc.name),
                    format!("model {:?} is already served by service {:?}", model.name, services[other.service].name),
                ));
            }
        }
    }
    fixed_ports(&services, server.listen.port())?;
    let resources = resources(raw.resources)?;
    let tiers = tenants::tiers(raw.tiers)?;
    let clients = tenants::clients(raw.clients, &tiers)?;
    let pools = tenants::pools(raw.pools, &clients)?;
    let model_terms = tenants::model_terms(terms, &pools)?;
    let scheduler = tenants::scheduler(raw.scheduler)?;
    adapt::check_ladders(&ladders, &|m| models.contains_key(m))?;
    let pressure = adapt::pressure(raw.pressure)?;
    let tasks = adapt::tasks(raw.tasks)?;
    let cache = cache(raw.cache)?;
    let optimizer = optimizer(raw.optimizer)?;
    let state = tenants::state(raw.state)?;
    if let Some(p) =
        pools.iter().find(|p| state.shared.is_some() && matches!(p.sharing, policy::bucket::Sharing::Reserved(_)))
    {
        return Err(err(
            format!("pools.{}.sharing", p.name),
            "reserved shares are counted in each replica only; with [state].shared use \"shared\" or \"dedicated\"",
        ));
    }
    if let Some(s) = cache.semantic.as_ref().filter(|s| !models.contains_key(&s.model)) {
        return Err(err("cache.semantic.model", format!("unknown model {:?} (it embeds the messages)", s.model)));
    }
    if optimizer.batches_off_peak && scheduler.off_peak.is_none() {
        return Err(err(
            "optimizer.batches_off_peak",
            "batch lines would run only inside [scheduler].off_peak, and no off_peak window is configured",
        ));
    }
    Ok(Config {
        server,
        idle,
        services,
        models,
        resources,
        tiers,
        clients,
        pools,
        model_terms,
        scheduler,
        pressure,
        ladders,
        tasks,
        source: None,
        cache,
        cache_by_model,
        optimizer,
        coalesce,
        state,
        secret_env,
    })
}

fn optimizer(raw: super::raw::RawOptimizer) -> Result<super::OptimizerConfig, ConfigError> {
    let mut downgrade_classes = Vec::new();
    for (i, name) in raw.downgrade_classes.unwrap_or_default().iter().enumerate() {
        let at = format!("optimizer.downgrade_classes[{i}]");
        match policy::class::Class::parse(name) {
            Some(policy::class::Class::Immediate) => return Err(err(at, "immediate requests are never downgraded")),
            Some(c) => downgrade_classes.push(c),
            None => return Err(err(at, format!("{name:?} must be one of {}", policy::class::Class::names()))),
        }
    }
    let share = raw.downgrade_over_budget;
    if share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
        return Err(err("optimizer.downgrade_over_budget", "must be a share of the budget, above 0 and at most 1"));
    }
    let batch_concurrency = raw.batch_concurrency.unwrap_or(4);
    if !(1..=256).contains(&batch_concurrency) {
        return Err(err("optimizer.batch_concurrency", "must be from 1 to 256"));
    }
    Ok(super::OptimizerConfig {
        downgrade_classes,
        downgrade_over_budget: share,
        batches_off_peak: raw.batches_off_peak.unwrap_or(false),
        batch_concurrency,
    })
}

fn cache(raw: super::raw::RawCache) -> Result<CacheConfig, ConfigError> {
    let on_disk = match raw.store.as_deref() {
        None | Some("sqlite") => true,
        Some("memory") => false,
        Some(s) => return Err(err("cache.store", format!("{s:?} must be \"sqlite\" or \"memory\""))),
    };
    let per_client = match raw.scope.as_deref() {
        None | Some("client") => true,
        Some("shared") => false,
        Some(s) => return Err(err("cache.scope", format!("{s:?} must be \"client\" or \"shared\""))),
    };
    let when = match raw.when.as_deref() {
        None => policy::cache::When::Deterministic,
        Some(t) => policy::cache::When::parse(t)
            .ok_or_else(|| err("cache.when", format!("{t:?} must be \"deterministic\", \"always\" or \"never\"")))?,
    };
    let max_size = raw.max_size.map_or(256 << 20, |s| s.0);
    if max_size == 0 {
        return Err(err("cache.max_size", "must be more than 0"));
    }
    let ttl = raw.ttl.map_or(Duration::from_secs(3600), |d| d.0);
    if ttl.is_zero() {
        return Err(err("cache.ttl", "must be more than 0"));
    }
    let semantic = match raw.semantic {
        None => None,
        Some(s) => {
            let threshold = s.threshold.unwrap_or(0.95);
            if !(threshold > 0.0 && threshold <= 1.0) {
                return Err(err("cache.semantic.threshold", "must be a cosine similarity above 0 and at most 1"));
            }
            Some(super::SemanticCache { model: s.model, threshold })
        }
    };
    Ok(CacheConfig { enabled: raw.enabled.unwrap_or(false), on_disk, max_size, ttl, per_client, when, semantic })
}

fn service(name: &str, raw: RawService, base: &Path) -> Result<ServiceConfig, ConfigError> {
    let at = |key: &str| format!("services.{name}.{key}");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(err(format!("services.{name}"), "service names may use only letters, digits, '-', '_' and '.'"));
    }
    let only_for = |key: &str, present: bool, kind: &str| {
        if present {
            Err(err(at(key), format!("only applies to kind = \"{kind}\"")))
        } else {
            Ok(())
        }
    };
    let program = |key: &str, argv: &Option<Vec<String>>| match argv {
        Some(a) if a.first().is_none_or(|c| c.is_empty()) => Err(err(at(key), "must name a program to run")),
        _ => Ok(()),
    };
    let (kind, upstream) = match raw.kind {
        RawKind::Process => {
            only_for("api_key_env", raw.api_key_env.is_some(), "remote")?;
            only_for("ca_file", raw.ca_file.is_some(), "remote")?;
            only_for("tls_insecure", raw.tls_insecure.is_some(), "remote")?;
            only_for("container", raw.container.is_some(), "container")?;
            only_for("engine", raw.engine.is_some(), "container")?;
            only_for("tls", raw.tls.is_some(), "container")?;
            only_for("url", raw.url.is_some(), "container")?;
            only_for("image", raw.image.is_some(), "container")?;
            only_for("ports", raw.ports.is_some(), "container")?;
            let command = raw.command.clone().ok_or_else(|| err(at("command"), "required for kind = \"process\""))?;
            program("command", &raw.command)?;
            program("stop_command", &raw.stop_command)?;
            let spec = ProcessSpec {
                command,
                env: raw.env,
                cwd: Some(base.join(raw.cwd.unwrap_or_else(|| ".".into()))),
                stop_command: raw.stop_command,
            };
            (ServiceKind::Process(spec), None)
        }
        RawKind::Remote => {
            for (key, present) in [
                ("command", raw.command.is_some()),
                ("cwd", raw.cwd.is_some()),
                ("port", raw.port.is_some()),
                ("stop_command", raw.stop_command.is_some()),
                ("container", raw.container.is_some()),
                ("image", raw.image.is_some()),
                ("ports", raw.ports.is_some()),
                ("engine", raw.engine.is_some()),
                ("tls", raw.tls.is_some()),
            ] {
                if present {
                    return Err(err(at(key), "does not apply to kind = \"remote\" (it is never started)"));
                }
            }
            let url = raw.url.clone().ok_or_else(|| err(at("url"), "required for kind = \"remote\""))?;
            let upstream = base_url(&url, true).ok_or_else(|| {
                err(
                    at("url"),
                    format!("{url:?} must look like \"https://api.example.com\" (an optional path prefix may follow)"),
                )
            })?;
            let trust =
                trust(&upstream, raw.ca_file.as_deref(), raw.tls_insecure, base).map_err(|(key, e)| err(at(key), e))?;
            let api_key = match &raw.api_key_env {
                None => None,
                Some(var) => Some(Secret(
                    std::env::var(var)
                        .map_err(|_| err(at("api_key_env"), format!("environment variable {var} is not set")))?,
                )),
            };
            (ServiceKind::Remote(RemoteSpec { api_key, trust }), Some(upstream))
        }
        RawKind::Container => {
            only_for("command", raw.command.is_some(), "process")?;
            only_for("cwd", raw.cwd.is_some(), "process")?;
            only_for("port", raw.port.is_some(), "process")?;
            only_for("stop_command", raw.stop_command.is_some(), "process")?;
            let container = raw.container.ok_or_else(|| err(at("container"), "required for kind = \"container\""))?;
            let url = raw.url.ok_or_else(|| err(at("url"), "required for kind = \"container\" (where it answers)"))?;
            let upstream = base_url(&url, false)
                .ok_or_else(|| err(at("url"), format!("{url:?} must look like \"http://127.0.0.1:6333\"")))?;
            let mut ports = Vec::new();
            for (i, p) in raw.ports.unwrap_or_default().iter().enumerate() {
                ports.push(port_map(p).ok_or_else(|| {
                    err(format!("services.{name}.ports[{i}]"), format!("{p:?} must look like \"127.0.0.1:8080:80\""))
                })?);
            }
            only_for("api_key_env", raw.api_key_env.is_some(), "remote")?;
            only_for("ca_file", raw.ca_file.is_some(), "remote")?;
            only_for("tls_insecure", raw.tls_insecure.is_some(), "remote")?;
            let tls = engine_tls(raw.engine.as_deref(), raw.tls, base).map_err(|(key, e)| err(at(key), e))?;
            let spec = ContainerSpec { container, engine: raw.engine, tls, image: raw.image, ports, env: raw.env };
            (ServiceKind::Container(spec), Some(upstream))
        }
    };
    let health = match raw.health.as_deref() {
        None => Health::Path("/health".into()),
        Some("none") => Health::Port,
        Some("docker") if matches!(kind, ServiceKind::Container(_)) => Health::Docker,
        Some(p) if p.starts_with('/') => Health::Path(p.to_string()),
        Some(p) => {
            return Err(err(
                at("health"),
                format!("{p:?} must be a path starting with '/', \"none\" or (containers) \"docker\""),
            ))
        }
    };
    for (i, model) in raw.models.iter().enumerate() {
        if model.is_empty() {
            return Err(err(format!("services.{name}.models[{i}]"), "model names must not be empty"));
        }
    }
    let remote = matches!(kind, ServiceKind::Remote(_));
    let start_timeout = raw.start_timeout.map_or(DEFAULT_START_TIMEOUT, |d| d.0);
    if start_timeout.is_zero() {
        return Err(err(at("start_timeout"), "must be greater than zero"));
    }
    let response_timeout = raw.response_timeout.map_or(DEFAULT_RESPONSE_TIMEOUT, |d| d.0);
    if response_timeout.is_zero() {
        return Err(err(at("response_timeout"), "must be greater than zero"));
    }
    Ok(ServiceConfig {
        name: name.to_string(),
        retired: false,
        kind,
        port: raw.port.unwrap_or(0),
        health,
        upstream,
        api: match raw.api {
            None | Some(RawApi::OpenAi) => Api::Single,
            Some(RawApi::LlamacppRouter) => Api::LlamacppRouter,
            Some(RawApi::Ollama) => Api::Ollama,
        },
        start_timeout,
        response_timeout,
        stop_timeout: raw.stop_timeout.map_or(DEFAULT_STOP_TIMEOUT, |d| d.0),
        models: raw.models.into_iter().map(|name| ModelConfig { name, keep_alive: None }).collect(),
        idle_sleep: raw.idle_sleep.unwrap_or(true),
        idle_timeout: raw.idle_timeout.map(|d| d.0),
        // A remote API is always up: pinned, so idle sleep and offloading leave it alone.
        desired: match (raw.desired, remote) {
            (_, true) | (Some(RawDesired::On), _) => Desired::On,
            _ => Desired::Off,
        },
        max_queue: raw.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
        max_concurrent: match raw.max_concurrent {
            Some(0) => return Err(err(at("max_concurrent"), "must be at least 1")),
            n => n,
        },
        memory: match raw.memory.as_deref() {
            None => None,
            Some("auto") => Some(MemorySetting::Auto),
            Some(t) => Some(MemorySetting::Bytes(parse_size(t).map_err(|e| err(at("memory"), e))?)),
        },
        device: match raw.device {
            Some(RawDevice::Gpu) => Device::Gpu,
            _ => Device::Cpu,
        },
        priority: raw.priority.unwrap_or(50),
        reload: raw.reload.unwrap_or(true),
        group: raw.group.filter(|g| !g.is_empty()),
        compress_upstream: match raw.compress_upstream.as_deref() {
            None => false,
            Some("gzip") => true,
            Some(other) => return Err(err(at("compress_upstream"), format!("{other:?} must be \"gzip\""))),
        },
    })
}

fn capacity(key: &str, text: Option<&str>, allow_none: bool) -> Result<CapacitySetting, ConfigError> {
    match text {
        None | Some("auto") => Ok(CapacitySetting::Auto),
        Some("none") if allow_none => Ok(CapacitySetting::None),
        Some(t) => parse_size(t).map(CapacitySetting::Bytes).map_err(|e| err(key, e)),
    }
}

fn resources(raw: RawResources) -> Result<ResourcesConfig, ConfigError> {
    let threshold = raw.threshold.unwrap_or(0.75);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(err("resources.threshold", format!("{threshold} must be above 0 and at most 1")));
    }
    Ok(ResourcesConfig {
        ram: capacity("resources.ram", raw.ram.as_deref(), false)?,
        vram: capacity("resources.vram", raw.vram.as_deref(), true)?,
        threshold,
        reserve: raw.reserve.map(|s| s.0),
        min_residency: raw.min_residency.map_or(Duration::from_secs(30), |d| d.0),
    })
}

/// A service's base URL, without a trailing slash: "http://host:port", or for a hosted API
/// also "https://host[:port]" with an optional path prefix ("https://api.groq.com/openai").
/// Requests go to the base URL followed by their own path. Anything else is None.
fn base_url(url: &str, remote: bool) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme == "http" || (remote && scheme == "https")) {
        return None;
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = match authority.rsplit_once(':') {
        // A port, unless the colon is inside an IPv6 literal ("[::1]").
        Some((host, port)) if !port.ends_with(']') => {
            port.parse::<u16>().ok()?;
            host
        }
        _ => authority,
    };
    let clean = |s: &str| !s.contains(|c: char| c.is_whitespace() || c.is_control() || "@?#".contains(c));
    if host.is_empty() || !clean(authority) || !clean(path) {
        return None;
    }
    let prefix = path.trim_end_matches('/');
    if !remote && !prefix.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}{prefix}"))
}

/// An engine address warden can speak to, and for an https one its TLS files (checked now).
fn engine_tls(
    engine: Option<&str>,
    tls: Option<RawEngineTls>,
    base: &Path,
) -> Result<Option<EngineTls>, (&'static str, String)> {
    let engine = engine.unwrap_or("unix://");
    let scheme = engine.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("unix" | "tcp" | "http" | "https")) {
        let example = "\"unix:///run/podman/podman.sock\", \"tcp://host:2375\" or \"https://host:2376\"";
        return Err(("engine", format!("{engine:?} must look like {example}")));
    }
    match (scheme == Some("https"), tls) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(("tls", "only applies to an https engine".into())),
        (true, None) => Err(("tls", "required for an https engine: { ca = …, cert = …, key = … }".into())),
        (true, Some(t)) => {
            let file = |name: &'static str, path: &str| {
                let path = base.join(path);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => Ok(path),
                    _ => Err(("tls", format!("{name} file {} is missing", path.display()))),
                }
            };
            Ok(Some(EngineTls { ca: file("ca", &t.ca)?, cert: file("cert", &t.cert)?, key: file("key", &t.key)? }))
        }
    }
}

/// Whom a hosted API's certificate must be signed by: `ca_file` (PEM, read and checked now so
/// a bad file is a config error, not a failed request later), no one (`tls_insecure`), or
/// Mozilla's roots. Both keys apply to https only, and only one of them at a time.
fn trust(
    url: &str,
    ca_file: Option<&str>,
    insecure: Option<bool>,
    base: &Path,
) -> Result<Trust, (&'static str, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let https = url.starts_with("https://");
    match (ca_file, insecure.unwrap_or(false)) {
        (Some(_), true) => Err(("tls_insecure", "cannot be combined with ca_file: pick one".into())),
        (Some(_), _) | (_, true) if !https => {
            let key = if ca_file.is_some() { "ca_file" } else { "tls_insecure" };
            Err((key, "only applies to an https url".into()))
        }
        (Some(file), false) => {
            let path = base.join(file);
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| ("ca_file", format!("cannot read certificates from {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(("ca_file", format!("{} holds no usable CA certificate (PEM)", path.display())));
            }
            Ok(Trust::Only(std::sync::Arc::new(certs)))
        }
        (None, true) => Ok(Trust::Insecure),
        (None, false) => Ok(Trust::Public),
    }
}

/// A process on a fixed port answers whatever is probed or sent there: two services on one port
/// would pass each other's health checks and get each other's requests, and one on warden's own
/// port would be warden. Services that never run together (one exclusive `group`) may share.
fn fixed_ports(services: &[ServiceConfig], listen: u16) -> Result<(), ConfigError> {
    let mut taken: BTreeMap<u16, &ServiceConfig> = BTreeMap::new();
    for svc in services.iter().filter(|s| matches!(s.kind, ServiceKind::Process(_)) && s.port != 0) {
        let path = format!("services.{}.port", svc.name);
        if svc.port == listen {
            return Err(err(path, format!("{} is warden's own port ([server].listen)", svc.port)));
        }
        match taken.get(&svc.port) {
            Some(other) if other.group.is_none() || other.group != svc.group => {
                return Err(err(
                    path,
                    format!(
                        "{} is also service {:?}'s port; services share a port only in one exclusive group (they never run together)",
                        svc.port, other.name
                    ),
                ));
            }
            Some(_) => {}
            None => {
                taken.insert(svc.port, svc);
            }
        }
    }
    Ok(())
}

/// `[IP:]HOST_PORT:CONTAINER_PORT`
fn port_map(text: &str) -> Option<PortMap> {
    let parts: Vec<&str> = text.rsplitn(3, ':').collect();
    let (container_port, host_port, host_ip) = match parts.as_slice() {
        [c, h] => (c, h, None),
        [c, h, ip] => (c, h, Some(ip.to_string())),
        _ => return None,
    };
    Some(PortMap { host_ip, host_port: host_port.parse().ok()?, container_port: container_port.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    #[test]
    fn an_https_engine_needs_its_tls_files_and_only_it_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let svc = |engine: &str, tls: &str| {
            format!("[services.c]\nkind = \"container\"\ncontainer = \"c\"\nurl = \"http://127.0.0.1:1\"\nengine = \"{engine}\"\n{tls}\n")
        };
        let tls = "tls = { ca = \"ca.pem\", cert = \"cert.pem\", key = \"key.pem\" }";
        let cfg = parse(&svc("https://far:2376", tls), dir.path()).unwrap();
        let crate::config::ServiceKind::Container(spec) = &cfg.services[0].kind else { panic!() };
        assert_eq!(spec.tls.as_ref().map(|t| t.key.clone()), Some(dir.path().join("key.pem")));
        assert!(!cfg.services[0].on_this_machine(), "a container on another machine's engine");
        let cases = [
            (svc("https://far:2376", ""), "services.c.tls: required for an https engine"),
            (svc("tcp://far:2375", tls), "services.c.tls: only applies to an https engine"),
            (svc("https://far:2376", &tls.replace("key.pem", "nope.pem")), "key file"),
            (svc("ssh://far", ""), "services.c.engine:"),
        ];
        for (text, says) in cases {
            let e = parse(&text, dir.path()).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn base_urls_keep_scheme_host_port_and_a_remote_path_prefix() {
        use super::base_url;
        assert_eq!(base_url("http://127.0.0.1:8080/", false).as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(base_url("https://api.groq.com/openai/", true).as_deref(), Some("https://api.groq.com/openai"));
        assert_eq!(base_url("https://[::1]:8443", true).as_deref(), Some("https://[::1]:8443"));
        assert_eq!(base_url("https://[::1]", true).as_deref(), Some("https://[::1]"));
        for bad in ["https://h", "http://h/prefix", "ftp://h"] {
            assert_eq!(base_url(bad, false), None, "{bad}");
        }
        for bad in ["http://", "http://:80", "http://h:port", "http://u@h", "http://h/?q", "http://h x", "h:80"] {
            assert_eq!(base_url(bad, true), None, "{bad}");
        }
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new(".")).unwrap_err().to_string()
    }

    #[test]
    fn shared_state_is_checked() {
        let ok = parse("[state]\nshared = \"redis://127.0.0.1:6379/0\"\non_unavailable = \"local\"\n", Path::new("."));
        let state = ok.unwrap().state;
        assert_eq!(state.key_prefix, "warden:");
        assert_eq!(state.on_unavailable, crate::config::OnUnavailable::Local);
        assert_eq!(state.hold_ttl, std::time::Duration::from_secs(30));
        assert_eq!(parse("", Path::new(".")).unwrap().state.shared, None);
        let e = parse_err("[state]\nshared = \"127.0.0.1:6379\"\n");
        assert!(e.contains("state.shared") && e.contains("redis://"), "{e}");
        let e = parse_err("[state]\nshared = \"redis://h\"\non_unavailable = \"guess\"\n");
        assert!(e.contains("state.on_unavailable"), "{e}");
        let e = parse_err("[state]\nshared = \"redis://h\"\nhold_ttl = \"10ms\"\n");
        assert!(e.contains("state.hold_ttl"), "{e}");
        let reserved = "[clients.a]\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[pools.p]\nunit = \"requests\"\ncapacity = 10\nrefill_per_sec = 1\nsharing = \"reserved\"\nreserved = { a = 0.5 }\n";
        let e = parse_err(&format!("[state]\nshared = \"redis://h\"\n{reserved}"));
        assert!(e.contains("pools.p.sharing") && e.contains("replica"), "{e}");
    }

    #[test]
    fn batches_off_peak_needs_an_off_peak_window_and_concurrency_is_bounded() {
        let e = parse_err("[optimizer]\nbatches_off_peak = true\n");
        assert!(e.contains("optimizer.batches_off_peak") && e.contains("off_peak window"), "{e}");
        let ok =
            parse("[scheduler]\noff_peak = \"22:00-06:00\"\n[optimizer]\nbatches_off_peak = true\n", Path::new("."));
        assert!(ok.unwrap().optimizer.batches_off_peak);
        assert!(parse_err("[optimizer]\nbatch_concurrency = 0\n").contains("optimizer.batch_concurrency"));
        assert_eq!(parse("", Path::new(".")).unwrap().optimizer.batch_concurrency, 4);
    }

    #[test]
    fn the_semantic_cache_needs_a_known_model_and_a_sane_threshold() {
        let svc = "[services.s]\nkind = \"remote\"\nurl = \"http://127.0.0.1:9\"\nmodels = [\"embed\"]\n";
        let with = |semantic: &str| format!("[cache]\nenabled = true\nsemantic = {semantic}\n{svc}");
        let cfg = parse(&with("{ model = \"embed\" }"), Path::new(".")).unwrap();
        assert_eq!(cfg.cache.semantic.map(|s| s.threshold), Some(0.95));
        let e = parse_err(&with("{ model = \"nope\" }"));
        assert!(e.starts_with("cache.semantic.model: unknown model \"nope\""), "{e}");
        let e = parse_err(&with("{ model = \"embed\", threshold = 1.5 }"));
        assert!(e.starts_with("cache.semantic.threshold:"), "{e}");
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
max_body = "1MiB"

[idle]
check_interval = "100ms"

[services.llama]
kind = "process"
command = ["llama-server", "--port", "${PORT}"]
models = ["tiny", "tiny-alias"]
idle_timeout = "5m"
desired = "on"
"#;

    #[test]
    fn pressure_ladders_and_tasks() {
        use crate::config::adapt::{HardwareTier, OnPressure};
        let text = r#"
[pressure]
enabled = true
degrade_at = 0.8
upgrade_below = 0.7
stabilization = "5m"
tier = "auto"

[pressure.tiers.small]
degrade_at = 0.7
upgrade_below = 0.6

[services.big]
kind = "process"
command = ["x"]
models = ["qwen-7b"]

[services.small]
kind = "process"
command = ["x"]
models = ["qwen-3b"]

[models."qwen-7b"]
smaller = "qwen-3b"
fallback = ["qwen-3b"]
on_pressure = "degrade"

[tasks.summarization]
temperature = 0.2
max_tokens = 500
"#;
        let cfg = parse(text, Path::new(".")).unwrap();
        assert!(cfg.pressure.enabled && cfg.pressure.tier.is_none());
        let small = cfg.pressure.limits(HardwareTier::Small);
        assert_eq!((small.degrade_at, small.upgrade_below), (0.7, 0.6), "a tier's own keys win");
        let medium = cfg.pressure.limits(HardwareTier::Medium);
        assert_eq!((medium.degrade_at, medium.upgrade_below, medium.stop_idle_at), (0.8, 0.7, 0.85));
        let ladder = &cfg.ladders["qwen-7b"];
        assert_eq!((ladder.smaller.as_deref(), ladder.on_pressure), (Some("qwen-3b"), OnPressure::Degrade));
        assert_eq!(cfg.tasks["summarization"]["max_tokens"], 500);
        assert_eq!(HardwareTier::of_capacity(8 << 30), HardwareTier::Small);
        assert_eq!(HardwareTier::of_capacity(24 << 30), HardwareTier::Medium);
        assert_eq!(HardwareTier::of_capacity(80 << 30), HardwareTier::Large);

        let bad = |from: &str, to: &str| parse_err(&text.replace(from, to));
        assert!(bad("smaller = \"qwen-3b\"", "smaller = \"nope\"").contains("models.qwen-7b.smaller: unknown model"));
        assert!(bad("upgrade_below = 0.6", "upgrade_below = 0.75")
            .contains("pressure.tiers.small.upgrade_below: must be below degrade_at"));
        assert!(bad("tier = \"auto\"", "tier = \"huge\"").contains("pressure.tier"));
        assert!(bad("degrade_at = 0.8", "degrade_at = 1.5").contains("pressure.degrade_at: must be a share"));
        assert!(bad("on_pressure = \"degrade\"", "on_pressure = \"panic\"").contains("models.qwen-7b.on_pressure"));
        let looped = text
            .replace("[tasks.summarization]", "[models.\"qwen-3b\"]\nsmaller = \"qwen-7b\"\n\n[tasks.summarization]");
        assert!(parse_err(&looped).contains("the ladder loops"), "{}", parse_err(&looped));
    }

    #[test]
    fn listen_takes_host_names_and_server_bounds_are_checked() {
        let with = |server: &str| parse(&format!("[server]\n{server}\n"), Path::new("."));
        let cfg = with("listen = \"localhost:8083\"").unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(cfg.server.header_timeout, std::time::Duration::from_secs(30));
        assert_eq!(cfg.server.max_connections, None);
        assert!(with("listen = \"[::1]:80\"").is_ok());
        assert!(parse_err("[server]\nlisten = \"nowhere.invalid:80\"\n").contains("server.listen: invalid address"));
        assert!(parse_err("[server]\nmax_connections = 0\n").contains("server.max_connections: must be at least 1"));
        assert!(parse_err("[server]\nheader_timeout = \"0s\"\n").contains("server.header_timeout"));
        let cfg = with("header_timeout = \"5s\"\nmax_connections = 10").unwrap();
        assert_eq!((cfg.server.header_timeout.as_secs(), cfg.server.max_connections), (5, Some(10)));
        assert!(parse_err("[server]\nworkers = 0\n").contains("server.workers: must be at least 1"));
        assert_eq!((cfg.server.workers, with("workers = 3").unwrap().server.workers), (None, Some(3)));
    }

    #[test]
    fn parses_a_full_service() {
        let cfg = parse(GOOD, Path::new("/etc/warden")).unwrap();
        assert_eq!(cfg.server.max_body, 1 << 20);
        assert_eq!(cfg.services.len(), 1);
        let s = &cfg.services[0];
        assert_eq!(s.idle_timeout, Some(std::time::Duration::from_secs(300)));
        assert_eq!(s.desired, super::Desired::On);
        assert_eq!(cfg.models["tiny-alias"], super::ModelRef { service: 0, index: 1 });
        assert_eq!(cfg.server.state_dir, Path::new("/etc/warden/warden-state"));
    }

    #[test]
    fn bad_duration_names_path_and_line() {
        let text = GOOD.replace("idle_timeout = \"5m\"", "start_timeout = \"5 minutes\"");
        let msg = parse_err(&text);
        assert!(msg.starts_with("services.llama.start_timeout: invalid duration \"5 minutes\""), "{msg}");
        assert!(msg.ends_with("at line 13"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let msg = parse_err(&GOOD.replace("desired = \"on\"", "desird = \"on\""));
        assert!(msg.contains("services.llama") && msg.contains("desird"), "{msg}");
        assert!(msg.contains("line 14"), "{msg}");
        let msg = parse_err("[sever]\nlisten = \"x\"\n");
        assert!(msg.contains("sever") && msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn a_fixed_port_is_one_service_s_unless_they_never_run_together() {
        let svc = |name: &str, port: u16, group: &str| {
            let group = if group.is_empty() { String::new() } else { format!("group = \"{group}\"\n") };
            format!("[services.{name}]\nkind = \"process\"\ncommand = [\"x\"]\nport = {port}\n{group}")
        };
        let server = "[server]\nlisten = \"127.0.0.1:8080\"\n";
        let msg = parse_err(&format!("{server}{}{}", svc("a", 9001, ""), svc("b", 9001, "")));
        assert!(
            msg.starts_with(
                "services.b.port: 9001 is also service \"a\"'s port; services share a port only in one exclusive group"
            ),
            "{msg}"
        );
        assert!(msg.ends_with("at line 10"), "{msg}");
        let msg = parse_err(&format!("{server}{}{}", svc("a", 9001, "big"), svc("b", 9001, "small")));
        assert!(msg.contains("is also service \"a\"'s port"), "{msg}");
        let msg = parse_err(&format!("{server}{}", svc("a", 8080, "")));
        assert!(msg.starts_with("services.a.port: 8080 is warden's own port ([server].listen)"), "{msg}");
        // One exclusive group, different ports, or picked at each start (0): fine.
        for ok in [
            format!("{server}{}{}", svc("a", 9001, "big"), svc("b", 9001, "big")),
            format!("{server}{}{}", svc("a", 9001, ""), svc("b", 9002, "")),
            format!("{server}{}{}", svc("a", 0, ""), svc("b", 0, "")),
        ] {
            assert!(parse(&ok, Path::new(".")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let dup = format!("{GOOD}\n[services.other]\nkind = \"process\"\ncommand = [\"x\"]\nmodels = [\"tiny\"]\n");
        let msg = parse_err(&dup);
        assert!(
            msg.starts_with("services.other.models[0]: model \"tiny\" is already served by service \"llama\""),
            "{msg}"
        );
        assert!(msg.ends_with("at line 19"), "{msg}");
        let msg = parse_err(&GOOD.replace("desired = \"on\"", "health = \"health\""));
        assert!(msg.starts_with("services.llama.health:"), "{msg}");
        let msg = parse_err(&GOOD.replace("kind = \"process\"", "kind = \"spaceship\""));
        assert!(msg.contains("services.llama.kind") && msg.contains("spaceship"), "{msg}");
        let msg = parse_err(&GOOD.replace("127.0.0.1:0", "localhost"));
        assert!(msg.starts_with("server.listen: invalid address"), "{msg}");
        let msg = parse_err("[services.x]\nkind = \"process\"\n");
        assert!(msg.starts_with("services.x.command: required"), "{msg}");
    }

    #[test]
    fn model_tables_attach_keep_alive_and_add_models() {
        let text = format!(
            "{GOOD}api = \"llamacpp-router\"\n[models.\"tiny\"]\nservice = \"llama\"\nkeep_alive = \"30m\"\n[models.extra]\nservice = \"llama\"\n"
        );
        let cfg = parse(&text, Path::new(".")).unwrap();
        let svc = &cfg.services[0];
        assert_eq!(svc.api, super::Api::LlamacppRouter);
        assert_eq!(svc.models[0].keep_alive, Some(std::time::Duration::from_secs(1800)));
        assert_eq!(svc.models[2].name, "extra");
        assert_eq!(cfg.models["extra"], super::ModelRef { service: 0, index: 2 });
        let msg = parse_err("[models.x]\nservice = \"nope\"\n");
        assert_eq!(msg, "models.x.service: unknown service \"nope\" at line 2");
        let msg = parse_err(&GOOD.replace("desired = \"on\"", "api = \"vllm\""));
        assert!(msg.contains("services.llama.api") && msg.contains("vllm"), "{msg}");
    }

    #[test]
    fn containers() {
        let text = "[services.q]\nkind = \"container\"\ncontainer = \"qdrant\"\nurl = \"http://127.0.0.1:6333\"\nhealth = \"docker\"\nports = [\"127.0.0.1:6333:6333\", \"8080:80\"]\n";
        let cfg = parse(text, Path::new(".")).unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.upstream.as_deref(), Some("http://127.0.0.1:6333"));
        assert_eq!(s.health, super::Health::Docker);
        let super::ServiceKind::Container(spec) = &s.kind else { panic!("container") };
        assert_eq!(
            spec.ports[0],
            super::PortMap { host_ip: Some("127.0.0.1".into()), host_port: 6333, container_port: 6333 }
        );
        assert_eq!(spec.ports[1], super::PortMap { host_ip: None, host_port: 8080, container_port: 80 });
        let msg = parse_err(&text.replace("8080:80", "http"));
        assert!(msg.starts_with("services.q.ports[1]:") && msg.ends_with("line 6"), "{msg}");
        let msg = parse_err(&text.replace("http://127.0.0.1:6333", "127.0.0.1:6333"));
        assert!(msg.starts_with("services.q.url:"), "{msg}");
        let msg = parse_err(&format!("{text}command = [\"x\"]\n"));
        assert!(msg.starts_with("services.q.command: only applies to kind = \"process\""), "{msg}");
        let msg = parse_err("[services.p]\nkind = \"process\"\ncommand = [\"x\"]\nhealth = \"docker\"\n");
        assert!(msg.starts_with("services.p.health:"), "{msg}");
    }

    #[test]
    fn resources_and_memory_settings() {
        let text = format!(
            "[resources]\nram = \"16GiB\"\nvram = \"none\"\nthreshold = 0.8\nreserve = \"512MiB\"\n{GOOD}memory = \"8.5GiB\"\ndevice = \"gpu\"\npriority = 70\nreload = false\ngroup = \"gpu-big\"\n"
        );
        let cfg = parse(&text, Path::new(".")).unwrap();
        assert_eq!(cfg.resources.ram, super::CapacitySetting::Bytes(16 << 30));
        assert_eq!(cfg.resources.vram, super::CapacitySetting::None);
        assert_eq!(cfg.resources.reserve, Some(512 << 20));
        let s = &cfg.services[0];
        assert_eq!(s.memory, Some(super::MemorySetting::Bytes((8.5 * (1u64 << 30) as f64) as u64)));
        assert_eq!(
            (s.device, s.priority, s.reload, s.group.as_deref()),
            (super::Device::Gpu, 70, false, Some("gpu-big"))
        );
        let msg = parse_err(&text.replace("threshold = 0.8", "threshold = 1.5"));
        assert_eq!(msg, "resources.threshold: 1.5 must be above 0 and at most 1 at line 4");
        let msg = parse_err(&text.replace("\"8.5GiB\"", "\"lots\""));
        assert!(msg.starts_with("services.llama.memory: invalid size \"lots\""), "{msg}");
        let msg = parse_err(&text.replace("\"16GiB\"", "\"none\""));
        assert!(msg.starts_with("resources.ram: invalid size"), "{msg}");
        assert_eq!(parse(GOOD, Path::new(".")).unwrap().resources.ram, super::CapacitySetting::Auto);
    }
}
