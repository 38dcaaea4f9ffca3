//! Pidfiles under `state_dir/run`: what a previous warden started, so a restart after a crash
//! stops it instead of leaving it running unmanaged.

use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::procfs::read_stat;

pub fn pidfile(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("run").join(format!("{service}.pid"))
}

/// Records `pid` (a group leader) with its start time, which guards against pid reuse.
pub fn record(path: &Path, pid: u32) {
    if let Some(stat) = read_stat(pid) {
        let _ = std::fs::write(path, format!("{pid} {}\n", stat.start_time));
    }
}

pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Kills the process groups recorded by a previous run that are still alive; returns their names.
pub fn stop_leftovers(state_dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    let Ok(dir) = std::fs::read_dir(state_dir.join("run")) else { return stopped };
    for entry in dir.flatten() {
        let path = entry.path();
        let Some(service) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if let Some((pid, start)) = std::fs::read_to_string(&path).ok().and_then(|t| parse(&t)) {
            let alive_same = read_stat(pid).is_some_and(|s| s.start_time == start && s.pgrp == pid);
            if alive_same && killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                stopped.push(service);
            }
        }
        forget(&path);
    }
    stopped
}

fn parse(text: &str) -> Option<(u32, u64)> {
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}
