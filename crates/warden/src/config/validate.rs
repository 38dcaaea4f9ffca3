//! Turns the raw file into the runtime [`Config`]: defaults, cross-checks, resolved paths.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawConfig, RawDesired, RawKind, RawService};
use super::{Config, ConfigError, Desired, Health, IdleConfig, ProcessSpec, ServerConfig, ServiceConfig, ServiceKind};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: u64 = 32 << 20;
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_QUEUE: usize = 1024;

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { path: path.into(), message: message.into(), line: None }
}

pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        err("server.listen", format!("invalid address {listen_text:?} (expected e.g. \"127.0.0.1:8080\")"))
    })?;
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
    let mut owner_of_model: BTreeMap<String, String> = BTreeMap::new();
    for (name, raw_svc) in raw.services {
        let svc = service(&name, raw_svc, base)?;
        for (i, model) in svc.models.iter().enumerate() {
            if let Some(other) = owner_of_model.insert(model.clone(), name.clone()) {
                return Err(err(
                    format!("services.{name}.models[{i}]"),
                    format!("model {model:?} is already served by service {other:?}"),
                ));
            }
        }
        services.push(svc);
    }
    // BTreeMap iteration already gives name order, which `Config::service_index` relies on.
    let models = owner_of_model
        .into_iter()
        .map(|(model, svc)| {
            let idx = services.iter().position(|s| s.name == svc).expect("service just added");
            (model, idx)
        })
        .collect();
    Ok(Config { server, idle, services, models })
}

fn service(name: &str, raw: RawService, base: &Path) -> Result<ServiceConfig, ConfigError> {
    let at = |key: &str| format!("services.{name}.{key}");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(err(format!("services.{name}"), "service names may use only letters, digits, '-', '_' and '.'"));
    }
    let kind = match raw.kind {
        RawKind::Process => {
            let command = raw.command.ok_or_else(|| err(at("command"), "required for kind = \"process\""))?;
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(err(at("command"), "must name a program to run"));
            }
            if let Some(stop) = &raw.stop_command {
                if stop.first().is_none_or(|c| c.is_empty()) {
                    return Err(err(at("stop_command"), "must name a program to run"));
                }
            }
            ServiceKind::Process(ProcessSpec {
                command,
                env: raw.env,
                cwd: Some(base.join(raw.cwd.unwrap_or_else(|| ".".into()))),
                stop_command: raw.stop_command,
            })
        }
    };
    let health = match raw.health.as_deref() {
        None => Health::Path("/health".into()),
        Some("none") => Health::Port,
        Some(p) if p.starts_with('/') => Health::Path(p.to_string()),
        Some(p) => return Err(err(at("health"), format!("{p:?} must be a path starting with '/' or \"none\""))),
    };
    for (i, model) in raw.models.iter().enumerate() {
        if model.is_empty() {
            return Err(err(format!("services.{name}.models[{i}]"), "model names must not be empty"));
        }
    }
    let max_queue = raw.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
    let start_timeout = raw.start_timeout.map_or(DEFAULT_START_TIMEOUT, |d| d.0);
    if start_timeout.is_zero() {
        return Err(err(at("start_timeout"), "must be greater than zero"));
    }
    Ok(ServiceConfig {
        name: name.to_string(),
        kind,
        port: raw.port.unwrap_or(0),
        health,
        start_timeout,
        stop_timeout: raw.stop_timeout.map_or(DEFAULT_STOP_TIMEOUT, |d| d.0),
        models: raw.models,
        idle_sleep: raw.idle_sleep.unwrap_or(true),
        idle_timeout: raw.idle_timeout.map(|d| d.0),
        desired: match raw.desired {
            Some(RawDesired::On) => Desired::On,
            _ => Desired::Off,
        },
        max_queue,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    fn parse_err(text: &str) -> String {
        parse(text, Path::new(".")).unwrap_err().to_string()
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
    fn parses_a_full_service() {
        let cfg = parse(GOOD, Path::new("/etc/warden")).unwrap();
        assert_eq!(cfg.server.max_body, 1 << 20);
        assert_eq!(cfg.services.len(), 1);
        let s = &cfg.services[0];
        assert_eq!(s.idle_timeout, Some(std::time::Duration::from_secs(300)));
        assert_eq!(s.desired, super::Desired::On);
        assert_eq!(cfg.models["tiny-alias"], 0);
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
}
