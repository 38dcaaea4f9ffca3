//! Stage 3: which service serves the request. Model names go through the directory (the
//! config's models plus those discovered on multi-model servers); passthrough names a service.

use std::sync::Arc;

use crate::app::App;
use crate::base::errors::ApiError;

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into `App::services` (and `Config::services`).
    pub service: usize,
    /// The model asked for; None for passthrough.
    pub model: Option<RoutedModel>,
}

#[derive(Debug, Clone)]
pub struct RoutedModel {
    pub name: Arc<str>,
    /// The model's place in its service's models (its `ModelLive`).
    pub index: usize,
}

/// The service that serves `model`; 404 listing the known models.
pub fn model(app: &App, model: &str) -> Result<Route, ApiError> {
    match app.directory.route(model) {
        Some((name, r)) => Ok(Route { service: r.service, model: Some(RoutedModel { name, index: r.index }) }),
        None => Err(ApiError::UnknownModel {
            model: model.to_string(),
            known: app.directory.all().into_iter().map(|(name, _)| name).collect(),
        }),
    }
}

/// The service named `name`; 404 listing the known services.
pub fn service(app: &App, name: &str) -> Result<Route, ApiError> {
    match app.config().service_index(name) {
        Some(service) => Ok(Route { service, model: None }),
        None => Err(ApiError::UnknownService {
            service: name.to_string(),
            known: app.config().live_services().map(|(_, s)| s.name.clone()).collect(),
        }),
    }
}
