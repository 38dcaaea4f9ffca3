//! The optimizer API: `GET /api/optimize/stats/{client}`, this month's savings per strategy,
//! from the usage rows (so they add up to what the ledger says); `POST /api/optimize/analyze`,
//! what the optimizer would do for a request. Same access rules as `/api/usage`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::usage::{month_of, MonthQuery};
use super::{client_named, query};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use policy::budget::micros_to_usd;
use policy::calendar::month_label;

#[derive(serde::Deserialize)]
pub struct AnalyzeQuery {
    /// The class the request would name (`x-warden-priority`).
    priority: Option<String>,
}

pub async fn analyze(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AnalyzeQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // The priority may come as the query's, or as the header the real request would carry.
    let header = headers.get(policy::class::HEADER).and_then(|v| v.to_str().ok());
    let priority = q.priority.as_deref().or(header);
    let a = crate::pipeline::analyze::analyze(&app, &caller, priority, body)?;
    let mut v = serde_json::to_value(&a).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["cost_without_usd"] = json!(micros_to_usd(a.cost_without_micros));
    v["cost_with_usd"] = json!(micros_to_usd(a.cost_with_micros));
    Ok(Json(v))
}

pub async fn stats(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, ApiError> {
    let client = client_named(&app, &caller, &name)?;
    let month = month_of(&q)?;
    let who = app.gate.client_name(client);
    let s = query(&app, move |store| store.savings(&who, month)).await?;
    Ok(Json(json!({
        "client": name,
        "month": month_label(month),
        "cache": {
            "answers": s.cache_answers,
            "prompt_tokens": s.cache_prompt_tokens,
            "completion_tokens": s.cache_completion_tokens,
            "saved_usd": micros_to_usd(s.cache_saved_micros),
            "saved_micros": s.cache_saved_micros,
        },
        "downgrade": {
            "requests": s.downgrades,
            "saved_usd": micros_to_usd(s.downgrade_saved_micros),
            "saved_micros": s.downgrade_saved_micros,
        },
        "off_peak": {"requests": s.off_peak_requests},
        // Counted for the whole warden, not per client: the compression layer runs before a
        // request's client is known.
        "compression": {"bytes_saved_all_clients": app.compression_saved.load(Ordering::Relaxed)},
        // Also warden-wide: a coalesced call serves several clients at once.
        "coalesce": {"upstream_calls_saved": app.coalesced_calls_saved.load(Ordering::Relaxed)},
        "total_saved_usd": micros_to_usd(s.total_saved_micros),
        "total_saved_micros": s.total_saved_micros,
    })))
}
