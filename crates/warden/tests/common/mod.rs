//! Test harness: runs the real `warden` binary on port 0 with a config written to a temp dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn warden_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warden"))
}

/// The fake backend, built next to warden. `cargo test -p warden` does not build other
/// packages' binaries, so when it is missing the first test that needs it builds it (cargo's
/// own lock keeps parallel test binaries from building it twice at once).
pub fn fake_backend() -> String {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let path = warden_bin().with_file_name("fake-backend");
        // Built already (`cargo test --workspace` builds it): a build of it alone would resolve
        // features apart from the workspace and rebuild it for nothing.
        if path.exists() {
            return Ok(path);
        }
        // target/<profile>/warden → the target dir and the profile this test binary was built in.
        let profile_dir = warden_bin().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "-p", "fake-backend", "--target-dir"]).arg(target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cargo.arg("--release");
        }
        let out =
            cargo.current_dir(env!("CARGO_MANIFEST_DIR")).output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("building fake-backend failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(path)
    });
    match built {
        Ok(path) => path.display().to_string(),
        Err(e) => panic!("{e}"),
    }
}

/// The config `Warden::start` writes: a free port, a state dir in the temp dir, then `rest`.
fn config_text(rest: &str, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n{server_extra}\n{}",
        rest.replace("FAKE", &fake_backend())
    )
}

pub struct Warden {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    /// The admin token, when the config sets one; the helpers send it.
    token: Option<String>,
}

impl Warden {
    /// Starts warden with `[server]` pointing at a free port and a temp state dir, plus `rest`
    /// (`FAKE` in it is replaced by the fake backend's path).
    pub fn start(rest: &str) -> Warden {
        Self::start_with_server(rest, "")
    }

    pub fn start_with_server(rest: &str, server_extra: &str) -> Warden {
        Self::start_inner(rest, server_extra, false)
    }

    /// Like `start`, but warden runs in the temp dir's parent and is given the config by a
    /// relative path, as a user runs `warden serve --config examples/warden.toml`.
    pub fn start_relative(rest: &str) -> Warden {
        Self::start_inner(rest, "", true)
    }

    fn start_inner(rest: &str, server_extra: &str, relative: bool) -> Warden {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, config_text(rest, server_extra)).unwrap();
        let (child, base, log) = if relative {
            let parent = dir.path().parent().unwrap().to_path_buf();
            let rel = path.strip_prefix(&parent).unwrap().to_path_buf();
            spawn_warden_in(&rel, Some(&parent))
        } else {
            spawn_warden(&path)
        };
        let token = server_extra.split("admin_token = \"").nth(1).and_then(|t| t.split('"').next()).map(str::to_string);
        Warden { child, base, dir, log, token }
    }

    /// Like `start`, but warden (and so every service it starts) runs in the cgroup `cgroup`
    /// (a folder of a cgroup hierarchy): it joins it before it execs.
    pub fn start_in_cgroup(rest: &str, cgroup: &std::path::Path) -> Warden {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\n{}",
            rest.replace("FAKE", &fake_backend())
        );
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, config).unwrap();
        let script = format!(
            "echo $$ > '{}' && exec '{}' serve --config '{}'",
            cgroup.join("cgroup.procs").display(),
            warden_bin().display(),
            path.display()
        );
        let mut command = Command::new("sh");
        command.args(["-c", &script]);
        let (child, base, log) = spawn_command(command);
        Warden { child, base, dir, log, token: None }
    }

    /// Writes a new config file in this warden's place (same `[server]` head as `start`), for
    /// a reload to read.
    pub fn rewrite_config(&self, rest: &str, server_extra: &str) {
        std::fs::write(self.dir.path().join("warden.toml"), config_text(rest, server_extra)).unwrap();
    }

    /// Stops this warden (SIGTERM) and starts a new one on the same config and state dir.
    pub fn restart(&mut self) {
        assert!(self.terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
        let (child, base, log) = spawn_warden(&self.dir.path().join("warden.toml"));
        (self.child, self.base, self.log) = (child, base, log);
    }

    /// SIGKILLs this warden (no cleanup of any kind), then starts a new one on the same config
    /// and state dir, as a user would after a crash.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, base, log) = spawn_warden(&self.dir.path().join("warden.toml"));
        (self.child, self.base, self.log) = (child, base, log);
    }

    /// SIGKILLs this warden (no cleanup of any kind), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a second `warden serve` on this warden's config and state dir; returns its exit
    /// status and output, or None if it was still running after `within` (then it is killed).
    pub fn serve_again(&self, within: Duration) -> Option<(ExitStatus, String)> {
        let mut child = Command::new(warden_bin())
            .args(["serve", "--config"])
            .arg(self.dir.path().join("warden.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let exited = wait_until(within, || child.try_wait().unwrap().is_some());
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        exited.then(|| (out.status, String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until the log holds `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(needle))
    }

    /// SIGTERM, then wait (bounded) for exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn get(&self, path: &str) -> Value {
        let mut req = reqwest::Client::new().get(self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new().post(self.url(path)).json(&body).send().await.unwrap()
    }

    /// The service's entry in `GET /admin/services`.
    pub async fn service(&self, name: &str) -> Value {
        let all = self.get("/admin/services").await;
        all.as_array().unwrap().iter().find(|s| s["name"] == name).cloned().expect("service listed")
    }

    /// Waits (bounded) until the service is in `state`.
    pub async fn wait_state(&self, name: &str, state: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.service(name).await["state"] == state {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

/// Starts `warden serve` on a config file and waits for its address.
fn spawn_warden(path: &std::path::Path) -> (Child, String, Arc<Mutex<String>>) {
    spawn_warden_in(path, None)
}

fn spawn_warden_in(path: &std::path::Path, cwd: Option<&std::path::Path>) -> (Child, String, Arc<Mutex<String>>) {
    let mut command = Command::new(warden_bin());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command.args(["serve", "--config"]).arg(path);
    spawn_command(command)
}

/// Starts `command` (a `warden serve`, maybe behind a wrapper) and waits for its address.
fn spawn_command(mut command: Command) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = command
        .env("WARDEN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_string());
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        panic!("warden did not start; its log:\n{}", log.lock().unwrap());
    });
    (child, format!("http://{addr}"), log)
}

impl Drop for Warden {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate(Duration::from_secs(10));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Async form of [`wait_until`], for conditions that call warden's API.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond().await
}

/// Fetches a value until `done` holds (bounded); returns the last one fetched either way.
pub async fn fetch_until<F, Fut>(within: Duration, mut fetch: F, done: impl Fn(&Value) -> bool) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = Instant::now() + within;
    loop {
        let v = fetch().await;
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; count it as gone since it runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

pub fn chat(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// The real llama-server and a Python with `gguf`, as `scripts/test` provides them.
pub struct Llama {
    pub server: String,
    pub python: String,
}

pub fn llama() -> Llama {
    let get = |var: &str| {
        std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run these tests through scripts/test"))
    };
    Llama { server: get("WARDEN_LLAMA_SERVER"), python: get("WARDEN_TEST_PYTHON") }
}

impl Llama {
    /// Generates a tiny random-weight GGUF model `dir/NAME.gguf` of the given width.
    pub fn make_model(&self, dir: &std::path::Path, name: &str, width: u32) -> PathBuf {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-tiny-gguf.py");
        let out = dir.join(format!("{name}.gguf"));
        let status = Command::new(&self.python)
            .arg(script)
            .arg(&out)
            .args(["--width", &width.to_string(), "--ff", &(width * 4).to_string(), "--name", name])
            .status()
            .unwrap();
        assert!(status.success(), "generating {name}.gguf failed");
        out
    }

    /// A `[services.NAME]` block that runs llama-server on `model` (a 512-token context, one
    /// thread, `args` added), health-checked, serving `models`; `more` ends the block as written.
    pub fn service(&self, name: &str, model: &std::path::Path, args: &[&str], models: &[&str], more: &str) -> String {
        let quoted = |items: &[&str]| items.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        let base =
            [self.server.as_str(), "-m", &model.display().to_string(), "--port", "${PORT}", "-c", "512", "-t", "1"]
                .map(|a| format!("{a:?}"))
                .join(", ");
        let args = if args.is_empty() { String::new() } else { format!(", {}", quoted(args)) };
        format!(
            "\n[services.{name}]\nkind = \"process\"\ncommand = [{base}{args}]\nhealth = \"/health\"\n\
             start_timeout = \"60s\"\nmodels = [{models}]\n{more}\n",
            models = quoted(models)
        )
    }
}

/// Live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            let rest = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && fields.first() != Some(&"Z") {
                kids.push(child);
            }
        }
    }
    kids
}

/// A fake backend playing the hosted API; killed on drop.
pub struct Upstream(Child, pub u16);

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_with(&[])
    }

    /// With more fake-backend arguments (`--tls-cert`, `--answer-status`, …).
    pub fn start_with(args: &[&str]) -> Upstream {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(fake_backend())
            .args(["--port", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
        Upstream(child, port)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A memory cgroup with a limit, made under this test process's own, for running warden under
/// real memory pressure (root only). Killed and removed when dropped.
pub struct MemoryCgroup(pub PathBuf);

impl MemoryCgroup {
    pub fn new(name: &str, limit: u64) -> Result<MemoryCgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let (root, rel, v2) = match own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
        }) {
            Some(path) => ("/sys/fs/cgroup/memory", path, false),
            None => {
                ("/sys/fs/cgroup", own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").to_string(), true)
            }
        };
        let dir = PathBuf::from(root).join(rel.trim_start_matches('/')).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        std::fs::write(dir.join(file), limit.to_string())
            .map_err(|e| format!("cannot limit {}: {e}", dir.display()))?;
        Ok(MemoryCgroup(dir))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let procs = self.0.join("cgroup.procs");
        let _ = wait_until(Duration::from_secs(5), || {
            let pids = std::fs::read_to_string(&procs).unwrap_or_default();
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            pids.trim().is_empty()
        });
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Every `.rs` file under `dir`, recursively (the source scans of `architecture.rs` and
/// `openapi.rs`).
pub fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A real `redis-server` on a unix socket in a temp dir (no port to race for), killed on drop.
/// `WARDEN_REDIS_SERVER` names the binary (default: `redis-server` on PATH, Debian's package).
pub struct Redis {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Append-only file on: what it holds survives a restart.
    aof: bool,
}

impl Redis {
    pub fn start(aof: bool) -> Redis {
        let mut r = Redis { child: None, dir: tempfile::tempdir().unwrap(), aof };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn spawn(&mut self) {
        let bin = std::env::var("WARDEN_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new(&bin)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--save", "", "--appendonly", aof, "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (scripts/test installs Debian's redis-server): {e}"));
        self.child = Some(child);
        let socket = self.socket();
        assert!(
            wait_until(Duration::from_secs(10), || std::os::unix::net::UnixStream::connect(&socket).is_ok()),
            "redis-server did not listen on {}",
            socket.display()
        );
    }

    /// Keys matching `pattern`, asked over the socket (inline command, raw reply).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("KEYS {pattern}\r\nQUIT\r\n").as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        // "*N", then "$len" and the key for each, then QUIT's "+OK".
        reply.lines().skip(1).filter(|l| !l.starts_with('$') && !l.starts_with('+')).map(str::to_string).collect()
    }

    /// Stops it (SIGTERM: with AOF on, what it holds is on disk) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
