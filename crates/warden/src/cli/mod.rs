//! Client commands: they talk to a running warden's admin API.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
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
    println!(
        "{:<20} {:<9} {:>8} {:>10} {:>11} {:>9}  MODELS",
        "SERVICE", "STATE", "IDLE FOR", "SLEEPS IN", "RSS", "IN FLIGHT"
    );
    for svc in services.as_array().into_iter().flatten() {
        let name = svc["name"].as_str().unwrap_or("?");
        let i = &idle["services"][name];
        let models: Vec<&str> = svc["models"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<20} {:<9} {:>8} {:>10} {:>11} {:>9}  {}",
            name,
            svc["state"].as_str().unwrap_or("?"),
            fmt_minutes(&i["idle_for_minutes"]),
            fmt_minutes(&i["will_sleep_in_minutes"]),
            fmt_bytes(&svc["rss_bytes"]),
            svc["in_flight"].to_string(),
            models.join(", "),
        );
        if let Some(err) = svc["last_error"].as_str() {
            println!("{:<20} last error: {err}", "");
        }
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
    println!(
        "\n{:<20} {:<9} {:<6} {:>11} {:>11} {:>8}  GROUP",
        "SERVICE", "STATE", "DEVICE", "ESTIMATE", "MEASURED", "PRIORITY"
    );
    for (name, s) in r["services"].as_object().into_iter().flatten() {
        println!(
            "{:<20} {:<9} {:<6} {:>11} {:>11} {:>8}  {}",
            name,
            s["state"].as_str().unwrap_or("?"),
            s["device"].as_str().unwrap_or("?"),
            fmt_bytes(&s["estimate_bytes"]),
            fmt_bytes(&s["measured_bytes"]),
            s["priority"],
            s["group"].as_str().unwrap_or("-"),
        );
    }
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
        "{name} in {}: {} requests, {} spent of {budget} ({} held for requests in flight)",
        u["month"].as_str().unwrap_or("?"),
        u["requests"],
        usd(&b["spent_usd"]),
        usd(&b["reserved_usd"]),
    );
    println!("{:<32} {:>9} {:>14} {:>14} {:>12}", "MODEL", "REQUESTS", "PROMPT TOK", "OUTPUT TOK", "COST");
    for m in u["by_model"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>9} {:>14} {:>14} {:>12}",
            m["model"].as_str().filter(|s| !s.is_empty()).unwrap_or("(passthrough)"),
            m["requests"].to_string(),
            m["prompt_tokens"].to_string(),
            m["completion_tokens"].to_string(),
            usd(&m["cost_usd"]),
        );
    }
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
