//! The owner's handling of models inside a multi-model server (llama.cpp router, Ollama):
//! one load per model however many requests want it, unloads that never cut a request in
//! flight, and reconciling with what the server says it has loaded.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::held::{HeldRequest, Waiter};
use super::owner::Owner;
use super::stop::{StopLabel, StopWaiter};
use super::{ModelLive, StopReason, Unavailable};
use crate::config::ModelRef;
use crate::driver::models;
use policy::lifecycle::State;

/// A model operation's result, sent back to the owner by the task that ran it.
pub(crate) enum ModelResult {
    Loaded { generation: u64, model: usize, result: Result<(), String>, took: Duration },
    Unloaded { generation: u64, model: usize, result: Result<(), String>, idle: bool },
    Listed { generation: u64, listing: models::Listing },
}

impl Owner {
    fn model_name(&self, model: usize) -> String {
        self.shared.live().models[model].name.to_string()
    }

    /// Holds `waiter` until `model` is loaded, starting the load if none is under way.
    pub(super) fn wait_for_model(&mut self, model: usize, waiter: Waiter) {
        self.held.models[model].push(waiter);
        let already = {
            let mut live = self.shared.live();
            std::mem::replace(&mut live.models[model].changing, true)
        };
        if !already {
            self.begin_load(model);
        }
    }

    fn begin_load(&mut self, model: usize) {
        let Some(upstream) = self.shared.live().upstream.clone() else { return };
        let (client, api, name) = (self.shared.client.here().clone(), self.shared.config().api, self.model_name(model));
        let (tx, generation, within) = (self.results_tx.clone(), self.generation, self.shared.config().start_timeout);
        info!("Loading model {name} into service {}", self.name());
        self.ctx.tasks.spawn(async move {
            let t0 = Instant::now();
            let result = models::load(&client, api, &upstream, &name, within).await;
            let _ = tx.send(ModelResult::Loaded { generation, model, result, took: t0.elapsed() });
        });
    }

    pub(super) fn on_unload_model(
        &mut self,
        model: usize,
        reason: StopReason,
        done: oneshot::Sender<Result<(), String>>,
    ) {
        let idle = matches!(reason, StopReason::Idle { .. });
        if !self.shared.config().api.multi_model() {
            // A single-model service unloads its model by stopping.
            let label = StopLabel::IdleModel(self.model_name(model));
            self.on_stop(reason, StopWaiter::Unload(done), label);
            return;
        }
        let name = self.model_name(model);
        let upstream = {
            let mut live = self.shared.live();
            let m = &live.models[model];
            if live.state != State::Running || !m.loaded {
                drop(live);
                let _ = done.send(Ok(()));
                return;
            }
            if m.changing {
                drop(live);
                let _ = done.send(Err(format!("model {name} is being loaded or unloaded")));
                return;
            }
            // An idle unload re-checks under the lease lock; marking the model as changing keeps
            // new requests off the fast path until it is done.
            if idle && (m.in_flight > 0 || !self.held.models[model].is_empty()) {
                drop(live);
                let _ = done.send(Ok(()));
                return;
            }
            live.models[model].changing = true;
            live.upstream.clone()
        };
        let Some(upstream) = upstream else { return };
        if idle {
            info!("Model {name} keep-alive expired, unloading...");
        } else {
            info!("Unloading model {name} (requested)");
        }
        self.unload_waiters[model].push(done);
        let (client, api, tx, generation) =
            (self.shared.client.here().clone(), self.shared.config().api, self.results_tx.clone(), self.generation);
        let within = self.shared.config().stop_timeout + Duration::from_secs(10);
        self.ctx.tasks.spawn(async move {
            let result = models::unload(&client, api, &upstream, &name, within).await;
            let _ = tx.send(ModelResult::Unloaded { generation, model, result, idle });
        });
    }

    /// Asks the server what it offers and has loaded (it may load or evict on its own).
    pub(super) fn reconcile(&mut self) {
        if !self.shared.config().api.multi_model() {
            return;
        }
        let Some(upstream) = self.shared.live().upstream.clone() else { return };
        let (client, api, tx, generation) =
            (self.shared.client.here().clone(), self.shared.config().api, self.results_tx.clone(), self.generation);
        self.ctx.tasks.spawn(async move {
            if let Ok(listing) = models::listing(&client, api, &upstream).await {
                let _ = tx.send(ModelResult::Listed { generation, listing });
            }
        });
    }

    pub(super) fn on_model_result(&mut self, result: ModelResult) {
        match result {
            ModelResult::Loaded { generation, model, result, took } if generation == self.generation => {
                let name = self.model_name(model);
                {
                    let mut live = self.shared.live();
                    let m = &mut live.models[model];
                    m.changing = false;
                    m.loaded = result.is_ok();
                    m.idle_since = Some(Instant::now());
                }
                let waiters = std::mem::take(&mut self.held.models[model]);
                match result {
                    Ok(()) => {
                        info!("Model {name} loaded in {} ms", took.as_millis());
                        let data = serde_json::json!({"model": name, "service": self.name(), "loaded": true,
                            "took_ms": took.as_millis() as u64});
                        self.ctx.events.emit("model", data);
                        self.lease_to(
                            waiters.into_iter().map(|reply| HeldRequest { model: Some(model), reply }).collect(),
                        );
                    }
                    Err(e) => {
                        warn!("Model {name} failed to load: {e}");
                        for w in waiters {
                            let _ = w.send(Err(Unavailable::StartFailed {
                                reason: format!("model {name} failed to load: {e}"),
                                log_tail: self.shared.log.tail(20),
                                retry_after: Duration::from_secs(1),
                                permanent: false,
                            }));
                        }
                    }
                }
                self.publish_queue();
            }
            ModelResult::Unloaded { generation, model, result, idle } if generation == self.generation => {
                let name = self.model_name(model);
                {
                    let mut live = self.shared.live();
                    live.models[model].changing = false;
                    if result.is_ok() {
                        live.models[model].loaded = false;
                        // A multi-model server's own idle clock restarts when a model leaves.
                        if live.in_flight == 0 {
                            live.idle_since = Some(Instant::now());
                        }
                    }
                }
                match &result {
                    Ok(()) => {
                        if idle {
                            info!("Successfully unloaded idle model {name}");
                        } else {
                            info!("Unloaded model {name}");
                        }
                        let data =
                            serde_json::json!({"model": name, "service": self.name(), "loaded": false, "idle": idle});
                        self.ctx.events.emit("model", data);
                    }
                    Err(e) => warn!("Model {name} failed to unload: {e}"),
                }
                for w in self.unload_waiters[model].drain(..) {
                    let _ = w.send(result.clone());
                }
                // Requests that arrived during the unload load it again.
                if !self.held.models[model].is_empty() {
                    self.shared.live().models[model].changing = true;
                    self.begin_load(model);
                }
            }
            ModelResult::Listed { generation, listing } if generation == self.generation => {
                for name in listing.available.iter().chain(&listing.loaded) {
                    self.discover(name);
                }
                let mut live = self.shared.live();
                for m in &mut live.models {
                    if m.changing {
                        continue;
                    }
                    let now_loaded = listing.loaded.iter().any(|l| models::same_model(l, &m.name));
                    if m.loaded != now_loaded {
                        info!(
                            "Model {} is {} according to its server",
                            m.name,
                            if now_loaded { "loaded" } else { "unloaded" }
                        );
                        m.loaded = now_loaded;
                        m.idle_since = Some(Instant::now());
                    }
                }
            }
            // From a run that has since ended.
            _ => {}
        }
    }

    /// A model the server offers that the config does not name: track it and route to it.
    fn discover(&mut self, name: &str) {
        let index = {
            let mut live = self.shared.live();
            if live.models.iter().any(|m| models::same_model(&m.name, name)) {
                return;
            }
            live.models.push(ModelLive::new(name, None, true));
            live.models.len() - 1
        };
        self.held.models.push(Vec::new());
        self.unload_waiters.push(Vec::new());
        let at = ModelRef { service: self.index, index };
        let routed = self.ctx.directory.add(name, at);
        // Ollama clients say "llama3" for "llama3:latest".
        if let Some(short) = name.strip_suffix(":latest") {
            self.ctx.directory.add(short, at);
        }
        if routed {
            info!("Discovered model {name} on service {}", self.name());
        } else {
            info!("Service {} also offers model {name}, which another service serves", self.name());
        }
    }
}
