//! One cgroup per service process, so that every process it starts can be found and killed:
//! a process group is left by anything that calls `setsid` (a daemonizing wrapper, a double
//! fork), and outlives its leader; a cgroup holds every descendant whatever it does.
//!
//! warden uses the cgroup v1 `pids` hierarchy when it is mounted (it exists only to count
//! processes, so joining it changes nothing else about a service), else the cgroup v2 unified
//! hierarchy, under its own cgroup: `…/warden-<id>/<service>`, `<id>` naming the state dir.
//! Where neither is writable (not root, no delegation), services run without one and only
//! their process group is tracked; `available()` says which.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A service's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

/// The hierarchy to use and warden's own cgroup in it.
fn base() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let find = |controller: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            (list.split(',').any(|c| c == controller)).then(|| path.trim_start_matches('/').to_string())
        })
    };
    if let Some(path) = find("pids") {
        let root = Path::new("/sys/fs/cgroup/pids");
        if root.join("cgroup.procs").exists() {
            return Some(root.join(path));
        }
    }
    // cgroup v2: the "0::" line; mounted at /sys/fs/cgroup (pure v2) or …/unified (hybrid).
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/').to_string();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|root| root.join("cgroup.controllers").exists())
        .map(|root| root.join(path))
}

/// The folder of this warden's service cgroups: one per state dir, so two wardens on other
/// state dirs never touch each other's.
fn parent(state_dir: &Path) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state_dir.hash(&mut h);
    Some(base()?.join(format!("warden-{:016x}", h.finish())))
}

/// Whether services get cgroups here (checked once at start-up, for the log). Leaves nothing
/// behind: the folder is made again by the first service that needs it.
pub fn available(state_dir: &Path) -> bool {
    let Some(p) = parent(state_dir) else { return false };
    let made = std::fs::create_dir_all(&p).is_ok();
    let _ = std::fs::remove_dir(&p);
    made
}

impl Cgroup {
    /// Creates (or reuses, emptied) the service's cgroup; None where cgroups are not writable.
    pub fn create(state_dir: &Path, service: &str) -> Option<Cgroup> {
        let dir = parent(state_dir)?.join(service);
        std::fs::create_dir_all(&dir).ok()?;
        let cgroup = Cgroup { dir };
        cgroup.kill_all(Duration::from_secs(2));
        Some(cgroup)
    }

    /// A cgroup recorded by an earlier run (its pidfile), if it still exists and is one of
    /// warden's service cgroups: never kill what a path in a damaged pidfile merely names.
    pub fn recorded(dir: &str) -> Option<Cgroup> {
        let dir = PathBuf::from(dir);
        let parent = dir.parent()?.file_name()?.to_str()?;
        (parent.starts_with("warden-") && dir.join("cgroup.procs").exists()).then_some(Cgroup { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`, opened for the child to write "0" to between fork and exec (that write
    /// is async-signal-safe; opening the file there would not be).
    pub fn procs_for_child(&self) -> std::io::Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs"))?.into())
    }

    /// Moves the calling process into the cgroup. Only for a `pre_exec` hook: `fd` comes from
    /// [`Cgroup::procs_for_child`].
    pub fn join_from_child(fd: &OwnedFd) -> std::io::Result<()> {
        // SAFETY: write(2) on a valid fd with a valid buffer; async-signal-safe.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Every process in it now.
    pub fn pids(&self) -> Vec<i32> {
        let text = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Sends `sig` to every process in it.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// SIGKILLs every process in it until none is left (a process may fork while being
    /// killed), waiting at most `within`; true once empty.
    pub fn kill_all(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left and removes the cgroup (and warden's folder of them, once empty).
    pub fn remove(&self) {
        self.kill_all(Duration::from_secs(2));
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_process_that_leaves_its_session() {
        let state = tempfile::tempdir().unwrap();
        let Some(cg) = Cgroup::create(state.path(), "t") else {
            eprintln!("no writable cgroup here: nothing to test");
            return;
        };
        let fd = cg.procs_for_child().unwrap();
        let mut cmd = std::process::Command::new("sh");
        // The grandchild leaves the session and the process group; the cgroup still holds it.
        cmd.args(["-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"]).stdout(std::process::Stdio::piped());
        // SAFETY: the hook only calls write(2).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || Cgroup::join_from_child(&fd));
        }
        let out = cmd.output().unwrap();
        let grandchild: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(cg.pids().contains(&grandchild), "{:?} holds {grandchild}", cg.pids());
        assert!(cg.kill_all(Duration::from_secs(5)));
        cg.remove();
        assert!(!cg.path().exists());
        assert!(Cgroup::recorded("/tmp/not-a-cgroup/x").is_none());
    }
}
