//! Stage 6: admission. The class comes from `x-warden-priority`; the gate reserves the
//! estimate's cost against the client's budget and gives the request its turn in the priority
//! queue (bounded by `max_queue` and `queue_timeout`). The ticket holds the capacity until the
//! answer's body ends.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName};
use policy::class::{self, Class};

use policy::estimate::Estimate;

use super::Route;
use crate::admission::gate::{Ask, Ticket};
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;

/// `x-warden-priority` as a `HeaderName` made once: a lookup by `&str` parses and hashes the
/// name each time, and this runs on every request.
static PRIORITY_HEADER: HeaderName = HeaderName::from_static(class::HEADER);

/// The request's class from its `x-warden-priority` header (default `normal`).
pub fn class_of(app: &App, headers: &HeaderMap) -> Result<Class, ApiError> {
    match headers.get(&PRIORITY_HEADER) {
        None => Ok(Class::Normal),
        Some(v) => parse_class(app, v.to_str().unwrap_or("(not text)"), class::HEADER),
    }
}

/// A class by name; 400 naming `field` and the classes otherwise. `deferred` without an
/// off-peak window could never run: refused now rather than after `queue_timeout`.
pub fn parse_class(app: &App, name: &str, field: &str) -> Result<Class, ApiError> {
    let class = Class::parse(name)
        .ok_or_else(|| ApiError::BadRequest(format!("{field} must be one of {} (got {name:?})", Class::names())))?;
    if class == Class::Deferred && app.config().scheduler.off_peak.is_none() {
        return Err(ApiError::BadRequest(format!(
            "{field}: deferred requests run only inside [scheduler].off_peak, and no off_peak window is configured; \
             use batch, or set off_peak (e.g. \"22:00-06:00\")"
        )));
    }
    Ok(class)
}

/// Reserves and queues a request of `class` (`class_of` its headers) and waits for its turn.
pub async fn admit(
    app: &Arc<App>,
    caller: &Caller,
    class: Class,
    route: &Route,
    estimate: Estimate,
    request_id: &Arc<str>,
) -> Result<Ticket, ApiError> {
    if matches!(class, Class::Batch | Class::Deferred) && app.pressure.cpu_busy() {
        app.pressure.deferred.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let ask = Ask {
        client: caller.client,
        class,
        service: route.service,
        model: route.model.as_ref().map(|m| m.name.clone()),
        estimate,
        request_id: request_id.clone(),
    };
    app.gate.admit(ask).await
}
