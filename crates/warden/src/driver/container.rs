//! `kind = "container"`: an existing (or created-on-demand) container driven through the Docker
//! Engine API, which Docker and Podman's compatible service both speak.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, EventMessage, HealthStatusEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, StatsOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;

use super::{Exit, StartFailure};
use crate::config::ContainerSpec;

type Events = Pin<Box<dyn Stream<Item = Result<EventMessage, DockerError>> + Send>>;

/// Engine calls other than waits are bounded by this.
const CALL_TIMEOUT: u64 = 60;

pub struct ContainerHandle {
    docker: Docker,
    name: String,
    pid: Option<u32>,
    /// The watcher's report of how the container ended. Awaiting a receiver is cancel-safe,
    /// which matters: the owner polls `exited()` afresh on every turn of its loop.
    exit: oneshot::Receiver<Exit>,
    /// Watches the engine's events for this container; aborted when the handle goes.
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerHandle {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Connects to the spec's engine (over https with its TLS files), else DOCKER_HOST,
/// /var/run/docker.sock, or Podman's usual sockets.
pub async fn connect(spec: &ContainerSpec) -> Result<Docker, String> {
    let candidates: Vec<String> = match spec.engine.as_deref() {
        Some(e) => vec![e.to_string()],
        None => {
            let mut c: Vec<String> = std::env::var("DOCKER_HOST").into_iter().collect();
            c.push("unix:///var/run/docker.sock".into());
            c.push("unix:///run/podman/podman.sock".into());
            if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
                c.push(format!("unix://{dir}/podman/podman.sock"));
            }
            c
        }
    };
    let mut last = String::from("no engine address to try");
    for addr in &candidates {
        let docker = if let Some(path) = addr.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                last = format!("no socket at {path}");
                continue;
            }
            Docker::connect_with_unix(addr, CALL_TIMEOUT, API_DEFAULT_VERSION)
        } else if let (true, Some(tls)) = (addr.starts_with("https://"), &spec.tls) {
            Docker::connect_with_ssl(addr, &tls.key, &tls.cert, &tls.ca, CALL_TIMEOUT, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(addr, CALL_TIMEOUT, API_DEFAULT_VERSION)
        };
        // Negotiation picks the highest API version both sides speak (Podman 4 speaks 1.41).
        match docker.map_err(|e| e.to_string()) {
            Ok(d) => match d.negotiate_version().await {
                Ok(d) => return Ok(d),
                Err(e) => last = format!("{addr}: {e}"),
            },
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(format!("cannot reach a container engine ({last})"))
}

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// An engine call failed: a missing container or image will not appear by retrying.
fn cannot(what: &str, name: &str, e: DockerError) -> StartFailure {
    let reason = format!("cannot {what} container {name}: {e}");
    if is_not_found(&e) {
        StartFailure::permanent(reason)
    } else {
        StartFailure::transient(reason)
    }
}

/// Starts the container (creating it from `image` if it does not exist; adopting it if it already
/// runs). Returns once the engine reports it running; health is the caller's to wait for.
pub async fn start(spec: &ContainerSpec) -> Result<ContainerHandle, StartFailure> {
    let docker = connect(spec).await.map_err(StartFailure::transient)?;
    let name = spec.container.clone();
    // Events are read from this instant on, so a death right after the start is not missed.
    let since = crate::base::clock::unix_now();
    match docker.inspect_container(&name, None::<InspectContainerOptions>).await {
        Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {}
        Ok(_) => docker.start_container(&name, None).await.map_err(|e| cannot("start", &name, e))?,
        Err(e) if is_not_found(&e) => {
            let Some(image) = &spec.image else {
                return Err(StartFailure::permanent(format!(
                    "container {name} does not exist and no image is configured to create it"
                )));
            };
            create(&docker, spec, image).await?;
            docker.start_container(&name, None).await.map_err(|e| cannot("start", &name, e))?;
        }
        Err(e) => return Err(cannot("inspect", &name, e)),
    }
    let info = docker
        .inspect_container(&name, None::<InspectContainerOptions>)
        .await
        .map_err(|e| cannot("inspect", &name, e))?;
    let pid = info.state.and_then(|s| s.pid).filter(|&p| p > 0).map(|p| p as u32);
    // Read now: once the container has died, an inspect can race the engine's cleanup.
    let limit = info.host_config.and_then(|h| h.memory).filter(|&m| m > 0);
    let (tx, exit) = oneshot::channel();
    let watcher = tokio::spawn(watch(docker.clone(), name.clone(), since, limit, tx));
    Ok(ContainerHandle { docker, name, pid, exit, watcher })
}

fn events_since(docker: &Docker, name: &str, since: Duration) -> Events {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("container".to_string(), vec![name.to_string()]),
    ]);
    let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
    docker.events(Some(EventsOptions { since: Some(since), filters: Some(filters), ..Default::default() })).boxed()
}

/// Reports how the container ended, from its `die` event (an `oom` event before it marks an OOM
/// kill). If the event stream breaks, it looks directly and listens again.
async fn watch(docker: Docker, name: String, since: Duration, limit: Option<i64>, report: oneshot::Sender<Exit>) {
    let mut events = events_since(&docker, &name, since);
    let mut oom_event = false;
    let exit = loop {
        match events.next().await {
            Some(Ok(event)) => match event.action.as_deref() {
                Some("oom") => oom_event = true,
                Some("die" | "died") => {
                    // The event carries the exit code (Docker and Podman both); inspect may not yet.
                    let code = event.actor.and_then(|a| a.attributes).and_then(|a| a.get("exitCode")?.parse().ok());
                    let seen = Seen { oom_event, code, limit };
                    break describe_exit(&docker, &name, seen).await;
                }
                _ => {}
            },
            Some(Err(_)) | None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match docker.inspect_container(&name, None::<InspectContainerOptions>).await {
                    Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {
                        let now = crate::base::clock::unix_now();
                        events = events_since(&docker, &name, now);
                    }
                    Ok(_) => break describe_exit(&docker, &name, Seen { oom_event, code: None, limit }).await,
                    Err(e) => break Exit { reason: format!("container engine lost: {e}"), failed: true },
                }
            }
        }
    };
    let _ = report.send(exit);
}

/// What the watcher knew when the container ended.
struct Seen {
    oom_event: bool,
    /// From the `die` event.
    code: Option<i64>,
    /// The memory limit, read when the container started.
    limit: Option<i64>,
}

/// Docker reports OOM kills (an `oom` event, `State.OOMKilled`); Podman on cgroup v1 does not,
/// so a SIGKILL (exit 137) under a memory limit is reported as a likely OOM kill.
async fn describe_exit(docker: &Docker, name: &str, seen: Seen) -> Exit {
    let state = docker.inspect_container(name, None::<InspectContainerOptions>).await.ok().and_then(|i| i.state);
    let code = seen.code.or(state.as_ref().and_then(|s| s.exit_code));
    let limit = seen.limit;
    let code_text = code.map_or("?".to_string(), |c| c.to_string());
    if seen.oom_event || state.as_ref().and_then(|s| s.oom_killed) == Some(true) {
        return Exit { reason: format!("container OOM-killed (exit code {code_text})"), failed: true };
    }
    match (code, limit) {
        (Some(137), Some(limit)) => Exit {
            reason: format!(
                "container killed (exit code 137) at its {} MiB memory limit: likely OOM-killed",
                limit >> 20
            ),
            failed: true,
        },
        _ => Exit { reason: format!("container stopped outside warden (exit code {code_text})"), failed: false },
    }
}

async fn create(docker: &Docker, spec: &ContainerSpec, image: &str) -> Result<(), StartFailure> {
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        bindings
            .entry(format!("{}/tcp", p.container_port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_default()
            .push(PortBinding { host_ip: p.host_ip.clone(), host_port: Some(p.host_port.to_string()) });
    }
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: Some(bindings.keys().cloned().collect()),
        host_config: Some(HostConfig { port_bindings: Some(bindings), ..Default::default() }),
        ..Default::default()
    };
    let options = CreateContainerOptions { name: Some(spec.container.clone()), ..Default::default() };
    docker.create_container(Some(options), body).await.map_err(|e| {
        let reason = format!("cannot create container {} from image {image}: {e}", spec.container);
        // No such image: nothing is pulled from a registry, so it will not appear by retrying.
        if is_not_found(&e) {
            StartFailure::permanent(reason)
        } else {
            StartFailure::transient(reason)
        }
    })?;
    Ok(())
}

impl ContainerHandle {
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn meter(&self) -> super::Meter {
        super::Meter::Container { docker: self.docker.clone(), name: self.name.clone() }
    }

    /// Resolves when the container stops behind warden's back; says how. Cancel-safe.
    pub async fn exited(&mut self) -> Exit {
        match (&mut self.exit).await {
            Ok(exit) => exit,
            // The watcher was aborted: only when the handle is going away.
            Err(_) => std::future::pending().await,
        }
    }

    /// The container's own HEALTHCHECK says healthy.
    pub async fn docker_healthy(&self) -> bool {
        let info = self.docker.inspect_container(&self.name, None::<InspectContainerOptions>).await;
        info.ok().and_then(|i| i.state).and_then(|s| s.health).and_then(|h| h.status) == Some(HealthStatusEnum::HEALTHY)
    }

    /// Asks the engine to stop it (SIGTERM, then SIGKILL after `timeout`); bounded.
    pub async fn stop(self, timeout: Duration) -> Result<(), String> {
        let options = StopContainerOptions { t: Some(timeout.as_secs().max(1) as i32), ..Default::default() };
        let call = self.docker.stop_container(&self.name, Some(options));
        match tokio::time::timeout(timeout + Duration::from_secs(10), call).await {
            Ok(Ok(())) => Ok(()),
            // 304: already stopped.
            Ok(Err(DockerError::DockerResponseServerError { status_code: 304, .. })) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot stop container {}: {e}", self.name)),
            Err(_) => Err(format!("container {} did not stop in time", self.name)),
        }
    }
}

pub async fn memory_of(docker: &Docker, name: &str) -> Option<u64> {
    let options = StatsOptions { stream: false, one_shot: true };
    let stats =
        tokio::time::timeout(Duration::from_secs(5), docker.stats(name, Some(options)).next()).await.ok()??.ok()?;
    let mem = stats.memory_stats?;
    let usage = mem.usage?;
    let stats = mem.stats.unwrap_or_default();
    // cgroup v2 names it inactive_file; v1 total_inactive_file.
    let inactive = stats.get("inactive_file").or_else(|| stats.get("total_inactive_file")).copied().unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}
