//! What the optimizer would do for a request, changing nothing (`POST /api/optimize/analyze`):
//! the stages up to the estimate, then whether the cache would answer it and whether it would
//! be downgraded, with its estimated cost with and without them.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use serde::Serialize;

use super::{cache, downgrade, Endpoint};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;
use policy::budget::Micros;

#[derive(Debug, Serialize)]
pub struct Analysis {
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// At the asked model's price.
    pub cost_without_micros: Micros,
    /// With the strategies that apply.
    pub cost_with_micros: Micros,
    pub strategies: Vec<Strategy>,
}

#[derive(Debug, Serialize)]
pub struct Strategy {
    pub name: &'static str,
    pub applies: bool,
    pub why: String,
}

/// `priority`: the class the request would name (`x-warden-priority`).
pub fn analyze(app: &App, caller: &Caller, priority: Option<&str>, body: Bytes) -> Result<Analysis, ApiError> {
    let endpoint = Endpoint::for_body(&body);
    let mut headers = HeaderMap::new();
    if let Some(p) = priority {
        let v = HeaderValue::from_str(p).map_err(|_| ApiError::BadRequest(format!("priority {p:?} is not text")))?;
        headers.insert(policy::class::HEADER, v);
        super::admit::class_of(app, &headers)?;
    }
    let (route, e) = super::dry_run(app, caller, endpoint, body.clone())?;
    let model = route.model.as_ref().map_or(String::new(), |m| m.name.to_string());
    let without = app.gate.cost(Some(&model), e.prompt_tokens, e.completion_tokens);
    let mut strategies = Vec::new();
    let mut with = without;

    let down = downgrade::choose(app, caller, &headers, &route);
    let (served, body) = match &down {
        Some((r, d)) => (r.clone(), super::ladder::retarget(&body, &d.to)),
        None => (route.clone(), body),
    };
    strategies.push(match &down {
        Some((_, d)) => {
            with = app.gate.cost(Some(&d.to), e.prompt_tokens, e.completion_tokens);
            Strategy { name: "downgrade", applies: true, why: d.header() }
        }
        None => Strategy { name: "downgrade", applies: false, why: "no [optimizer] rule sends it down a rung".into() },
    });
    let hit = match cache::plan(app, caller, &headers, endpoint.path(), &served, &body) {
        None => Strategy { name: "cache", applies: false, why: "the cache is off".into() },
        Some(cache::Plan::Bypass) => {
            Strategy { name: "cache", applies: false, why: "not cacheable under its model's `when`".into() }
        }
        Some(cache::Plan::Use { key, .. }) => match app.cache.as_ref().is_some_and(|c| c.contains(&key)) {
            true => Strategy { name: "cache", applies: true, why: "an identical answer is stored".into() },
            false => {
                Strategy { name: "cache", applies: false, why: "cacheable; no identical answer stored yet".into() }
            }
        },
    };
    if hit.applies {
        with = 0;
    }
    strategies.push(hit);
    strategies.push(Strategy {
        name: "compression",
        applies: true,
        why: "answers over 1 KiB are compressed for clients that accept it (not streams)".into(),
    });
    Ok(Analysis {
        model,
        prompt_tokens: e.prompt_tokens,
        completion_tokens: e.completion_tokens,
        cost_without_micros: without,
        cost_with_micros: with,
        strategies,
    })
}
