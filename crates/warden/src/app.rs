//! The state the HTTP handlers and background loops share, and routing of names to services.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;
use tokio::sync::Notify;

use crate::admission::gate::{Ask, Gate, Ticket};
use crate::base::caller::Caller;
use crate::server::api::jobs::Jobs;
use policy::class::{self, Class};
use policy::estimate::Estimate;

use crate::base::errors::ApiError;
use crate::base::http::HttpClient;
use crate::config::{Config, Desired, IdleConfig};
use crate::resources::coordinator::Coordinator;
use crate::service::directory::Directory;
use crate::service::ServiceHandle;
use policy::idle::{IdleInputs, ModelInputs};

pub struct App {
    pub config: Arc<Config>,
    /// One handle per configured service, in the order of `config.services`.
    pub services: Vec<ServiceHandle>,
    /// Model name → service, configured and discovered.
    pub directory: Arc<Directory>,
    pub coordinator: Arc<Coordinator>,
    pub client: HttpClient,
    /// Idle settings as now in force (changeable through `POST /admin/settings`).
    idle: Mutex<IdleConfig>,
    /// Wakes the idle monitor when the settings change, so a new interval applies at once.
    pub idle_changed: Notify,
    pub monitor_running: AtomicBool,
    /// Budgets, the priority queue and usage records.
    pub gate: Arc<Gate>,
    /// Async jobs from `/api/queue/enqueue`.
    pub jobs: Arc<Jobs>,
    pub started: Instant,
}

impl App {
    pub fn new(
        config: Arc<Config>,
        services: Vec<ServiceHandle>,
        directory: Arc<Directory>,
        coordinator: Arc<Coordinator>,
        client: HttpClient,
        gate: Arc<Gate>,
        jobs: Arc<Jobs>,
    ) -> Self {
        App {
            gate,
            jobs,
            idle: Mutex::new(config.idle),
            config,
            services,
            directory,
            coordinator,
            client,
            idle_changed: Notify::new(),
            monitor_running: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    pub fn idle_settings(&self) -> IdleConfig {
        *self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_idle_settings(&self, change: impl FnOnce(&mut IdleConfig)) -> IdleConfig {
        let new = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut idle);
            *idle
        };
        self.idle_changed.notify_one();
        new
    }

    /// Lets a request in: reserves its cost, waits its turn in the priority queue (bounded),
    /// and returns the ticket that holds its capacity until its response ends.
    pub async fn admit(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
        service: usize,
        model: Option<&str>,
        estimate: Estimate,
        request_id: &str,
    ) -> Result<Ticket, ApiError> {
        let class = match headers.get(class::HEADER) {
            None => Class::Normal,
            Some(v) => v.to_str().ok().and_then(Class::parse).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{} must be one of immediate, fast, normal, batch, deferred (got {v:?})",
                    class::HEADER
                ))
            })?,
        };
        let ask = Ask {
            client: caller.client,
            class,
            service,
            model: model.map(str::to_string),
            estimate,
            request_id: request_id.to_string(),
        };
        self.gate.admit(ask).await
    }

    /// 403 unless the caller may use `model`.
    pub fn check_model(&self, caller: &Caller, model: &str) -> Result<(), ApiError> {
        match caller.client.map(|i| &self.config.clients[i]) {
            Some(c) if !c.may_use(model) => {
                Err(ApiError::Forbidden { client: c.name.clone(), model: model.to_string() })
            }
            _ => Ok(()),
        }
    }

    pub fn service(&self, name: &str) -> Result<&ServiceHandle, ApiError> {
        self.config.service_index(name).map(|i| &self.services[i]).ok_or_else(|| ApiError::UnknownService {
            service: name.to_string(),
            known: self.config.services.iter().map(|s| s.name.clone()).collect(),
        })
    }

    /// The service that serves `model`, and the model's index in that service.
    pub fn route_model(&self, model: &str) -> Result<(&ServiceHandle, usize), ApiError> {
        let found = self.directory.get(model).map(|r| (&self.services[r.service], r.index));
        found.ok_or_else(|| ApiError::UnknownModel {
            model: model.to_string(),
            known: self.directory.all().into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// What the idle policy needs to know about a service right now.
    pub fn idle_inputs(&self, svc: &ServiceHandle, settings: &IdleConfig) -> IdleInputs {
        let live = svc.shared.live();
        let cfg = &svc.shared.config;
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

    /// What the keep-alive policy needs to know about each of a service's models right now.
    pub fn model_inputs(&self, svc: &ServiceHandle, settings: &IdleConfig) -> Vec<ModelInputs> {
        let cfg = &svc.shared.config;
        let service = self.idle_inputs(svc, settings);
        // Unloading a single model stops its service, so the service's own rules apply.
        let allowed = if cfg.api.multi_model() {
            settings.enabled && svc.shared.idle_sleep()
        } else {
            policy::idle::sleep_allowed(&service)
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
}
