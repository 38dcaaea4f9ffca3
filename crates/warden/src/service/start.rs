//! Starting a service: room first (the coordinator offloads what must go), then the driver
//! starts it and waits until it is healthy, all within one deadline (`start_timeout`). Run by
//! the owner task; the outcome comes back to its loop as `on_start_result`.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::owner::Owner;
use super::room::RoomRequest;
use crate::config::{Desired, ServiceKind};
use crate::driver::{self, Running, StartContext, StartFailure};
use policy::lifecycle::{start_backoff, Event};

impl Owner {
    pub(super) fn on_start_result(&mut self, result: Result<Running, StartFailure>) {
        let began = self.start_began.take();
        let took = began.map(|t| t.elapsed()).unwrap_or_default();
        match result {
            Ok(running) => {
                let upstream = match (&self.shared.config().kind, &self.shared.config().upstream) {
                    (_, Some(up)) => up.clone(),
                    (ServiceKind::Process(_), None) => format!("http://127.0.0.1:{}", self.port_in_use()),
                    (ServiceKind::Container(_) | ServiceKind::Remote(_), None) => {
                        unreachable!("containers and remotes always have a url")
                    }
                };
                info!("Service {} is ready after {} ms (pid {:?})", self.name(), took.as_millis(), running.pid());
                // A hosted API is up from the start: it has no cold start to count.
                if began.is_some() {
                    self.ctx.metrics.started(self.name(), took);
                }
                {
                    let now = Instant::now();
                    let mut live = self.shared.live();
                    live.pid = running.pid();
                    live.direct = crate::base::pool::direct(&upstream);
                    live.upstream = Some(upstream.into());
                    live.meter = running.meter(self.shared.config().device);
                    live.idle_since = Some(now);
                    live.running_since = Some(now);
                    live.last_start_ms = Some(took.as_millis() as u64);
                    live.last_error = None;
                    live.starts_total += 1;
                    for m in &mut live.models {
                        m.idle_since = Some(now);
                    }
                }
                self.running = Some(running);
                self.last_failure = None;
                self.apply(Event::StartSucceeded);
                // Learn what a multi-model server offers and has loaded.
                self.reconcile();
                self.learn_slots();
            }
            Err(failure) => {
                warn!("Service {} failed to start: {}", self.name(), failure.reason);
                {
                    let mut live = self.shared.live();
                    live.last_error = Some(failure.reason.clone());
                    live.start_failures_total += 1;
                }
                self.last_failure = Some(failure.clone());
                self.apply(Event::StartFailed);
                if self.shared.config().desired == Desired::On && !self.shutting_down && self.retiring.is_none() {
                    self.restart_timer = Some(Box::pin(tokio::time::sleep(start_backoff(self.machine.failures()))));
                }
            }
        }
    }

    pub(super) fn port_in_use(&self) -> u16 {
        self.shared.live().port.unwrap_or(self.shared.config().port)
    }

    /// Asks the running service how many requests it serves at once (llama-server says), for
    /// admission to pace what it sends; only where no `max_concurrent` is configured.
    fn learn_slots(&self) {
        let cfg = &self.shared.config();
        if cfg.max_concurrent.is_some() || matches!(cfg.kind, ServiceKind::Remote(_)) {
            return;
        }
        let Some(upstream) = self.shared.live().upstream.clone() else { return };
        let (client, learned, service) = (self.shared.client.here().clone(), self.ctx.learned.clone(), self.index);
        self.ctx.tasks.spawn(async move {
            if let Some(slots) = driver::health::slots(&client, &upstream).await {
                let _ = learned.send(super::owner::Learned { service, slots });
            }
        });
    }

    pub(super) fn begin_start(&mut self) {
        let cfg = self.shared.config().clone();
        info!("Starting service {}", cfg.name);
        self.generation += 1;
        self.start_began = Some(Instant::now());
        let port = if cfg.port != 0 { cfg.port } else { driver::process::free_port().unwrap_or(0) };
        if matches!(cfg.kind, ServiceKind::Process(_)) {
            self.shared.live().port = Some(port);
        }
        let log = self.shared.log.clone();
        let ctx = self.ctx.clone();
        let index = self.index;
        let predecessor = self.predecessor.clone();
        self.starting = Some(Box::pin(async move {
            let deadline = Instant::now() + cfg.start_timeout;
            let start = async {
                // A service a reload changed starts once its old run has drained and stopped
                // (its port, its memory, its cgroup).
                if let Some(before) = predecessor {
                    before.cancelled().await;
                }
                // Room first (offloading what must go), then the start itself; one deadline.
                let (reply, granted) = oneshot::channel();
                let _ = ctx.room.send(RoomRequest { service: index, deadline, reply });
                granted.await.unwrap_or_else(|_| Err(StartFailure::transient("warden is shutting down")))?;
                driver::start(StartContext {
                    config: &cfg,
                    port,
                    secret_env: &ctx.secret_env.load(),
                    state_dir: &ctx.state_dir,
                    log: &log,
                    client: ctx.client.here(),
                    tasks: &ctx.tasks,
                })
                .await
            };
            match tokio::time::timeout(cfg.start_timeout, start).await {
                Ok(result) => result,
                Err(_) => {
                    // The start future (and with it the process group) is dropped: killed.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(StartFailure {
                        log_tail: log.tail(20),
                        ..StartFailure::transient(format!("not healthy within start_timeout ({:?})", cfg.start_timeout))
                    })
                }
            }
        }));
    }
}
