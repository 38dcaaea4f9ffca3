//! What the pure idle policy (`policy::idle`) needs to know about a service and its models,
//! read from the service's published state at one instant.

use crate::config::{Desired, IdleConfig};
use crate::service::ServiceHandle;
use policy::idle::{sleep_allowed, IdleInputs, ModelInputs};

/// The service's idle inputs under `settings` (the idle settings now in force).
pub fn service(svc: &ServiceHandle, settings: &IdleConfig) -> IdleInputs {
    let live = svc.shared.live();
    let cfg = &svc.shared.config();
    IdleInputs {
        state: live.state,
        in_flight: live.in_flight,
        queued: live.queued,
        idle_since: live.idle_since,
        global_enabled: settings.enabled,
        service_enabled: svc.shared.idle_sleep(),
        pinned: cfg.desired == Desired::On,
        timeout: cfg.idle_timeout.unwrap_or(settings.timeout),
        models_loaded: live.loaded_models(),
        multi_model: cfg.api.multi_model(),
    }
}

/// The keep-alive inputs of each of the service's models, in its model order.
pub fn models(svc: &ServiceHandle, settings: &IdleConfig) -> Vec<ModelInputs> {
    let cfg = &svc.shared.config();
    // Unloading a single model stops its service, so the service's own rules apply.
    let allowed = if cfg.api.multi_model() {
        settings.enabled && svc.shared.idle_sleep()
    } else {
        sleep_allowed(&service(svc, settings))
    };
    let live = svc.shared.live();
    live.models
        .iter()
        .enumerate()
        .map(|(i, m)| ModelInputs {
            loaded: live.model_loaded(i),
            changing: m.changing,
            in_flight: m.in_flight,
            idle_since: m.idle_since,
            keep_alive: m.keep_alive.unwrap_or(settings.keep_alive),
            allowed,
        })
        .collect()
}
