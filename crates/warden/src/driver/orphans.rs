//! Pidfiles under `state_dir/run`: what a previous warden started, so a restart after a crash
//! stops all of it instead of leaving it running unmanaged: the process group (whether or not
//! its leader still lives) and the service's cgroup (every descendant, even those that left the
//! group).

use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::procfs::{group_pids, read_stat};

pub fn pidfile(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("run").join(format!("{service}.pid"))
}

/// Records `pid` (a group leader) with its start time, which guards against pid reuse, and
/// the service's cgroup if it has one.
pub fn record(path: &Path, pid: u32, cgroup: Option<&Cgroup>) {
    if let Some(stat) = read_stat(pid) {
        let cgroup = cgroup.map_or(String::new(), |c| format!(" {}", c.path().display()));
        let _ = std::fs::write(path, format!("{pid} {}{cgroup}\n", stat.start_time));
    }
}

pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Kills what a previous run's services left alive; returns the names of those that had any.
///
/// A group whose leader is gone is still killed: a process group id cannot be reused while any
/// member lives, so its members are the service's (a wrapper's children after kill -9).
pub fn stop_leftovers(state_dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    let Ok(dir) = std::fs::read_dir(state_dir.join("run")) else { return stopped };
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(service) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if let Some(left) = std::fs::read_to_string(&path).ok().and_then(|t| parse(&t)) {
            if stop(&left) {
                stopped.push(service);
            }
        }
        forget(&path);
    }
    stopped
}

/// What a pidfile says a service left.
struct Left {
    pid: u32,
    start_time: u64,
    cgroup: Option<String>,
}

fn stop(left: &Left) -> bool {
    let leader = read_stat(left.pid);
    // The leader's pid, alive but started at another time: reused by someone else, and (by the
    // rule above) our group has no members left.
    let reused = leader.as_ref().is_some_and(|s| s.start_time != left.start_time);
    let mut any = false;
    if !reused && !group_pids(left.pid).is_empty() {
        any |= killpg(Pid::from_raw(left.pid as i32), Signal::SIGKILL).is_ok();
    }
    if let Some(cg) = left.cgroup.as_deref().and_then(Cgroup::recorded) {
        any |= !cg.pids().is_empty();
        cg.remove();
    }
    any
}

fn parse(text: &str) -> Option<Left> {
    let mut it = text.trim_end().splitn(3, ' ');
    let (pid, start_time) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    Some(Left { pid, start_time, cgroup: it.next().map(str::to_string) })
}
