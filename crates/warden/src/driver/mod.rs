//! Drivers are the only code that touches the outside world for a service: processes,
//! containers, sockets, health endpoints. The service owner calls them; the HTTP layer never does.

pub mod cgroup;
pub mod container;
pub mod health;
pub mod limits;
pub mod logs;
pub mod models;
pub mod nvml;
pub mod orphans;
pub mod preflight;
pub mod process;
pub mod procfs;

use std::path::Path;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::base::http::HttpClient;
use crate::config::{Health, ServiceConfig, ServiceKind};
use container::ContainerHandle;
use logs::ServiceLog;
use process::{ProcessHandle, SpawnRequest};

/// Why a start did not produce a ready service.
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub reason: String,
    /// The last lines the service wrote, for the error the held requests get.
    pub log_tail: Vec<String>,
    /// Retrying cannot help until the config or the machine changes: no such program, no
    /// permission, no such image, a service too big to ever fit.
    pub permanent: bool,
}

impl StartFailure {
    /// A failure that may pass (a crash, a timeout, no room yet).
    pub fn transient(reason: impl Into<String>) -> Self {
        StartFailure { reason: reason.into(), log_tail: Vec::new(), permanent: false }
    }

    /// A failure that will repeat until the config or the machine changes.
    pub fn permanent(reason: impl Into<String>) -> Self {
        StartFailure { reason: reason.into(), log_tail: Vec::new(), permanent: true }
    }

    fn with_log(mut self, log: &ServiceLog) -> Self {
        self.log_tail = log.tail(20);
        self
    }
}

/// How a running service ended on its own.
#[derive(Debug, Clone)]
pub struct Exit {
    pub reason: String,
    /// A crash or kill (state `failed`), as opposed to a clean stop by someone else.
    pub failed: bool,
}

/// A started service, whatever runs it.
pub enum Running {
    Process(ProcessHandle),
    Container(ContainerHandle),
    /// A hosted API: nothing runs here.
    Remote,
}

/// The processes of a service: its process group, and every member of its cgroup (which also
/// holds descendants that left the group).
#[derive(Clone, Debug)]
pub struct ProcessTree {
    pub pgid: u32,
    pub cgroup: Option<cgroup::Cgroup>,
}

impl ProcessTree {
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = procfs::group_pids(self.pgid);
        if let Some(cg) = &self.cgroup {
            pids.extend(cg.pids().into_iter().filter_map(|p| u32::try_from(p).ok()));
            pids.sort_unstable();
            pids.dedup();
        }
        pids
    }
}

/// Measures a running service's memory; cheap to clone out of a lock and await elsewhere.
#[derive(Clone, Debug)]
pub enum Meter {
    /// Resident memory of the service's processes.
    Processes(ProcessTree),
    /// GPU memory (NVML) of the service's processes: for `device = "gpu"` services.
    GpuProcesses(ProcessTree),
    /// Container stats: usage minus inactive file cache.
    Container { docker: bollard::Docker, name: String },
}

impl Meter {
    pub async fn memory_bytes(&self) -> Option<u64> {
        match self {
            Meter::Processes(tree) => Some(procfs::rss_bytes(&tree.pids())),
            Meter::GpuProcesses(tree) => {
                let per_pid = nvml::process_memory()?;
                let pids = tree.pids();
                Some(per_pid.iter().filter(|(pid, _)| pids.contains(pid)).map(|(_, b)| b).sum())
            }
            Meter::Container { docker, name } => container::memory_of(docker, name).await,
        }
    }
}

pub struct StartContext<'a> {
    pub config: &'a ServiceConfig,
    /// For processes: the port picked for this run.
    pub port: u16,
    /// Environment variables a process does not inherit from warden (they hold keys).
    pub secret_env: &'a [String],
    pub state_dir: &'a Path,
    pub log: &'a ServiceLog,
    pub client: &'a HttpClient,
    pub tasks: &'a TaskTracker,
}

/// Starts the service and waits until it is healthy (the caller bounds the wait). On failure
/// whatever was started is dropped, which for a process kills its group.
pub async fn start(ctx: StartContext<'_>) -> Result<Running, StartFailure> {
    let fail = |reason: String| StartFailure::transient(reason).with_log(ctx.log);
    let (mut running, upstream) = match &ctx.config.kind {
        ServiceKind::Process(spec) => {
            let upstream = format!("http://127.0.0.1:{}", ctx.port);
            // Something already answering there would pass the health check in the service's
            // place and be sent its requests, while the service itself failed to bind.
            if health::port_open(&upstream).await {
                let why = format!(
                    "port {} is already in use by a program warden did not start; stop it, or give this service another port (port = 0 picks a free one)",
                    ctx.port
                );
                ctx.log.note(&why);
                return Err(fail(why));
            }
            let req = SpawnRequest {
                service: &ctx.config.name,
                spec,
                port: ctx.port,
                secret_env: ctx.secret_env,
                state_dir: ctx.state_dir,
                log: ctx.log,
                tasks: ctx.tasks,
            };
            let spawned = process::spawn(req).map_err(|f| f.with_log(ctx.log))?;
            (Running::Process(spawned), upstream)
        }
        // Always up and not ours to probe: a hosted API's health is its answers.
        ServiceKind::Remote(_) => return Ok(Running::Remote),
        ServiceKind::Container(spec) => {
            ctx.log.begin_run(&format!("starting container {}", spec.container));
            let handle = container::start(spec).await.map_err(|f| {
                ctx.log.note(&f.reason);
                f.with_log(ctx.log)
            })?;
            (Running::Container(handle), ctx.config.upstream.clone().unwrap_or_default())
        }
    };
    // A health path is asked only once the port accepts (cheap connects until then).
    let mut listening = !matches!(ctx.config.health, Health::Path(_));
    loop {
        if !listening {
            listening = health::port_open(&upstream).await;
        }
        if listening && running.probe(ctx.client, &ctx.config.health, &upstream).await {
            return Ok(running);
        }
        let every = match (&running, &ctx.config.health) {
            (Running::Container(_), Health::Docker) => health::ENGINE_EVERY,
            (_, Health::Path(_)) if listening => health::HEALTH_EVERY,
            _ => health::PORT_EVERY,
        };
        tokio::select! {
            exit = running.exited() => {
                // Let the log pumps catch the last lines before reporting them.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(fail(format!("exited before becoming healthy ({})", exit.reason)));
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Process(p) => Some(p.pid()),
            Running::Container(c) => c.pid(),
            Running::Remote => None,
        }
    }

    /// How to measure it: a GPU service by its GPU memory, anything else by resident memory.
    pub fn meter(&self, device: crate::config::Device) -> Option<Meter> {
        match self {
            Running::Process(p) if device == crate::config::Device::Gpu => Some(Meter::GpuProcesses(p.tree())),
            Running::Process(p) => Some(Meter::Processes(p.tree())),
            Running::Container(c) => Some(c.meter()),
            Running::Remote => None,
        }
    }

    async fn probe(&self, client: &HttpClient, health: &Health, upstream: &str) -> bool {
        match (self, health) {
            (Running::Container(c), Health::Docker) => c.docker_healthy().await,
            _ => health::probe(client, health, upstream).await,
        }
    }

    /// Resolves when the service ends on its own; says how.
    pub async fn exited(&mut self) -> Exit {
        match self {
            // A managed process has no business ending by itself: always a failure.
            Running::Process(p) => Exit { reason: p.exited().await, failed: true },
            Running::Container(c) => c.exited().await,
            Running::Remote => std::future::pending().await,
        }
    }

    /// Stops it, bounded by `timeout` plus the driver's own margin.
    pub async fn stop(self, timeout: Duration, log: &ServiceLog) {
        match self {
            Running::Process(p) => p.stop(timeout, log).await,
            Running::Container(c) => {
                if let Err(e) = c.stop(timeout).await {
                    log.note(&e);
                }
            }
            Running::Remote => {}
        }
    }
}
