//! The optimizer API: `GET /api/optimize/stats/{client}`, this month's savings per strategy,
//! from the usage rows (so they add up to what the ledger says); `POST /api/optimize/analyze`,
//! what the optimizer would do for a request; `GET /api/optimize/recommendations/{client}`,
//! what would save the client money, from its own history. Same access rules as `/api/usage`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::usage::{month_of, MonthQuery};
use super::{client_named, query};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use crate::server::extract::{Path, Query};
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

/// The client a path names (if the caller may see it) by its usage name, and the month asked.
fn client_month(app: &App, caller: &Caller, name: &str, q: &MonthQuery) -> Result<(String, u32), ApiError> {
    let client = client_named(app, caller, name)?;
    Ok((app.gate.client_name(client), month_of(q)?))
}

/// Answers shorter than this (completion tokens, on average) are likely served as well by a
/// smaller rung.
const SHORT_ANSWER: u64 = 256;

pub async fn recommendations(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, ApiError> {
    let (who, month) = client_month(&app, &caller, &name, &q)?;
    let (h, by_model) = query(&app, move |store| Ok((store.history(&who, month)?, store.totals(&who, month)?))).await?;
    let config = app.config();
    let mut recs = Vec::new();
    if h.repeats > 0 {
        let share = h.repeats as f64 / h.requests.max(1) as f64;
        let how = match config.cache.enabled {
            true => "the cache is on: set `cache = \"always\"` on these models (or send temperature 0 or a seed)",
            false => "turn on `[cache] enabled = true`",
        };
        recs.push(json!({
            "strategy": "cache",
            "what": format!("{} of {} requests ({:.0} %) repeated an earlier identical request; {how}",
                h.repeats, h.requests, share * 100.0),
            "share_repeated": share,
            "estimated_saving_usd": micros_to_usd(h.repeat_cost_micros),
            "estimated_saving_micros": h.repeat_cost_micros,
        }));
    }
    for t in &by_model {
        let Some(smaller) = config.ladders.get(&t.model).and_then(|l| l.smaller.clone()) else { continue };
        let avg = t.completion_tokens / t.requests.max(1);
        if t.requests == 0 || avg >= SHORT_ANSWER {
            continue;
        }
        let there = app.gate.cost(Some(&smaller), t.prompt_tokens, t.completion_tokens);
        let saving = (t.cost_micros - there).max(0);
        recs.push(json!({
            "strategy": "downgrade",
            "what": format!("{}'s answers average {avg} tokens: {smaller} (its smaller rung) may serve them as well; \
                 list the class in `[optimizer] downgrade_classes`, or send them to {smaller}", t.model),
            "model": t.model,
            "to": smaller,
            "estimated_saving_usd": micros_to_usd(saving),
            "estimated_saving_micros": saving,
        }));
    }
    if h.batch > 0 {
        let when = match config.scheduler.off_peak {
            Some(w) => format!("send them as `deferred` to run in the off-peak window {w}"),
            None => "set `[scheduler] off_peak` and send them as `deferred`".to_string(),
        };
        recs.push(json!({
            "strategy": "off_peak",
            "what": format!("{} batch-class requests ran at any hour; {when}, where they do not compete with \
                 interactive work", h.batch),
            "requests": h.batch,
            "cost_usd": micros_to_usd(h.batch_cost_micros),
            "estimated_saving_usd": 0.0,
            "estimated_saving_micros": 0,
        }));
    }
    Ok(Json(json!({"client": name, "month": month_label(month), "recommendations": recs})))
}

pub async fn stats(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<MonthQuery>,
) -> Result<Json<Value>, ApiError> {
    let (who, month) = client_month(&app, &caller, &name, &q)?;
    let mine = app.client_savings.of(&who);
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
        // Counted in memory since warden started (an answer's compressed size is known only
        // after its usage row is written): the client's own, and warden's for all clients.
        "compression": {
            "bytes_saved": mine.compression_bytes,
            "bytes_saved_all_clients": app.compression_saved.load(Ordering::Relaxed),
            "since": "start",
        },
        // Calls this client's requests saved by riding on another's coalesced call.
        "coalesce": {
            "upstream_calls_saved": mine.coalesced_calls,
            "upstream_calls_saved_all_clients": app.coalesced_calls_saved.load(Ordering::Relaxed),
            "since": "start",
        },
        "total_saved_usd": micros_to_usd(s.total_saved_micros),
        "total_saved_micros": s.total_saved_micros,
    })))
}
