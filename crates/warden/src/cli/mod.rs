//! Client commands: they talk to a running warden's admin API.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use comfy_table::{CellAlignment, Table};
use http_body_util::BodyExt;
use serde_json::Value;

pub struct Client {
    base: String,
    token: Option<String>,
    http: crate::base::http::HttpClient,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Self {
        Client { base: url.trim_end_matches('/').to_string(), token, http: crate::base::http::client() }
    }

    /// Calls the admin API; an error status becomes an error carrying the server's message.
    pub async fn call(&self, method: Method, path: &str) -> Result<Value, String> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Body::empty()).map_err(|e| format!("bad URL {}: {e}", self.base))?;
        // Bounded: a wake may wait for a start, but never forever.
        let resp = tokio::time::timeout(Duration::from_secs(600), self.http.request(req))
            .await
            .map_err(|_| "no answer within 10 minutes".to_string())?
            .map_err(|e| format!("cannot reach warden at {}: {e}", self.base))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let value: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        if status.is_success() {
            Ok(value)
        } else {
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            Err(format!("{status}: {msg}"))
        }
    }
}

/// A borderless table whose columns line up: `right` columns (numbers) align right.
fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING).set_header(header.iter().copied());
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Prints a table without trailing spaces.
fn print_table(t: &Table) {
    for line in t.lines() {
        println!("{}", line.trim_end());
    }
}

/// "1 request", "3 requests".
pub fn counted(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn count(n: &Value, noun: &str) -> String {
    counted(n.as_u64().unwrap_or(0), noun)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn fmt_minutes(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(m) if m < 1.0 => format!("{:.0}s", m * 60.0),
        Some(m) if m < 120.0 => format!("{m:.1}m"),
        Some(m) => format!("{:.1}h", m / 60.0),
    }
}

fn fmt_bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// `warden status`: services joined with their idle status, as a table or as JSON.
pub async fn status(client: &Client, as_json: bool) -> Result<(), String> {
    let services = client.call(Method::GET, "/admin/services").await?;
    let idle = client.call(Method::GET, "/admin/idle-status").await?;
    if as_json {
        let out = serde_json::json!({"services": services, "idle": idle});
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        return Ok(());
    }
    let mut t = table(&["SERVICE", "STATE", "IDLE FOR", "SLEEPS IN", "RSS", "IN FLIGHT", "MODELS"], &[2, 3, 4, 5]);
    let mut errors = Vec::new();
    for svc in services.as_array().into_iter().flatten() {
        let name = svc["name"].as_str().unwrap_or("?");
        let i = &idle["services"][name];
        let models: Vec<&str> = svc["models"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        t.add_row(vec![
            name.to_string(),
            text(&svc["state"]),
            fmt_minutes(&i["idle_for_minutes"]),
            fmt_minutes(&i["will_sleep_in_minutes"]),
            fmt_bytes(&svc["rss_bytes"]),
            text(&svc["in_flight"]),
            models.join(", "),
        ]);
        if let Some(err) = svc["last_error"].as_str() {
            errors.push(format!("{name}: last error: {err}"));
        }
    }
    print_table(&t);
    for e in errors {
        println!("{e}");
    }
    println!(
        "idle sleep {}, default timeout {}",
        if idle["idle_sleep_enabled"].as_bool() == Some(true) { "on" } else { "off" },
        fmt_minutes(&idle["idle_timeout_minutes"])
    );
    Ok(())
}

/// `warden resources`: capacity and use per device, then each service's memory.
pub async fn resources(client: &Client, as_json: bool) -> Result<(), String> {
    let r = client.call(Method::GET, "/admin/resources").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
        return Ok(());
    }
    for (name, d) in r["devices"].as_object().into_iter().flatten() {
        if d.is_null() {
            println!("{name}: not managed");
        } else {
            println!(
                "{name}: {} used of {} allowed ({} free; capacity {}, threshold {}, reserve {})",
                fmt_bytes(&d["used_bytes"]),
                fmt_bytes(&d["limit_bytes"]),
                fmt_bytes(&d["free_bytes"]),
                fmt_bytes(&d["capacity_bytes"]),
                d["threshold"],
                fmt_bytes(&d["reserve_bytes"])
            );
        }
    }
    println!();
    let mut t = table(&["SERVICE", "STATE", "DEVICE", "ESTIMATE", "MEASURED", "PRIORITY", "GROUP"], &[3, 4, 5]);
    for (name, s) in r["services"].as_object().into_iter().flatten() {
        t.add_row(vec![
            name.clone(),
            text(&s["state"]),
            text(&s["device"]),
            fmt_bytes(&s["estimate_bytes"]),
            fmt_bytes(&s["measured_bytes"]),
            text(&s["priority"]),
            text(&s["group"]),
        ]);
    }
    print_table(&t);
    Ok(())
}

/// `warden plan NAME`: what starting it now would do.
pub async fn plan(client: &Client, name: &str, as_json: bool) -> Result<(), String> {
    let p = client.call(Method::GET, &format!("/admin/plan/{name}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&p).expect("JSON"));
        return Ok(());
    }
    if p["managed"] == false {
        println!("{name}: its device is not managed; it starts without a plan");
        return Ok(());
    }
    let victims: Vec<&str> = p["victims"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match (p["fits"].as_bool(), victims.is_empty()) {
        (Some(true), true) => {
            println!("{name} fits: needs {}, {} free", fmt_bytes(&p["need_bytes"]), fmt_bytes(&p["free_bytes"]))
        }
        (Some(true), false) => println!(
            "{name} fits after offloading {}: needs {}, {} free now",
            victims.join(", "),
            fmt_bytes(&p["need_bytes"]),
            fmt_bytes(&p["free_bytes"])
        ),
        _ => println!("{name} does not fit: {}", p["reason"].as_str().unwrap_or("no room")),
    }
    Ok(())
}

fn usd(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("${x:.4}"))
}

/// `warden usage CLIENT`: this month's spend against the budget, by model.
pub async fn usage(client: &Client, name: &str, as_json: bool) -> Result<(), String> {
    let u = client.call(Method::GET, &format!("/admin/usage/{name}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&u).expect("JSON"));
        return Ok(());
    }
    let b = &u["budget"];
    let budget = if b["budget_usd"].is_null() { "no budget".to_string() } else { usd(&b["budget_usd"]) };
    println!(
        "{name} in {}: {}, {} spent of {budget} ({} held for requests in flight)",
        u["month"].as_str().unwrap_or("?"),
        count(&u["requests"], "request"),
        usd(&b["spent_usd"]),
        usd(&b["reserved_usd"]),
    );
    let mut t = table(&["MODEL", "REQUESTS", "PROMPT TOK", "OUTPUT TOK", "COST"], &[1, 2, 3, 4]);
    for m in u["by_model"].as_array().into_iter().flatten() {
        t.add_row(vec![
            m["model"].as_str().filter(|s| !s.is_empty()).unwrap_or("(passthrough)").to_string(),
            text(&m["requests"]),
            text(&m["prompt_tokens"]),
            text(&m["completion_tokens"]),
            usd(&m["cost_usd"]),
        ]);
    }
    print_table(&t);
    Ok(())
}

/// `warden queue`: what waits, by class, and what runs.
pub async fn queue(client: &Client, as_json: bool) -> Result<(), String> {
    let q = client.call(Method::GET, "/admin/queue").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&q).expect("JSON"));
        return Ok(());
    }
    let paused = if q["paused"].as_bool() == Some(true) { " (scheduler stopped)" } else { "" };
    println!("{} queued, {} running{paused}", q["queued"], q["running"]);
    for class in ["immediate", "fast", "normal", "batch", "deferred"] {
        println!("  {class:<10} {}", q["by_class"][class]);
    }
    if let Some(ms) = q["oldest_wait_ms"].as_u64() {
        println!("oldest has waited {:.1} s", ms as f64 / 1000.0);
    }
    Ok(())
}

/// `warden wake NAME`: starts the service and waits until it is ready, showing its state and
/// the time elapsed meanwhile (a spinner on a terminal, a line a second otherwise), then the
/// result.
pub async fn wake(client: &Client, name: &str) -> Result<(), String> {
    let path = format!("/admin/services/{name}/start");
    let start = client.call(Method::POST, &path);
    tokio::pin!(start);
    let t0 = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let spinner = indicatif::ProgressBar::new_spinner();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut said = 0;
    let svc = loop {
        tokio::select! {
            done = &mut start => break done,
            _ = tick.tick() => {
                let state = match client.call(Method::GET, "/admin/services").await {
                    Ok(all) => all.as_array().into_iter().flatten().find(|s| s["name"] == name)
                        .map_or("unknown".into(), |s| text(&s["state"])),
                    Err(_) => continue,
                };
                let secs = t0.elapsed().as_secs();
                let line = format!("{name}: {state}, {:.1} s", t0.elapsed().as_secs_f64());
                if tty {
                    spinner.set_message(line);
                    spinner.tick();
                } else if secs > said {
                    said = secs;
                    eprintln!("{line}");
                }
            }
        }
    };
    spinner.finish_and_clear();
    let svc = svc?;
    println!(
        "{name} is {} (pid {}), after {:.1} s",
        svc["state"].as_str().unwrap_or("?"),
        text(&svc["pid"]),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `warden pressure`: the memory level and trend per device, the CPU, what each laddered model
/// is served by now, the latest switches and suggestions.
pub async fn pressure(client: &Client, as_json: bool) -> Result<(), String> {
    let p = client.call(Method::GET, "/admin/pressure").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&p).expect("JSON"));
        return Ok(());
    }
    if p["enabled"] != true {
        println!("pressure monitoring is off ([pressure] enabled = false)");
        return Ok(());
    }
    let th = &p["thresholds"];
    println!(
        "level {}, tier {}{} (degrade at {:.0} %, back below {:.0} % held {} s, stop idle at {:.0} %)",
        text(&p["level"]),
        text(&p["tier"]),
        if p["tier_detected"] == true { " (detected)" } else { "" },
        th["degrade_at"].as_f64().unwrap_or(0.0) * 100.0,
        th["upgrade_below"].as_f64().unwrap_or(0.0) * 100.0,
        p["stabilization_ms"].as_u64().unwrap_or(0) / 1000,
        th["stop_idle_at"].as_f64().unwrap_or(0.0) * 100.0,
    );
    let mut t = table(
        &["DEVICE", "LEVEL", "USED", "CAPACITY", "SHARE", "TREND/S", "RUNS OUT IN", "DEGRADED"],
        &[2, 3, 4, 5, 6],
    );
    for d in p["devices"].as_array().into_iter().flatten() {
        let trend = &d["trend"];
        t.add_row(vec![
            if d["device"] == "gpu" { "VRAM".to_string() } else { "RAM".to_string() },
            text(&d["level"]),
            fmt_bytes(&d["used_bytes"]),
            fmt_bytes(&d["capacity_bytes"]),
            format!("{:.0} %", d["share"].as_f64().unwrap_or(0.0) * 100.0),
            trend["bytes_per_sec"].as_f64().map_or("-".into(), |b| format!("{:+.1} MiB", b / (1u64 << 20) as f64)),
            trend["exhausted_in_ms"].as_u64().map_or("-".into(), |ms| format!("{:.0} s", ms as f64 / 1000.0)),
            text(&d["degraded"]),
        ]);
    }
    print_table(&t);
    let cpu = &p["cpu"];
    println!(
        "cpu {} (batch and deferred wait above {:.0} %)",
        cpu["share"].as_f64().map_or("-".into(), |s| format!("{:.0} %", s * 100.0)),
        cpu["defer_at"].as_f64().unwrap_or(0.0) * 100.0
    );
    for m in p["models"].as_array().into_iter().flatten() {
        println!("model {} -> served by {}", text(&m["model"]), text(&m["rung"]));
    }
    for d in p["decisions"].as_array().into_iter().flatten() {
        let reasons: Vec<String> = d["reasons"].as_array().into_iter().flatten().map(text).collect();
        println!("{} {}: {}", text(&d["action"]), text(&d["device"]), reasons.join("; "));
    }
    for s in p["suggestions"].as_array().into_iter().flatten() {
        println!("suggestion: {}", text(s));
    }
    Ok(())
}

/// `warden performance [--since 1h]`: per model and per task, requests, success rate,
/// p50/p95 latency, p50 first byte, tokens/s.
pub async fn performance(client: &Client, since: &str, as_json: bool) -> Result<(), String> {
    let p = client.call(Method::GET, &format!("/admin/performance?since={since}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&p).expect("JSON"));
        return Ok(());
    }
    for (title, key) in [("MODEL", "models"), ("TASK", "tasks")] {
        let mut t = table(
            &[title, "REQUESTS", "SUCCESS", "P50 MS", "P95 MS", "FIRST BYTE P50", "TOKENS/S"],
            &[1, 2, 3, 4, 5, 6],
        );
        for (name, s) in p[key].as_object().into_iter().flatten() {
            t.add_row(vec![
                name.clone(),
                text(&s["requests"]),
                format!("{:.0} %", s["success_rate"].as_f64().unwrap_or(0.0) * 100.0),
                text(&s["p50_ms"]),
                text(&s["p95_ms"]),
                text(&s["p50_first_byte_ms"]),
                s["tokens_per_sec"].as_f64().map_or("-".into(), |v| format!("{v:.1}")),
            ]);
        }
        print_table(&t);
        println!();
    }
    Ok(())
}

/// `warden reload`: the running warden reads its config file again; prints what changed.
pub async fn reload(client: &Client, as_json: bool) -> Result<(), String> {
    let r = client.call(Method::POST, "/admin/reload").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    let ch = &r["changes"];
    if r["changed"] == false {
        println!("Config reloaded: nothing changed");
    } else {
        println!("Config reloaded");
    }
    for what in ["services", "clients", "pools"] {
        for (how, label) in [("added", "added"), ("changed", "changed"), ("removed", "removed")] {
            let names: Vec<String> = ch[what][how].as_array().into_iter().flatten().map(text).collect();
            if !names.is_empty() {
                println!("  {what} {label}: {}", names.join(", "));
            }
        }
    }
    let sections: Vec<String> = ch["sections"].as_array().into_iter().flatten().map(text).collect();
    if !sections.is_empty() {
        println!("  also changed: {}", sections.join(", "));
    }
    for key in ch["need_restart"].as_array().into_iter().flatten() {
        println!("  {} changed: takes effect after a restart", text(key));
    }
    Ok(())
}

/// `warden savings CLIENT`: what the optimizer saved the client this month, by strategy.
pub async fn savings(client: &Client, name: &str, as_json: bool) -> Result<(), String> {
    let s = client.call(Method::GET, &format!("/api/optimize/stats/{name}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("{} saved {} in {}", text(&s["client"]), usd(&s["total_saved_usd"]), text(&s["month"]));
    let mut t = table(&["strategy", "requests", "saved"], &[1, 2]);
    let cache = &s["cache"];
    t.add_row(vec!["cache hits".to_string(), text(&cache["answers"]), usd(&cache["saved_usd"])]);
    let down = &s["downgrade"];
    t.add_row(vec!["downgrades".to_string(), text(&down["requests"]), usd(&down["saved_usd"])]);
    t.add_row(vec!["run off-peak".to_string(), text(&s["off_peak"]["requests"]), "-".to_string()]);
    print_table(&t);
    let bytes = &s["compression"]["bytes_saved_all_clients"];
    println!("compression saved {} (all clients)", fmt_bytes(bytes));
    Ok(())
}
