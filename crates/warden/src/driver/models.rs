//! Models inside multi-model servers: load, unload and list them through the server's own API.
//!
//! - llama.cpp router mode: `POST /models/load`, `POST /models/unload` (`{"model": NAME}`), and
//!   `GET /models`, whose entries carry `status.value` ("loaded", "loading", "unloaded").
//! - Ollama (from its documented API; Ollama itself cannot be installed here, so this is tested
//!   against the fake backend speaking the same endpoints): a `POST /api/generate` without a
//!   prompt loads a model, with `"keep_alive": 0` unloads it; `GET /api/ps` lists what is loaded.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::base::http::HttpClient;
use crate::config::Api;

/// One call to a model server; bounded.
async fn call(
    client: &HttpClient,
    method: Method,
    url: String,
    body: Option<Value>,
    within: Duration,
) -> Result<Value, String> {
    let req = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes).trim()))
        }
    };
    tokio::time::timeout(within, exchange).await.map_err(|_| format!("{url}: no answer within {within:?}"))?
}

/// Ollama names "llama3" and "llama3:latest" are the same model.
pub fn same_model(a: &str, b: &str) -> bool {
    a == b || a.strip_suffix(":latest") == Some(b) || b.strip_suffix(":latest") == Some(a)
}

/// What a server offers and what it has loaded now.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub available: Vec<String>,
    pub loaded: Vec<String>,
}

pub async fn listing(client: &HttpClient, api: Api, upstream: &str) -> Result<Listing, String> {
    let within = Duration::from_secs(10);
    let names = |list: &Value, key: &str| -> Vec<String> {
        list.as_array().into_iter().flatten().filter_map(|m| m[key].as_str().map(str::to_string)).collect()
    };
    match api {
        Api::Single => Ok(Listing::default()),
        Api::LlamacppRouter => {
            let v = call(client, Method::GET, format!("{upstream}/models"), None, within).await?;
            Ok(Listing { available: names(&v["data"], "id"), loaded: loaded(client, api, upstream).await? })
        }
        Api::Ollama => {
            let tags = call(client, Method::GET, format!("{upstream}/api/tags"), None, within).await?;
            Ok(Listing { available: names(&tags["models"], "name"), loaded: loaded(client, api, upstream).await? })
        }
    }
}

/// The models the server has loaded now.
pub async fn loaded(client: &HttpClient, api: Api, upstream: &str) -> Result<Vec<String>, String> {
    let within = Duration::from_secs(10);
    match api {
        Api::Single => Ok(Vec::new()),
        Api::LlamacppRouter => {
            let v = call(client, Method::GET, format!("{upstream}/models"), None, within).await?;
            Ok(v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["status"]["value"] == "loaded")
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect())
        }
        Api::Ollama => {
            let v = call(client, Method::GET, format!("{upstream}/api/ps"), None, within).await?;
            Ok(v["models"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str().map(str::to_string))
                .collect())
        }
    }
}

async fn is_loaded(client: &HttpClient, api: Api, upstream: &str, model: &str) -> Result<bool, String> {
    Ok(loaded(client, api, upstream).await?.iter().any(|m| same_model(m, model)))
}

/// Polls (bounded) until the model's loaded state is `want`.
async fn wait_for(
    client: &HttpClient,
    api: Api,
    upstream: &str,
    model: &str,
    want: bool,
    deadline: Instant,
) -> Result<(), String> {
    let mut delay = Duration::from_millis(5);
    loop {
        if is_loaded(client, api, upstream, model).await? == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if want { "loaded" } else { "unloaded" };
            return Err(format!("model {model} was not {what} in time"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Loads `model` and returns once the server reports it loaded (bounded by `within`).
pub async fn load(client: &HttpClient, api: Api, upstream: &str, model: &str, within: Duration) -> Result<(), String> {
    change(client, api, upstream, model, true, within).await
}

/// Unloads `model` and returns once the server no longer lists it as loaded (bounded).
pub async fn unload(
    client: &HttpClient,
    api: Api,
    upstream: &str,
    model: &str,
    within: Duration,
) -> Result<(), String> {
    change(client, api, upstream, model, false, within).await
}

async fn change(
    client: &HttpClient,
    api: Api,
    upstream: &str,
    model: &str,
    load: bool,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let (path, body) = match (api, load) {
        (Api::Single, _) => return Ok(()),
        (Api::LlamacppRouter, true) => ("/models/load", json!({"model": model})),
        (Api::LlamacppRouter, false) => ("/models/unload", json!({"model": model})),
        // warden decides when to unload, so an Ollama model is loaded to stay.
        (Api::Ollama, true) => ("/api/generate", json!({"model": model, "keep_alive": -1})),
        (Api::Ollama, false) => ("/api/generate", json!({"model": model, "keep_alive": 0})),
    };
    call(client, Method::POST, format!("{upstream}{path}"), Some(body), within).await?;
    wait_for(client, api, upstream, model, load, deadline).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn ollama_latest_tag_is_the_same_model() {
        assert!(super::same_model("llama3", "llama3:latest"));
        assert!(super::same_model("llama3:latest", "llama3"));
        assert!(!super::same_model("llama3:8b", "llama3"));
    }
}
