//! Usage, cost and resources: a client's spend this month, one request's cost, estimates,
//! what is available now, and whether a request could run now. Reads only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{caller_name, client_named, query};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::pipeline::{self, Endpoint, Route};
use crate::server::extract::{Path, Query};
use policy::budget::micros_to_usd;
use policy::calendar::{month_index, month_label};
use policy::estimate::Estimate;

#[derive(Deserialize)]
pub struct MonthQuery {
    /// "YYYY-MM"; this month when absent.
    month: Option<String>,
}

/// The month a query names (`?month=YYYY-MM`), this month when it names none.
pub fn month_of(q: &MonthQuery) -> Result<u32, ApiError> {
    let named = q.month.as_deref().map(parse_month).transpose()?;
    Ok(named.unwrap_or_else(|| crate::base::clock::month_and_minute().0))
}

fn parse_month(text: &str) -> Result<u32, ApiError> {
    let bad = || ApiError::BadRequest(format!("month must be YYYY-MM (got {text:?})"));
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || !(1970..=9999).contains(&y) {
        return Err(bad());
    }
    Ok(month_index(y, m))
}

/// A client's usage in a month: totals, by model, and its latest requests.
pub async fn client_usage(app: Arc<App>, client: Option<usize>, month: Option<u32>) -> Result<Value, ApiError> {
    let name = app.gate.client_name(client);
    app.gate.refresh_standing(client).await;
    let budget = app.gate.budget_view(client);
    let month = month.unwrap_or_else(|| crate::base::clock::month_and_minute().0);
    let who = name.clone();
    let (by_model, recent) =
        query(&app, move |store| Ok((store.totals(&who, month)?, store.recent(&who, 20)?))).await?;
    let sum = |f: fn(&crate::account::store::ModelTotals) -> u64| by_model.iter().map(f).sum::<u64>();
    let cost: i64 = by_model.iter().map(|t| t.cost_micros).sum();
    let by_model: Vec<Value> = by_model
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).expect("serializes");
            v["cost_usd"] = json!(micros_to_usd(t.cost_micros));
            v
        })
        .collect();
    Ok(json!({
        "client": name,
        "month": month_label(month),
        "requests": sum(|t| t.requests),
        "prompt_tokens": sum(|t| t.prompt_tokens),
        "completion_tokens": sum(|t| t.completion_tokens),
        "cost_usd": micros_to_usd(cost),
        "cost_micros": cost,
        "by_model": by_model,
        "recent": recent,
        "budget": budget,
    }))
}

pub async fn usage(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(client): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, ApiError> {
    let index = client_named(&app, &caller, &client)?;
    let month = q.month.as_deref().map(parse_month).transpose()?;
    Ok(Json(client_usage(app, index, month).await?))
}

/// This month's budget as it stands, with what is held for requests in flight.
pub async fn current(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(client): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let index = client_named(&app, &caller, &client)?;
    app.gate.refresh_standing(index).await;
    let mut view = app.gate.budget_view(index);
    let (queued, running) = app.gate.client_load(index);
    view["client"] = json!(client);
    view["queued"] = json!(queued);
    view["running"] = json!(running);
    Ok(Json(view))
}

pub async fn cost(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("request {id} (no cost recorded yet)"));
    let record = super::queue::usage_record(&app, &id).await?.ok_or_else(not_found)?;
    let owner = app.config().clients.iter().position(|c| c.name == record.client);
    if !caller.may_see(owner) {
        return Err(not_found());
    }
    let mut v = serde_json::to_value(&record).expect("serializes");
    v["cost_usd"] = json!(micros_to_usd(record.cost_micros));
    Ok(Json(v))
}

/// `?endpoint=/v1/embeddings`: which endpoint a dry run's body is for (default: by its shape).
#[derive(Deserialize)]
pub struct EndpointQuery {
    endpoint: Option<String>,
}

/// A request body (as it would be sent to /v1/…) through the pipeline's stages up to its
/// estimate: the same route, allowlist and estimate the real request would get.
fn dry_run(app: &App, caller: &Caller, q: &EndpointQuery, body: Bytes) -> Result<(Route, Estimate), ApiError> {
    let endpoint = match q.endpoint.as_deref() {
        None => Endpoint::for_body(&body),
        Some(path) => Endpoint::from_path(path)
            .ok_or_else(|| ApiError::BadRequest(format!("endpoint {path:?} is not one of {}", Endpoint::list())))?,
    };
    pipeline::dry_run(app, caller, endpoint, body)
}

/// What a request would use: tokens (prompt estimated on the high side), cost at the model's
/// price, the pool units it takes, and its service's memory. For a model with neither a price
/// nor pools nothing is reserved, so its tokens show as 0.
pub async fn cost_estimate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EndpointQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (route, e) = dry_run(&app, &caller, &q, body)?;
    let model = route.model.map(|m| m.name.to_string()).unwrap_or_default();
    let service = route.service;
    let cost = app.gate.cost(Some(&model), e.prompt_tokens, e.completion_tokens);
    let config = app.config();
    let terms = config.model_terms.get(&model);
    let price = terms.and_then(|t| t.price).map(|p| {
        json!({"input_per_1k_usd": micros_to_usd(p.input_per_1k), "output_per_1k_usd": micros_to_usd(p.output_per_1k)})
    });
    Ok(Json(json!({
        "model": model,
        "service": app.config().services[service].name,
        "prompt_tokens": e.prompt_tokens,
        "completion_tokens": e.completion_tokens,
        "cost_usd": micros_to_usd(cost),
        "cost_micros": cost,
        "price": price,
        "pools": app.gate.pool_needs(Some(&model), &e),
        "memory_bytes": app.coordinator.need(service),
    })))
}

/// Whether a request could run now, and if not, why; changes nothing.
pub async fn check(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EndpointQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (route, e) = dry_run(&app, &caller, &q, body)?;
    let model = route.model.map(|m| m.name).unwrap_or_default();
    app.gate.refresh_standing(caller.client).await;
    let mut v = app.gate.check(caller.client, route.service, Some(&model), &e);
    v["model"] = json!(model);
    Ok(Json(v))
}

/// What the caller can use now: its budget, the pools, and each service's state.
pub async fn availability(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let services: Vec<Value> = app
        .services()
        .iter()
        .enumerate()
        .filter(|(_, svc)| !svc.shared.retired())
        .map(|(i, svc)| {
            let live = svc.shared.live();
            json!({
                "name": svc.name(),
                "state": live.state.as_str(),
                "in_flight": live.in_flight,
                "max_concurrent": app.gate.service_limit(i),
            })
        })
        .collect();
    let queue = app.gate.queue_status();
    Json(json!({
        "client": caller_name(&app, &caller),
        "budget": app.gate.budget_view(caller.client),
        "pools": app.gate.pools_view(caller.client),
        "services": services,
        "queue": {"queued": queue["queued"], "running": queue["running"], "paused": queue["paused"]},
    }))
}
