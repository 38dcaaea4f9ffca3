//! Stage 7: a lease on the service. A running service (with the model loaded) is leased at
//! once; otherwise its owner wakes it (making memory room first) and holds the request,
//! bounded by `max_queue` and `start_timeout`.

use super::Route;
use crate::app::App;
use crate::base::errors::ApiError;
use crate::service::Acquired;

pub async fn acquire(app: &App, route: &Route) -> Result<Acquired, ApiError> {
    let svc = &app.services()[route.service];
    svc.acquire(route.model.as_ref().map(|m| m.index))
        .await
        .map_err(|why| ApiError::Unavailable { service: svc.name().to_string(), why })
}
