#!/usr/bin/env python3
"""warden's benchmark suite: measures side by side in one run and writes BENCHMARKS.md.

Run through bench/run (it installs the tools and builds release binaries). Every figure is
written with the command, load, duration, machine and date that produced it.
"""
import argparse
import atexit
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}
# LiteLLM's proxy refuses to start without a master key; every target gets the same header.
KEY = "sk-warden-bench"
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPAWNED = []


def spawn(cmd, **kw):
    """Starts a process in a session of its own; every one is killed when the run ends."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    SPAWNED.append(p)
    return p


# SIGTERM/SIGINT become a normal exit, so the cleanup below runs then too.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# Temp dirs the bench made, removed at exit once what was spawned into them is stopped.
SCRATCH = []


def scratch(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    SCRATCH.append(d)
    return d


@atexit.register
def _cleanup():
    for p in SPAWNED:
        kill(p, wait=5)
    for d in SCRATCH:
        shutil.rmtree(d, ignore_errors=True)


def kill(p, sig=signal.SIGTERM, wait=15):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_http(url, within=60.0, proc=None):
    deadline = time.time() + within
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return True
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not come up")


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=HEADERS)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read(), dict(r.headers)


def proc_status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def settle(pids, within):
    """Waits until these processes (and their children) use under 5 % of a core over 200 ms,
    for at most `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(pids))
        time.sleep(0.2)
        if sum(cpu_seconds(pids)) - before < 0.01:
            return


def cpu_seconds(pids, children=True):
    """User and system CPU seconds of these processes (and, with `children`, of theirs), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                    for k in open(f"/proc/{pid}/task/{t}/children").read().split()] if children else []
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
        u, st = cpu_seconds(kids)
        user, system = user + u, system + st
    return user, system


def group_rss(pgid):
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[21]) * page
    return total


def group_alive(pgid):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


class Warden:
    """A warden on a free port with the given services config."""

    def __init__(self, bins, services_toml, extra_server=""):
        self.dir = scratch("warden-bench-")
        self.port = free_port()
        cfg = f'[server]\nlisten = "127.0.0.1:{self.port}"\nstate_dir = "state"\n{extra_server}\n{services_toml}'
        path = Path(self.dir) / "warden.toml"
        path.write_text(cfg.replace("FAKE", str(bins / "fake-backend")))
        self.log = Path(self.dir) / "warden.log"
        self.proc = spawn([str(bins / "warden"), "serve", "--config", str(path)], stdout=subprocess.DEVNULL,
                          stderr=open(self.log, "w"), env={**os.environ, "WARDEN_LOG": "warn"})
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(self.base + "/health")

    def admin(self, path, method="POST"):
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def service(self, name):
        return next(s for s in self.admin("/admin/services", "GET") if s["name"] == name)

    def close(self):
        kill(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- P1: proxy overhead

def oha(args, url, body):
    out = subprocess.run([OHA, "--no-tui", "--output-format", "json", "-m", "POST", "-H",
                          "content-type: application/json", "-H", f"authorization: Bearer {KEY}",
                          "-d", json.dumps(body)] + args + [url],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    lat = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errors = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(r.get("errorDistribution", {}).values())
    return {"p50": lat["p50"] * 1e3, "p99": lat["p99"] * 1e3, "max": r["summary"]["slowest"] * 1e3,
            "rps": r["summary"]["requestsPerSec"], "ok": ok, "errors": errors}


def mini_load(url, body, seconds, threads=4):
    """A small closed-loop load in Python, for --smoke when oha is absent."""
    lat, errors, stop = [], [0], time.time() + seconds
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    data = json.dumps(body)

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.time() < stop:
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, data, HEADERS)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors[0] += 1
                lat.append((time.perf_counter() - t0) * 1e3)
            except Exception:
                errors[0] += 1
                conn = http.client.HTTPConnection(host, int(port), timeout=10)

    with ThreadPoolExecutor(threads) as ex:
        for _ in range(threads):
            ex.submit(worker)
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=float("nan")),
            "rps": len(lat) / seconds, "ok": len(lat) - errors[0], "errors": errors[0]}


def stream_times(url, n):
    """Time to first byte and to last byte of SSE chat completions, sequential on one connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    body = json.dumps({**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    first, last = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", path, body, HEADERS)
        r = conn.getresponse()
        chunk = r.read1(65536)
        first.append((time.perf_counter() - t0) * 1e3)
        while chunk:
            chunk = r.read1(65536)
        last.append((time.perf_counter() - t0) * 1e3)
    return {"ttfb_p50": pct(first, 50), "ttfb_p99": pct(first, 99), "ttlb_p50": pct(last, 50), "ttlb_p99": pct(last, 99)}


def start_nginx(upstream_port):
    d = scratch("nginx-bench-")
    port = free_port()
    conf = f"""
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    Path(d, "nginx.conf").write_text(conf)
    p = spawn(["nginx", "-c", f"{d}/nginx.conf", "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


def start_litellm(upstream_port):
    d = scratch("litellm-bench-")
    port = free_port()
    Path(d, "config.yaml").write_text(f"""
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: none
litellm_settings:
  telemetry: false
""")
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": KEY}
    p = spawn([LITELLM, "--config", f"{d}/config.yaml", "--port", str(port), "--num_workers", "1"],
              stdout=subprocess.DEVNULL, stderr=open(f"{d}/litellm.log", "w"), env=env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", within=180, proc=p)
    return p, port


def p1(bins, a):
    upstream_port = free_port()
    up = spawn([str(bins / "fake-backend"), "--port", str(upstream_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{upstream_port}/health")
    w = Warden(bins, """
[services.bench]
kind = "process"
command = ["FAKE", "--port", "${PORT}"]
models = ["bench"]
desired = "on"
""")
    w.admin("/admin/services/bench/start")
    targets = {"direct": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
               "warden": w.base + "/v1/chat/completions"}
    procs = [up]
    # Whose CPU time is the proxy's: nginx's and LiteLLM's workers are their children; warden's
    # child is its backend, so only its own threads count.
    proxy_pids = {"warden": ([w.proc.pid], False)}
    if (bins / "bare-proxy").exists():
        # hyper alone, as warden uses it (crates/fake-backend/src/bin/bare-proxy.rs): the floor
        # under warden's figures, what the HTTP library itself costs.
        bare_port = free_port()
        bare = spawn([str(bins / "bare-proxy"), "--port", str(bare_port), "--upstream", f"127.0.0.1:{upstream_port}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{bare_port}/health")
        procs.append(bare)
        targets["hyper"] = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        proxy_pids["hyper"] = ([bare.pid], False)
    if not a.smoke and shutil.which("nginx"):
        ng, ngport = start_nginx(upstream_port)
        procs.append(ng)
        targets["nginx"] = f"http://127.0.0.1:{ngport}/v1/chat/completions"
        proxy_pids["nginx"] = ([ng.pid], True)
    if not a.smoke and LITELLM:
        try:
            ll, llport = start_litellm(upstream_port)
            procs.append(ll)
            targets["litellm"] = f"http://127.0.0.1:{llport}/v1/chat/completions"
            proxy_pids["litellm"] = ([ll.pid], True)
        except Exception as e:
            print(f"litellm skipped: {e}", file=sys.stderr)
    for url in targets.values():  # warm every path
        post(url, CHAT)
    names = list(targets)
    fixed = {n: [] for n in names}
    warden_rss = []
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # interleaved, rotated each round
        for n in order:
            if OHA:
                res = oha(["-z", f"{a.seconds}s", "-q", str(a.rate), "-c", "32", "--latency-correction"], targets[n], CHAT)
            else:
                res = mini_load(targets[n], CHAT, a.seconds)
            if n == "warden":
                warden_rss.append(proc_status(w.proc.pid, "VmRSS"))
            fixed[n].append(res)
    saturation = {}
    for n in names:
        pids, children = proxy_pids.get(n, ([], False))
        before = cpu_seconds(pids, children)
        if OHA:
            saturation[n] = oha(["-z", f"{a.seconds}s", "-c", "32"], targets[n], CHAT)
        else:
            saturation[n] = mini_load(targets[n], CHAT, a.seconds, threads=8)
        if pids:
            # Per answered request: what the proxy itself spends, in its own code and in the kernel.
            after, done = cpu_seconds(pids, children), max(saturation[n]["ok"], 1)
            saturation[n]["user_us"] = (after[0] - before[0]) * 1e6 / done
            saturation[n]["system_us"] = (after[1] - before[1]) * 1e6 / done
    # The last saturation round leaves work behind (LiteLLM's, up to a second of it): the
    # streams, one request at a time, are timed on a machine that has settled.
    settle([pid for pids, children in proxy_pids.values() for pid in pids], within=10)
    streams = {n: stream_times(targets[n], a.stream_n) for n in names if n != "litellm"}
    hwm = proc_status(w.proc.pid, "VmHWM")
    for p in procs:
        kill(p)
    w.close()

    def med(n, k):
        return statistics.median(x[k] for x in fixed[n])
    summary = {n: {k: med(n, k) for k in ("p50", "p99", "max", "rps")} | {"errors": sum(x["errors"] for x in fixed[n])}
               for n in names}
    return {"fixed": summary, "rounds": fixed, "saturation": saturation, "stream": streams,
            "warden_rss_under_load": max(warden_rss, default=0), "warden_hwm": hwm,
            "tool": "oha" if OHA else "python closed loop (smoke)"}


# ---------------------------------------------------------------- P2: wake overhead

def p2(bins, a):
    # Backends that start listening after 0 s, 0.1 s, 1 s and 10 s: the overhead must not grow
    # with the start time (probes are paced, not backed off).
    delays = [(0, a.wakes), (100, a.wakes)] if a.smoke else [(0, a.wakes), (100, a.wakes), (1000, 10), (10000, 3)]
    out = {"by_start": {}}
    for delay, n in delays:
        out["by_start"][str(delay)] = p2_fake(bins, delay, n)
    out["fake"] = out["by_start"]["0"]
    if LLAMA and not a.smoke:
        out["llama"] = p2_llama(bins, a)
    return out


def p2_fake(bins, delay_ms, wakes):
    d = scratch("wake-")
    ready = Path(d) / "ready.json"
    w = Warden(bins, f"""
[services.bench]
kind = "process"
command = ["FAKE", "--port", "${{PORT}}", "--ready-file", "{ready}", "--startup-delay-ms", "{delay_ms}"]
models = ["bench"]
start_timeout = "60s"
""")
    host, port = "127.0.0.1", w.port
    body = json.dumps(CHAT)
    # The request's own cost when warm, to subtract.
    w.admin("/admin/services/bench/start")
    warm = []
    conn = http.client.HTTPConnection(host, port)
    for _ in range(50):
        t0 = time.perf_counter_ns()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        warm.append(time.perf_counter_ns() - t0)
    conn.close()
    warm_ms = statistics.median(warm) / 1e6
    overheads, backend, noticed, released = [], [], [], []
    for _ in range(wakes):
        w.admin("/admin/services/bench/stop")
        ready.unlink(missing_ok=True)
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.connect()
        t0 = time.time_ns()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = conn.getresponse()
        t1 = time.time_ns()  # the status line and headers: the first bytes of the answer
        r.read()
        conn.close()
        rec = json.loads(ready.read_text())
        own = (rec["listen_unix_ns"] - rec["exec_unix_ns"]) / 1e6
        backend.append(own)
        overheads.append((t1 - t0) / 1e6 - own - warm_ms)
        # The backend's own clock: when it first answered /health, and when the held request came.
        st = json.loads(urllib.request.urlopen(f"{w.base}/svc/bench/stats", timeout=10).read())
        noticed.append((st["first_health_unix_ns"] - rec["listen_unix_ns"]) / 1e6)
        released.append((st["first_request_unix_ns"] - st["first_health_unix_ns"]) / 1e6)
    w.close()
    return {"median": statistics.median(overheads), "p90": pct(overheads, 90), "n": len(overheads),
            "backend_exec_to_listen_median": statistics.median(backend), "warm_request_ms": warm_ms,
            "listen_to_healthy_median": statistics.median(noticed),
            "healthy_to_request_median": statistics.median(released)}


def make_model(path, width):
    subprocess.run([PYTHON, str(ROOT / "scripts/make-tiny-gguf.py"), str(path), "--width", str(width), "--ff", str(width * 4)],
                   check=True, capture_output=True)


def p2_llama(bins, a):
    d = Path(scratch("wake-llama-"))
    model = d / "tiny.gguf"
    make_model(model, 64)
    args = ["-m", str(model), "-c", "512", "-t", "1"]
    # llama-server on its own: exec until /health answers 200, polled every millisecond.
    alone = []
    for _ in range(a.llama_wakes):
        port = free_port()
        t0 = time.time_ns()
        p = spawn([LLAMA, *args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.001)
        alone.append((time.time_ns() - t0) / 1e6)
        kill(p)
    cmd = json.dumps([LLAMA, *args, "--port", "${PORT}"])
    w = Warden(bins, f"""
[services.llama]
kind = "process"
command = {cmd}
models = ["bench"]
""")
    w.admin("/admin/services/llama/start")
    warm = []
    for _ in range(10):
        t0 = time.time_ns()
        post(w.base + "/v1/chat/completions", CHAT)
        warm.append((time.time_ns() - t0) / 1e6)
    through = []
    for _ in range(a.llama_wakes):
        w.admin("/admin/services/llama/stop")
        t0 = time.time_ns()
        post(w.base + "/v1/chat/completions", CHAT)
        through.append((time.time_ns() - t0) / 1e6)
    w.close()
    wm = statistics.median(warm)
    return {"alone_exec_to_healthy_median": statistics.median(alone), "through_warden_median": statistics.median(through),
            "warm_request_median": wm,
            "overhead_median": statistics.median(through) - statistics.median(alone) - wm,
            "overhead_p90": pct(through, 90) - statistics.median(alone) - wm, "n": len(through)}


# ---------------------------------------------------------------- P3: footprint

def p3(bins, a):
    services = "".join(f'\n[services.s{i}]\nkind = "process"\ncommand = ["FAKE", "--port", "${{PORT}}"]\nmodels = ["m{i}"]\n'
                       for i in range(a.services))
    w = Warden(bins, services)
    time.sleep(1)
    w.admin("/admin/services", "GET")
    urllib.request.urlopen(w.base + "/admin/idle-status").read()
    time.sleep(0.5)
    rss = proc_status(w.proc.pid, "VmRSS")
    w.close()
    return {"services": a.services, "idle_rss": rss}


# ---------------------------------------------------------------- P4: reclaim

def p4(bins, a):
    out = {}
    d = Path(scratch("reclaim-"))
    if LLAMA and not a.smoke:
        make_model(d / "tiny-a.gguf", 64)
        make_model(d / "tiny-b.gguf", 256)
        single = json.dumps([LLAMA, "-m", str(d / "tiny-b.gguf"), "-c", "512", "-t", "1", "--port", "${PORT}"])
        router = json.dumps([LLAMA, "--models-dir", str(d), "-c", "512", "-t", "1", "--port", "${PORT}"])
        services = f"""
[services.single]
kind = "process"
command = {single}
models = ["single"]

[services.router]
kind = "process"
api = "llamacpp-router"
command = {router}
models = ["tiny-a", "tiny-b"]
"""
        label = "llama-server"
    else:
        services = """
[services.single]
kind = "process"
command = ["FAKE", "--port", "${PORT}", "--rss-mb", "256"]
models = ["single"]

[services.router]
kind = "process"
api = "llamacpp-router"
command = ["FAKE", "--port", "${PORT}", "--model-mb", "128"]
models = ["tiny-a", "tiny-b"]
"""
        label = "fake-backend"
    w = Warden(bins, services)
    # A sleeping service: all of its process group's memory, and how long after the decision.
    post(w.base + "/v1/chat/completions", {**CHAT, "model": "single"})
    pid = w.service("single")["pid"]
    before = group_rss(pid)
    t0 = time.perf_counter()
    threading.Thread(target=w.admin, args=("/admin/services/single/stop",)).start()
    while group_alive(pid):
        time.sleep(0.0005)
    took = time.perf_counter() - t0
    out["sleep"] = {"held": before, "returned": before - group_rss(pid), "seconds": took}
    # A model unloading in router mode: its share of the group.
    post(w.base + "/v1/chat/completions", {**CHAT, "model": "tiny-a"})
    post(w.base + "/v1/chat/completions", {**CHAT, "model": "tiny-b"})
    rpid = w.service("router")["pid"]
    before = group_rss(rpid)
    t0 = time.perf_counter()
    w.admin("/admin/models/tiny-a/unload")
    took_api = time.perf_counter() - t0
    # Settled: RSS measured after the unload call returned (the server reported it unloaded).
    after = group_rss(rpid)
    alone = w.service("router")
    w.admin("/admin/models/tiny-b/unload")
    base = group_rss(rpid)  # the router with nothing loaded
    w.close()
    held_a = before - base - (after - base)  # tiny-a's part of the group before the unload
    out["unload"] = {"group_before": before, "group_after": after, "router_alone": base,
                     "held": held_a, "seconds": took_api, "loaded_after": alone["loaded_models"]}
    out["backend"] = label
    return out


# ---------------------------------------------------------------- P5: held load

def p5(bins, a):
    w = Warden(bins, f"""
[services.cold]
kind = "process"
# Slow to accept, like a Python server (backlog 5): what warden releases is paced to it.
command = ["FAKE", "--port", "${{PORT}}", "--startup-delay-ms", "1000", "--backlog", "5", "--accept-delay-ms", "1"]
models = ["bench"]
max_queue = {a.held}
start_timeout = "5m"
""")
    body = CHAT
    if OHA:
        t0 = time.time()
        res = oha(["-n", str(a.held), "-c", str(a.held), "-t", "300s"], w.base + "/v1/chat/completions", body)
        wall = time.time() - t0
    else:
        lat, errors = [], [0]

        def one():
            t = time.perf_counter()
            try:
                post(w.base + "/v1/chat/completions", body)
                lat.append((time.perf_counter() - t) * 1e3)
            except Exception:
                errors[0] += 1
        t0 = time.time()
        with ThreadPoolExecutor(a.held) as ex:
            for _ in range(a.held):
                ex.submit(one)
        wall = time.time() - t0
        res = {"ok": len(lat), "errors": errors[0], "max": max(lat, default=float("nan"))}
    hwm = proc_status(w.proc.pid, "VmHWM")
    w.close()
    return {"requests": a.held, "answered": res["ok"], "refused_or_failed": res["errors"], "slowest_ms": res["max"],
            "wall_s": wall, "warden_peak_rss": hwm}


# ---------------------------------------------------------------- P7: pressure monitor cost

def p7(bins, a):
    """warden's CPU with N running services, pressure monitor off and then on (2 s samples),
    measured over the same time from /proc/PID/stat: the difference is the monitor's cost."""
    services = "".join(f'\n[services.s{i}]\nkind = "process"\ncommand = ["FAKE", "--port", "${{PORT}}"]\n'
                       f'models = ["m{i}"]\ndesired = "on"\n' for i in range(a.services))
    out = {"services": a.services, "seconds": a.monitor_seconds}
    for label, pressure in (("off", ""), ("on", '[pressure]\nenabled = true\nsample_interval = "2s"\n')):
        w = Warden(bins, pressure + services)
        deadline = time.time() + 120
        while time.time() < deadline:
            states = [s["state"] for s in w.admin("/admin/services", "GET")]
            if all(s == "running" for s in states):
                break
            time.sleep(0.2)
        time.sleep(2)
        before = sum(cpu_seconds([w.proc.pid], children=False))
        time.sleep(a.monitor_seconds)
        out[label] = (sum(cpu_seconds([w.proc.pid], children=False)) - before) / a.monitor_seconds * 100
        w.close()
    out["monitor"] = out["on"] - out["off"]
    return out


# ---------------------------------------------------------------- P8: the optimizer

def sequential(url, bodies):
    """Latency of each request (ms), one after another on one connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out = []
    for body in bodies:
        data = json.dumps(body)
        t0 = time.perf_counter()
        conn.request("POST", path, data, HEADERS)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def p8(bins, a):
    """Cache hits and misses and a lone coalesced request, against the same instant backend
    called directly and through a warden without the optimizer, interleaved round by round."""
    up_port = free_port()
    up = spawn([str(bins / "fake-backend"), "--port", str(up_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{up_port}/health")
    remote = (f'[services.up]\nkind = "remote"\nurl = "http://127.0.0.1:{up_port}"\n'
              'models = ["bench", "emb", "emb-co"]\n')
    plain = Warden(bins, remote)
    cached = Warden(bins, '[cache]\nenabled = true\nwhen = "always"\n' + remote +
                    '[models.emb-co]\nservice = "up"\ncoalesce = "5ms"\n')
    n = a.opt_n
    det = {**CHAT, "temperature": 0}
    chat = "/v1/chat/completions"
    res = {"direct": [], "plain": [], "miss": [], "hit": [], "emb_plain": [], "emb_lone": []}
    for rnd in range(a.rounds):
        uniq = [{**det, "messages": [{"role": "user", "content": f"round {rnd} question {i}"}]} for i in range(n)]
        res["direct"] += sequential(f"http://127.0.0.1:{up_port}{chat}", [det] * n)
        res["plain"] += sequential(plain.base + chat, [det] * n)
        res["miss"] += sequential(cached.base + chat, uniq)
        res["hit"] += sequential(cached.base + chat, [det] * n)[1:]
        # Every input new: these measure coalescing, not the cache.
        emb = [{"input": f"round {rnd} text {i} to embed"} for i in range(n // 4)]
        res["emb_plain"] += sequential(cached.base + "/v1/embeddings", [{**e, "model": "emb"} for e in emb])
        res["emb_lone"] += sequential(cached.base + "/v1/embeddings", [{**e, "model": "emb-co"} for e in emb])
    plain.close()
    cached.close()
    kill(up)
    return {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in res.items()}


# ---------------------------------------------------------------- P6: criterion

def p9(bins, a):
    """The dashboard with many services and a full ring of recent requests: how long until it shows them."""
    upstream_port = free_port()
    up = spawn([str(bins / "fake-backend"), "--port", str(upstream_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{upstream_port}/health")
    n = 10 if a.smoke else 200
    services = "".join(f'\n[services.s{i}]\nkind = "process"\ncommand = ["FAKE", "--port", "${{PORT}}"]\nmodels = ["m{i}"]\n'
                       for i in range(n))
    services += f'\n[services.hosted]\nkind = "remote"\nurl = "http://127.0.0.1:{upstream_port}"\nmodels = ["m"]\n'
    w = Warden(bins, services, extra_server='admin_token = "bench"')
    requests = 200 if a.smoke else 10000
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if OHA:
        oha(["-n", str(requests), "-c", "32"], w.base + "/v1/chat/completions", body)
    else:
        for _ in range(requests):
            post(w.base + "/v1/chat/completions", body)
    out = subprocess.run([PYTHON, str(ROOT / "bench/dashboard.py"), w.base, "bench", str(n + 1)],
                         capture_output=True, text=True)
    req = urllib.request.Request(w.base + "/admin/requests?limit=1", headers={"authorization": "Bearer bench"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        held = json.loads(resp.read())["total"]
    w.close()
    kill(up)
    if out.returncode != 0:
        if a.smoke:
            raise RuntimeError(f"the dashboard run failed: {out.stderr[-2000:]}")
        return {"error": out.stderr[-2000:]}
    r = json.loads(out.stdout)
    r.update({"services": n + 1, "requests": requests, "held": held})
    return r


# ---------------------------------------------------------------- P10: shared state (replicas)

def start_redis():
    d = scratch("warden-bench-redis-")
    port = free_port()
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, d
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not listen")


def p10(bins, a):
    """Admission counted in process against the same through Redis: a priced model and a client
    with a budget and a concurrency limit (so every request runs the admit and settle scripts)."""
    if not shutil.which("redis-server"):
        return {"error": "redis-server is not installed (scripts/test installs it)"}
    up_port = free_port()
    up = spawn([str(bins / "fake-backend"), "--port", str(up_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{up_port}/health")
    rd, rport, rdir = start_redis()
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    tenants = (f'[clients.bench]\nkey_sha256 = "{key_hash}"\nmonthly_budget_usd = 1000000\nmodels = ["*"]\ntier = "t"\n'
               '[tiers.t]\nmax_concurrent = 1000\n'
               f'[services.up]\nkind = "remote"\nurl = "http://127.0.0.1:{up_port}"\nmodels = ["bench"]\n'
               '[models.bench]\nservice = "up"\nprice = { input_per_1k = 0.001, output_per_1k = 0.002 }\n')
    local = Warden(bins, tenants)
    shared = Warden(bins, f'[state]\nshared = "redis://127.0.0.1:{rport}/0"\n' + tenants)
    targets = {"direct": f"http://127.0.0.1:{up_port}/v1/chat/completions",
               "in-process": local.base + "/v1/chat/completions", "shared": shared.base + "/v1/chat/completions"}
    for url in targets.values():
        post(url, CHAT)
    rounds = {n: [] for n in targets}
    for r in range(a.rounds):
        names = list(targets)
        for n in names[r % 3:] + names[:r % 3]:
            if OHA:
                res = oha(["-z", f"{a.seconds}s", "-q", str(a.rate), "-c", "32", "--latency-correction"], targets[n], CHAT)
            else:
                res = mini_load(targets[n], CHAT, a.seconds)
            rounds[n].append(res)
    spent = json.loads(urllib.request.urlopen(urllib.request.Request(
        shared.base + "/api/usage/bench/current", headers={"authorization": f"Bearer {KEY}"}), timeout=30).read())
    local.close()
    shared.close()
    kill(rd)
    kill(up)
    shutil.rmtree(rdir, ignore_errors=True)
    out = {n: {k: statistics.median(x[k] for x in v) for k in ("p50", "p99", "rps")} | {"errors": sum(x["errors"] for x in v)}
           for n, v in rounds.items()}
    out["shared_spent_micros"] = spent.get("spent_micros")
    out["tool"] = "oha" if OHA else "python closed loop (smoke)"
    return out


def p6(a):
    out = subprocess.run(["cargo", "bench", "-p", "warden", "--bench", "hot_paths", "--", "--warm-up-time", "1",
                          "--measurement-time", "3"], cwd=ROOT, capture_output=True, text=True, check=True)
    results, name = [], None
    for line in out.stdout.splitlines():
        if line and not line.startswith(" ") and "time:" not in line:
            name = line.strip()
        if "time:" in line:
            parts = line.split("time:")[1].strip().strip("[]").split()
            if name is None:
                name = line.split("time:")[0].strip()
            results.append({"name": name, "median": f"{parts[2]} {parts[3]}"})
            name = None
    return results


# ---------------------------------------------------------------- report

def mib(b):
    return f"{b / 2**20:.1f} MiB"


def report(r, a):
    m = r["machine"]
    L = [f"# Benchmarks\n",
         f"Written by `bench/run` on {m['date']} at commit `{m['commit']}`, on {m['cpu']} ({m['cores']} cores), "
         f"{m['mem_gib']:.0f} GiB, {m['os']}. Reproduce with `bench/run` (it installs oha, nginx and LiteLLM "
         f"and builds release binaries). All runs of one section happen in the same run, interleaved where "
         f"they compare, so ratios hold on a noisy shared machine; absolute numbers vary between runs.\n"]
    if "p1" in r:
        p = r["p1"]
        d = p["fixed"]["direct"]
        L += [f"## P1 — proxy overhead\n",
              f"An instant upstream (fake-backend, 8-token chat completion) called {a.rounds} times × {a.seconds} s "
              f"per target at a fixed {a.rate} requests/s with {p['tool']} (`-q {a.rate} -c 32 --latency-correction`), "
              f"targets interleaved and rotated each round; figures are medians over rounds. Added = target − direct.\n",
              "| target | p50 ms | p99 ms | max ms | added p50 ms | added p99 ms | rps | errors |",
              "|---|---|---|---|---|---|---|---|"]
        for n, s in p["fixed"].items():
            L.append(f"| {n} | {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.2f} | {s['p50'] - d['p50']:+.3f} | "
                     f"{s['p99'] - d['p99']:+.3f} | {s['rps']:.0f} | {s['errors']} |")
        if "nginx" in p["fixed"]:
            wa = p["fixed"]["warden"]["p99"] - d["p99"]
            ng = p["fixed"]["nginx"]["p99"] - d["p99"]
            L.append(f"\nwarden's added p99 is {wa:.3f} ms (target ≤ 0.2 ms); nginx's {ng:.3f} ms; ratio "
                     f"{(wa / ng) if ng > 0 else float('nan'):.2f} (target ≤ 1.5).")
        L += ["\nSaturation (no rate limit, 32 connections, same duration); the proxy's own CPU time per "
              "answered request, user and system, from /proc (warden's backend and the direct target excluded):\n",
              "| target | rps | p50 ms | p99 ms | errors | proxy user µs/req | proxy system µs/req |",
              "|---|---|---|---|---|---|---|"]
        for n, s in p["saturation"].items():
            cpu = " | ".join(f"{s[k]:.1f}" if k in s else "-" for k in ("user_us", "system_us"))
            L.append(f"| {n} | {s['rps']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | {s['errors']} | {cpu} |")
        L += [f"\nStreaming (SSE, `stream_options.include_usage`), {a.stream_n} sequential requests on one "
              f"keep-alive connection from Python's http.client:\n",
              "| target | first byte p50 ms | p99 | last byte p50 ms | p99 |", "|---|---|---|---|---|"]
        for n, s in p["stream"].items():
            L.append(f"| {n} | {s['ttfb_p50']:.3f} | {s['ttfb_p99']:.3f} | {s['ttlb_p50']:.3f} | {s['ttlb_p99']:.3f} |")
    if "p2" in r:
        f = r["p2"]["fake"]
        L += [f"\n## P2 — wake overhead\n",
              f"A stopped service is woken by a chat completion. Overhead = time to the answer's "
              f"first bytes − the backend's own exec-to-listening time (the fake backend records both instants) − "
              f"a warm request's time ({f['warm_request_ms']:.3f} ms). It includes spawning the process and "
              f"noticing it is healthy: a TCP connect every 2 ms until the port accepts, then the health check "
              f"every 5 ms. The fake backend is told to start listening after 0 s to 10 s.\n",
              "Two parts of it are read off the backend's own clock: from listening to its first answered health "
              "check (the probe's pace), and from that answer to the held request's arrival (target ≤ 10 ms).\n",
              "| backend | wakes | overhead median ms | p90 ms | listen → healthy ms | healthy → request ms | "
              "backend's own start median ms |", "|---|---|---|---|---|---|---|"]
        for delay, b in r["p2"].get("by_start", {"0": f}).items():
            L.append(f"| fake-backend, listens after {int(delay) / 1000:g} s | {b['n']} | {b['median']:.2f} | "
                     f"{b['p90']:.2f} | {b.get('listen_to_healthy_median', float('nan')):.2f} | "
                     f"{b.get('healthy_to_request_median', float('nan')):.2f} | {b['backend_exec_to_listen_median']:.2f} |")
        if "llama" in r["p2"]:
            l = r["p2"]["llama"]
            L.append(f"| llama-server (tiny GGUF) | {l['n']} | {l['overhead_median']:.2f} | {l['overhead_p90']:.2f} | - | - | "
                     f"{l['alone_exec_to_healthy_median']:.2f} |")
            L.append(f"\nFor llama-server the backend's own time cannot be read from inside it: it is the median "
                     f"exec-to-healthy time of {l['n']} standalone starts polled every millisecond, so the "
                     f"llama figure is a difference of medians. Target: ≤ 10 ms median.")
    if "p3" in r:
        p = r["p3"]
        L += [f"\n## P3 — footprint\n",
              f"- warden idle with {p['services']} services configured (none running): VmRSS {mib(p['idle_rss'])} "
              f"(target ≤ 15 MB)."]
        if "p1" in r:
            L.append(f"- under the P1 load: VmRSS up to {mib(r['p1']['warden_rss_under_load'])}, "
                     f"peak (VmHWM) {mib(r['p1']['warden_hwm'])}.")
    if "p4" in r:
        p = r["p4"]
        s, u = p["sleep"], p["unload"]
        share = s["returned"] / s["held"] * 100 if s["held"] else float("nan")
        L += [f"\n## P4 — reclaim ({p['backend']})\n",
              f"- service sleep: its process group held {mib(s['held'])}; {share:.1f} % returned "
              f"{s['seconds'] * 1e3:.0f} ms after the stop decision (measured: the group's processes gone).",
              f"- model unload (router mode): the group went {mib(u['group_before'])} → {mib(u['group_after'])}; "
              f"with nothing loaded the router alone holds {mib(u['router_alone'])}. The unloaded model's child "
              f"process ({mib(u['held'])}) is gone when the unload call returns, {u['seconds'] * 1e3:.0f} ms after "
              f"the decision (the call returns once the server reports it unloaded). Loaded after: {u['loaded_after']}.",
              "\nTarget: ≥ 99 % within 1 s."]
    if "p5" in r:
        p = r["p5"]
        L += [f"\n## P5 — held load\n",
              f"{p['requests']} concurrent chat completions arrive for a stopped service whose backend takes 1 s to "
              f"listen (`max_queue = {p['requests']}`), sent at once by {'oha -n N -c N' if OHA else 'Python threads'}.\n",
              f"- answered: {p['answered']}; refused or failed: {p['refused_or_failed']}",
              f"- the slowest took {p['slowest_ms']:.0f} ms; the whole burst {p['wall_s']:.1f} s",
              f"- warden's peak RSS (VmHWM): {mib(p['warden_peak_rss'])}",
              "\nTarget: all answered."]
    if "p6" in r:
        L += ["\n## P6 — hot paths (criterion)\n",
              "`cargo bench -p warden --bench hot_paths` (1 s warm-up, 3 s measurement); median time per iteration.\n",
              "| benchmark | median |", "|---|---|"]
        for b in r["p6"]:
            L.append(f"| {b['name']} | {b['median']} |")
        L.append("\nTargets: eviction planner < 100 µs for 200 services. The priority queue benchmark (≤ 5 µs per push/pop at 100k queued) comes with issue 5.")
    if "p7" in r:
        p = r["p7"]
        L += ["\n## P7 — pressure monitor cost\n",
              f"warden with {p['services']} running services (fake-backend processes), its CPU (user + system, all "
              f"threads, from /proc/PID/stat) over {p['seconds']} s with the pressure monitor off, then on at a 2 s "
              "sample interval (host and cgroup memory, every running service's footprint, CPU; the pure decision). "
              "The difference is the monitor's cost.\n",
              "| pressure monitor | warden CPU, % of one core |", "|---|---|",
              f"| off | {p['off']:.2f} |", f"| on | {p['on']:.2f} |",
              f"\nThe monitor costs {p['monitor']:.2f} % of one core with {p['services']} services (target < 1 %)."]
    if "p8" in r:
        p = r["p8"]
        L += ["\n## P8 — the optimizer: cache and coalescing\n",
              "Sequential requests on one keep-alive connection to an instant upstream (fake-backend, 8-token "
              "chat completion): called directly, through a warden without the optimizer (remote service), and "
              "through a warden with `[cache] when = \"always\"`: misses (every request new) and hits (the same "
              "request again). Embeddings: the same model with and without `coalesce = \"5ms\"`, one request "
              "at a time (a lone request waits out its window). Rounds interleaved; all figures in ms.\n",
              "| path | p50 | p99 | requests |", "|---|---|---|---|"]
        for k, label in (("direct", "direct to the upstream"), ("plain", "warden, no optimizer"),
                         ("miss", "warden, cache miss"), ("hit", "warden, cache hit"),
                         ("emb_plain", "embeddings, not coalesced"), ("emb_lone", "embeddings, coalesced, alone")):
            v = p[k]
            L.append(f"| {label} | {v['p50']:.3f} | {v['p99']:.3f} | {v['n']} |")
        L.append(f"\nA hit answers in {p['hit']['p50']:.3f} ms at p50 (target under 1 ms; the upstream's own round "
                 f"trip is {p['direct']['p50']:.3f} ms). A miss adds {p['miss']['p50'] - p['plain']['p50']:.3f} ms at p50 "
                 f"over warden without the cache (target under 0.2 ms). A lone coalesced request adds "
                 f"{p['emb_lone']['p50'] - p['emb_plain']['p50']:.2f} ms (its window is 5 ms: at most the window).")
    if "p9" in r:
        p = r["p9"]
        L.append("\n## P9 — the dashboard\n")
        if "error" in p:
            L.append(f"Not measured: {p['error'][-300:]}")
        else:
            L += [f"warden with {p['services']} services configured and {p['requests']} requests answered "
                  f"({p['held']} kept for the activity list), `/ui` opened 5 times in headless Chromium with the "
                  f"token in session storage: from navigation to every service and a full page (100) of recent "
                  f"requests on screen, median {statistics.median(p['ready_ms']):.0f} ms (all: "
                  f"{', '.join(f'{x:.0f}' for x in p['ready_ms'])} ms; target under 1 s). The page itself: "
                  f"{p['navigation_ms']:.0f} ms."]
    if "p10" in r:
        p = r["p10"]
        L.append("\n## P10 — shared state for replicas\n")
        if "error" in p:
            L.append(f"Not measured: {p['error']}")
        else:
            d, l, s = p["direct"], p["in-process"], p["shared"]
            L += [f"A client with a budget and a concurrency limit calls a priced model on an instant upstream "
                  f"(fake-backend) at a fixed {a.rate} requests/s for {a.seconds} s per target, {a.rounds} rounds "
                  f"interleaved, with {p['tool']}: directly, through a warden counting in process, and through a "
                  f"warden counting in a local `redis-server` (`[state].shared`: one admit script per request, one "
                  f"settle script after it, sent by the writer task). Medians over rounds; added = target − direct.\n",
                  "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | rps | errors |", "|---|---|---|---|---|---|---|"]
            for n in ("direct", "in-process", "shared"):
                v = p[n]
                L.append(f"| {n} | {v['p50']:.3f} | {v['p99']:.3f} | {v['p50'] - d['p50']:+.3f} | {v['p99'] - d['p99']:+.3f} | "
                         f"{v['rps']:.0f} | {v['errors']} |")
            L.append(f"\nThe shared path adds {s['p50'] - l['p50']:+.3f} ms at p50 and {s['p99'] - l['p99']:+.3f} ms at p99 "
                     f"over counting in process (one Redis round trip on the request's way in; the settle is off its path).")
    notes = ROOT / "bench/NOTES.md"
    if notes.exists() and not a.smoke:
        L.append("\n" + notes.read_text())
    return "\n".join(L) + "\n"


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    osname = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem, "commit": commit, "os": osname,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bins", default=str(ROOT / "target/release"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, no external tools; checks the harness works")
    ap.add_argument("--only", default="p1,p2,p3,p4,p5,p6,p7,p8,p9,p10")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default=str(ROOT / "bench/results.json"))
    a = ap.parse_args()
    a.rounds, a.seconds, a.rate, a.stream_n, a.wakes, a.llama_wakes, a.services, a.held, a.monitor_seconds = \
        (1, 1, 200, 10, 3, 0, 5, 50, 1) if a.smoke else (3, 10, 1000, 300, 25, 20, 50, 10000, 60)
    a.opt_n = 20 if a.smoke else 1000
    global OHA, LITELLM, LLAMA, PYTHON
    OHA = None if a.smoke else (os.environ.get("OHA") or shutil.which("oha"))
    LITELLM = None if a.smoke else os.environ.get("LITELLM")
    LLAMA = os.environ.get("WARDEN_LLAMA_SERVER")
    PYTHON = os.environ.get("WARDEN_TEST_PYTHON", sys.executable)
    bins = Path(a.bins).resolve()
    r = {"machine": machine()}
    steps = {"p1": lambda: p1(bins, a), "p2": lambda: p2(bins, a), "p3": lambda: p3(bins, a),
             "p4": lambda: p4(bins, a), "p5": lambda: p5(bins, a), "p6": lambda: p6(a), "p7": lambda: p7(bins, a), "p8": lambda: p8(bins, a), "p9": lambda: p9(bins, a),
             "p10": lambda: p10(bins, a)}
    for key in a.only.split(","):
        if key == "p6" and a.smoke:
            continue
        print(f"== {key}", file=sys.stderr, flush=True)
        r[key] = steps[key]()
    Path(a.json).write_text(json.dumps(r, indent=1))
    Path(a.out).write_text(report(r, a))
    print(f"wrote {a.out} and {a.json}", file=sys.stderr)


OHA = LITELLM = LLAMA = PYTHON = None

if __name__ == "__main__":
    main()
