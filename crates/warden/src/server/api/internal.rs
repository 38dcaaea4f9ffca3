//! `/internal/reserve|release|consume`: budget and pool holds for callers outside the request
//! path. A client may hold only against itself; the admin names the client.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::client_named;
use crate::admission::gate::Used;
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::config::units::parse_duration;
use crate::server::parse_json as parse;
use policy::budget::{micros_to_usd, usd_to_micros, Micros};
use policy::estimate::Estimate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody {
    /// Defaults to the caller's own client.
    client: Option<String>,
    model: Option<String>,
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    max_tokens: u64,
    /// A fixed amount instead of the model's price.
    amount_usd: Option<f64>,
    /// How long the hold lasts unsettled (default "10m").
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    reservation_id: String,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cost_usd: Option<f64>,
}

fn micros(field: &str, usd: f64) -> Result<Micros, ApiError> {
    usd_to_micros(usd)
        .ok_or_else(|| ApiError::BadRequest(format!("{field} must be a number of US dollars, 0 or more (got {usd})")))
}

pub async fn reserve(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ReserveBody = parse(&body)?;
    let client = match &b.client {
        Some(name) => client_named(&app, &caller, name)?,
        None => caller.client,
    };
    if let Some(model) = &b.model {
        crate::pipeline::route_allowed(&app, &Caller { client, ..caller }, model)?;
    }
    let amount = b.amount_usd.map(|usd| micros("amount_usd", usd)).transpose()?;
    if b.model.is_none() && amount.is_none() {
        return Err(ApiError::BadRequest("give a model (priced by its terms) or amount_usd".into()));
    }
    let ttl = match &b.ttl {
        None => Duration::from_secs(600),
        Some(t) => parse_duration(t).map_err(|e| ApiError::BadRequest(format!("ttl: {e}")))?,
    };
    let estimate = Estimate { prompt_tokens: b.prompt_tokens, completion_tokens: b.max_tokens };
    let r = app.gate.hold(client, b.model.as_deref(), estimate, amount, ttl)?;
    Ok(Json(json!({
        "reservation_id": r.id,
        "reserved_usd": micros_to_usd(r.reserved),
        "expires_in_ms": r.expires_in.as_millis() as u64,
    })))
}

fn owner(caller: &Caller, app: &App) -> Option<usize> {
    // The admin may settle anyone's; a client only its own (open mode: the anonymous one).
    if caller.admin {
        None
    } else {
        Some(caller.client.unwrap_or(app.config().clients.len()))
    }
}

pub async fn release(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: SettleBody = parse(&body)?;
    app.gate.settle_hold(&b.reservation_id, owner(&caller, &app), None)?;
    Ok(Json(json!({"reservation_id": b.reservation_id, "state": "released"})))
}

pub async fn consume(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: SettleBody = parse(&body)?;
    let used = match (b.cost_usd, b.prompt_tokens, b.completion_tokens) {
        (Some(usd), None, None) => Used::Cost(micros("cost_usd", usd)?),
        (None, p, c) if p.is_some() || c.is_some() => {
            Used::Tokens { prompt: p.unwrap_or(0), completion: c.unwrap_or(0) }
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give what was used: prompt_tokens and completion_tokens, or cost_usd".into(),
            ))
        }
    };
    let cost = app.gate.settle_hold(&b.reservation_id, owner(&caller, &app), Some(used))?;
    Ok(Json(json!({"reservation_id": b.reservation_id, "state": "consumed", "cost_usd": micros_to_usd(cost)})))
}
