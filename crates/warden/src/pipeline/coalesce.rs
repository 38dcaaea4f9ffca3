//! Stage 8b, embeddings coalescing (`[models.X] coalesce = "5ms"`): concurrent
//! `/v1/embeddings` requests for the model with the same parameters that arrive within the
//! window go upstream as one call (at most `coalesce_max` inputs), and the answer is split
//! back: each request gets its own vectors with its own indices, and its share of the usage
//! (in proportion to its inputs' size; the shares add up to what the upstream counted).
//!
//! Each request was admitted and leased on its own, so budgets, pools and queue order apply
//! as always; only the upstream call is shared. If the combined call fails, every request is
//! sent on its own, so one client's bad input costs no one else an answer.

use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::forward::{self, Extras, MODEL_HEADER};
use crate::account::usage::Usage;
use crate::app::App;
use crate::base::errors::ApiError;
use crate::base::http::REQUEST_ID_HEADER;
use crate::coalesce::{Answer, Outcome, Role};
use crate::config::Coalesce;
use crate::service::Acquired;
use policy::coalesce::{items, split, weight};

/// How many requests shared the upstream call that answered this one.
pub const COALESCED_HEADER: &str = "x-warden-coalesced";

/// The largest combined answer read back.
const MAX_ANSWER: usize = 256 << 20;

/// Sends an embeddings request, coalesced with others where it can be.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    app: &App,
    settings: Coalesce,
    model: &str,
    parts: Parts,
    bytes: Bytes,
    target: &str,
    acquired: Acquired,
    extras: Extras,
) -> Result<Response<Body>, ApiError> {
    let alone = |parts: Parts, acquired, extras| {
        forward::forward(Request::from_parts(parts, Body::from(bytes.clone())), target, acquired, extras)
    };
    let Ok(mut doc) = serde_json::from_slice::<Value>(&bytes) else { return alone(parts, acquired, extras).await };
    let Some((kind, items)) = items(&doc["input"]) else { return alone(parts, acquired, extras).await };
    let weight: u64 = items.iter().map(weight).sum();
    if let Some(obj) = doc.as_object_mut() {
        obj.remove("input");
    }
    // Only requests that differ in nothing but their input share a call.
    let key = format!("{model}\n{kind}\n{doc}");
    match app.coalescing.join(&key, items, weight, settings.max) {
        Role::Alone => alone(parts, acquired, extras).await,
        Role::Member(rx) => match rx.await {
            Ok(Outcome::Done(answer)) => {
                // It rode on another request's call: one upstream call saved, for its client.
                app.client_savings.coalesced(&extras.ticket.client_name());
                Ok(answered(answer, acquired, extras))
            }
            _ => alone(parts, acquired, extras).await,
        },
        Role::Lead(lead) => {
            tokio::select! {
                _ = tokio::time::sleep(wait_for(settings.window)) => {}
                _ = lead.full.notified() => {}
            }
            let batch = lead.close();
            if batch.members.is_empty() {
                // No one came: the request as it was.
                return alone(parts, acquired, extras).await;
            }
            doc["input"] = Value::Array(batch.items);
            let combined = Request::from_parts(parts.clone(), Body::from(doc.to_string()));
            let mut extras = extras;
            let id = extras.request_id.clone();
            let sent = forward::send(combined, target, &acquired.lease, &mut extras, &id).await;
            let answers = match sent {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    let body = axum::body::to_bytes(Body::new(resp.into_body()), MAX_ANSWER).await.ok();
                    body.and_then(|b| split_answer(&b, &batch.parts))
                }
                _ => None,
            };
            let Some(mut answers) = answers else {
                for m in batch.members {
                    let _ = m.send(Outcome::Alone);
                }
                return alone(parts, acquired, extras).await;
            };
            app.coalesced_calls_saved.fetch_add(batch.members.len() as u64, Ordering::Relaxed);
            let own = answers.remove(0);
            for (m, answer) in batch.members.into_iter().zip(answers) {
                let _ = m.send(Outcome::Done(answer));
            }
            Ok(answered(own, acquired, extras))
        }
    }
}

/// What the leader sleeps for a `window`. tokio's timer rounds a deadline up to its next
/// millisecond tick and the runtime parks in whole milliseconds, so a sleep ends up to about
/// 2 ms late (measured: a 4 ms sleep took 5.9 ms at p50); it is asked for that much less, so a
/// lone request waits at most its window (BENCHMARKS.md, P8).
fn wait_for(window: std::time::Duration) -> std::time::Duration {
    const LATE: std::time::Duration = std::time::Duration::from_millis(2);
    window.saturating_sub(LATE).max(window / 2)
}

/// Each part's answer from the combined one: its vectors (indices from 0, as it would have
/// got alone) and its share of the usage. None: not the answer expected.
fn split_answer(body: &[u8], parts: &[crate::coalesce::Part]) -> Option<Vec<Answer>> {
    let together = parts.len();
    let whole: Value = serde_json::from_slice(body).ok()?;
    let data = whole["data"].as_array()?;
    let total: usize = parts.iter().map(|p| p.count).sum();
    if data.len() != total {
        return None;
    }
    let mut by_index: Vec<Option<&Value>> = vec![None; total];
    for d in data {
        let i = d["index"].as_u64()? as usize;
        *by_index.get_mut(i)? = Some(d);
    }
    let tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let weights: Vec<u64> = parts.iter().map(|p| p.weight).collect();
    let shares = split(tokens, &weights);
    parts
        .iter()
        .zip(shares)
        .map(|(p, share)| {
            let mine: Option<Vec<Value>> = (0..p.count)
                .map(|k| {
                    let mut d = by_index[p.offset + k]?.clone();
                    d["index"] = json!(k);
                    Some(d)
                })
                .collect();
            let mut out = whole.clone();
            out["data"] = Value::Array(mine?);
            out["usage"] = json!({"prompt_tokens": share, "total_tokens": share});
            Some(Answer { body: Bytes::from(out.to_string()), prompt_tokens: share, together })
        })
        .collect()
}

/// A request's own answer from a coalesced call; its admission settles with its share of the
/// usage, and its lease ends, as the answer is whole already.
fn answered(answer: Answer, acquired: Acquired, mut extras: Extras) -> Response<Body> {
    extras.ticket.status = Some(200);
    extras.ticket.usage = Some(Usage { prompt_tokens: answer.prompt_tokens, completion_tokens: 0 });
    drop(extras.ticket);
    drop(acquired);
    let mut resp = Response::new(Body::from(answer.body));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = extras.model.as_deref().and_then(|m| HeaderValue::from_str(m).ok()) {
        headers.insert(MODEL_HEADER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&extras.request_id) {
        headers.insert(REQUEST_ID_HEADER.clone(), v);
    }
    headers.insert(COALESCED_HEADER, HeaderValue::from(answer.together));
    resp
}
