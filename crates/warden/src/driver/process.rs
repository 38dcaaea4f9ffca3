//! `kind = "process"`: a command run in its own process group and, where cgroups are writable,
//! its own cgroup (`cgroup.rs`), stopped as a whole: every descendant, wrappers' children and
//! double forks included.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;

use super::cgroup::Cgroup;
use super::logs::ServiceLog;
use super::orphans;
use super::StartFailure;
use crate::config::ProcessSpec;

/// A running service process. Dropping it kills the whole group, so an abandoned start (or a
/// panic) can never leave processes behind.
pub struct ProcessHandle {
    child: Child,
    pid: u32,
    port: u16,
    stop_command: Option<Vec<String>>,
    pidfile: PathBuf,
    /// Every process the service started, whatever its process group (None: no cgroups here).
    cgroup: Option<Cgroup>,
    /// The leader has been reaped and its group cleaned up.
    reaped: bool,
}

pub struct SpawnRequest<'a> {
    pub service: &'a str,
    pub spec: &'a ProcessSpec,
    pub port: u16,
    /// Not inherited from warden's environment: the variables its keys come from.
    pub secret_env: &'a [String],
    pub state_dir: &'a Path,
    pub log: &'a ServiceLog,
    pub tasks: &'a TaskTracker,
}

fn substitute(text: &str, port: u16, pid: Option<u32>) -> String {
    let s = text.replace("${PORT}", &port.to_string());
    match pid {
        Some(pid) => s.replace("${PID}", &pid.to_string()),
        None => s,
    }
}

/// Spawns the command in a process group of its own, its output going to the service log.
pub fn spawn(req: SpawnRequest<'_>) -> Result<ProcessHandle, StartFailure> {
    let argv: Vec<String> = req.spec.command.iter().map(|a| substitute(a, req.port, None)).collect();
    let cwd = req.spec.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    let program = if argv[0].contains('/') { cwd.join(&argv[0]) } else { PathBuf::from(&argv[0]) };
    req.log.begin_run(&format!("starting {} on port {}", argv.join(" "), req.port));

    let mut cmd = Command::new(&program);
    // A local server has no business with the keys warden holds for clients and hosted APIs;
    // the service's own `env` may still set any of them.
    for name in req.secret_env {
        cmd.env_remove(name);
    }
    cmd.args(&argv[1..])
        .envs(req.spec.env.iter().map(|(k, v)| (k, substitute(v, req.port, None))))
        .env("PORT", req.port.to_string())
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cgroup = Cgroup::create(req.state_dir, req.service);
    let procs = match &cgroup {
        Some(cg) => Some(
            cg.procs_for_child()
                .map_err(|e| StartFailure::transient(format!("cannot use cgroup {}: {e}", cg.path().display())))?,
        ),
        None => None,
    };
    // SAFETY: prctl and write are async-signal-safe. If warden dies without cleaning up, the
    // kernel kills the service's leader; the pidfile lets the next warden stop the rest of its
    // group and cgroup.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = &procs {
                Cgroup::join_from_child(fd)?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            return Err(spawn_failure(&argv[0], &program, e));
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    for pipe in [child.stdout.take().map(boxed), child.stderr.take().map(boxed)].into_iter().flatten() {
        req.tasks.spawn(req.log.clone().pump(pipe));
    }
    let pidfile = orphans::pidfile(req.state_dir, req.service);
    orphans::record(&pidfile, pid, cgroup.as_ref());
    Ok(ProcessHandle {
        child,
        pid,
        port: req.port,
        stop_command: req.spec.stop_command.clone(),
        pidfile,
        cgroup,
        reaped: false,
    })
}

/// Why the program could not run; a missing program or a permission will not fix itself.
fn spawn_failure(name: &str, program: &std::path::Path, e: std::io::Error) -> StartFailure {
    match e.kind() {
        std::io::ErrorKind::NotFound => StartFailure::permanent(format!(
            "cannot run {name}: no such program ({} not found; check the service's command, cwd and PATH)",
            program.display()
        )),
        std::io::ErrorKind::PermissionDenied => {
            StartFailure::permanent(format!("cannot run {name}: permission denied ({})", program.display()))
        }
        _ => StartFailure::transient(format!("cannot run {name}: {e}")),
    }
}

fn boxed(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    Box::new(pipe)
}

impl ProcessHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every process the service started.
    pub fn tree(&self) -> super::ProcessTree {
        super::ProcessTree { pgid: self.pid, cgroup: self.cgroup.clone() }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves when the service ends on its own; describes how.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        self.cleanup_group();
        status.map_or_else(|e| e.to_string(), |s| s.to_string())
    }

    /// stop_command or SIGTERM to the group; SIGKILL after `timeout`; always reaped.
    pub async fn stop(mut self, timeout: Duration, log: &ServiceLog) {
        match &self.stop_command {
            Some(stop) => {
                let argv: Vec<String> = stop.iter().map(|a| substitute(a, self.port, Some(self.pid))).collect();
                let run = Command::new(&argv[0]).args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true).output();
                match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(out)) if out.status.success() => {}
                    Ok(Ok(out)) => log.note(&format!("stop_command failed ({})", out.status)),
                    Ok(Err(e)) => log.note(&format!("stop_command could not run: {e}")),
                    Err(_) => log.note("stop_command timed out"),
                }
            }
            None => self.signal(Signal::SIGTERM),
        }
        if tokio::time::timeout(timeout, self.child.wait()).await.is_err() {
            log.note(&format!("still running {timeout:?} after the stop request; sending SIGKILL"));
            self.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        }
        self.cleanup_group();
    }

    /// Signals the process group and everything else in the service's cgroup (processes that
    /// left the group with setsid).
    fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), sig);
        if let Some(cg) = &self.cgroup {
            cg.signal(sig);
        }
    }

    /// After the leader is gone: kill whatever else is left in its group and cgroup, remove
    /// the cgroup, forget the pidfile.
    fn cleanup_group(&mut self) {
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            if let Some(cg) = &self.cgroup {
                cg.remove();
            }
            orphans::forget(&self.pidfile);
            self.reaped = true;
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(Signal::SIGKILL);
            // Reap in the background so no zombie is left; tokio does this for dropped children.
            let _ = self.child.start_kill();
            if let Some(cg) = &self.cgroup {
                cg.remove();
            }
            orphans::forget(&self.pidfile);
        }
    }
}

/// A port the OS says is free now. Another program could take it before the service binds it;
/// the start then fails and the next request tries again with a fresh port.
pub fn free_port() -> Option<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}
