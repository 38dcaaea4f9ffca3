//! Stopping a service: the guarded stop (idle, offload: it gives way to a request that slipped
//! in), the plain stop (admin, shutdown), and what happens once it has stopped or exited on
//! its own.

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::owner::Owner;
use super::{StopReason, Unavailable};
use crate::config::Desired;
use crate::driver::Exit;
use policy::idle::human_idle;
use policy::lifecycle::{Event, State};

/// A pinned (`desired = "on"`) service that ended on its own is started again after this.
const PINNED_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Who waits for a stop to finish, and what they are told.
pub(super) enum StopWaiter {
    Stop(oneshot::Sender<()>),
    Unload(oneshot::Sender<Result<(), String>>),
}

/// What a guarded stop is logged as when it finishes.
#[derive(PartialEq, Eq)]
pub(super) enum StopLabel {
    Plain,
    IdleService,
    /// A single-model service stopped because its model's keep-alive ran out.
    IdleModel(String),
    /// Stopped by the coordinator to make room.
    Offloaded,
}

impl StopWaiter {
    pub(super) fn finish(self) {
        match self {
            StopWaiter::Stop(done) => {
                let _ = done.send(());
            }
            StopWaiter::Unload(done) => {
                let _ = done.send(Ok(()));
            }
        }
    }
}

impl Owner {
    /// `label` says how a successful idle stop is logged (a service, or a single model).
    pub(super) fn on_stop(&mut self, reason: StopReason, done: StopWaiter, label: StopLabel) {
        let guarded = match reason {
            StopReason::Idle { idle_for } => Some(Some(idle_for)),
            StopReason::Offload => Some(None),
            StopReason::Admin => None,
        };
        if let Some(idle_for) = guarded {
            // Re-check under the lease lock: a request may have arrived since the monitor looked.
            // Marking the state stopping under that same lock keeps new leases off the fast path.
            let mut live = self.shared.live();
            if live.state != State::Running || live.in_flight > 0 || !self.held.is_empty() {
                drop(live);
                done.finish();
                return;
            }
            live.state = State::Stopping;
            drop(live);
            let label = if reason == StopReason::Offload { StopLabel::Offloaded } else { label };
            match (&label, idle_for) {
                (StopLabel::IdleModel(model), _) => info!("Model {model} keep-alive expired, unloading..."),
                (StopLabel::IdleService, Some(idle_for)) => {
                    info!("Service {} has been idle for {}, stopping...", self.name(), human_idle(idle_for))
                }
                _ => {}
            }
            self.idle_stop = label;
        } else {
            self.idle_stop = StopLabel::Plain;
            info!("Stopping service {} (requested)", self.name());
        }
        self.restart_timer = None;
        self.apply(Event::StopRequested);
        if self.machine.state() == State::Stopping {
            self.stop_waiters.push(done);
        } else {
            self.idle_stop = StopLabel::Plain;
            done.finish();
        }
    }

    pub(super) fn on_stopped(&mut self) {
        self.clear_running();
        match std::mem::replace(&mut self.idle_stop, StopLabel::Plain) {
            StopLabel::IdleService => info!("Successfully stopped idle service {}", self.name()),
            StopLabel::IdleModel(model) => info!("Successfully unloaded idle model {model}"),
            StopLabel::Offloaded => info!("Service {} stopped (offloaded)", self.name()),
            StopLabel::Plain => info!("Service {} stopped", self.name()),
        }
        self.apply(Event::StopFinished);
        for w in self.stop_waiters.drain(..) {
            w.finish();
        }
    }

    pub(super) fn on_exit(&mut self, exit: Exit) {
        self.running = None;
        let what = if exit.failed { "exited unexpectedly" } else { "was stopped" };
        warn!("Service {} {what} ({})", self.name(), exit.reason);
        self.shared.log.note(&format!("{what} ({})", exit.reason));
        self.clear_running();
        self.shared.live().last_error = Some(format!("{what} ({})", exit.reason));
        self.apply(if exit.failed { Event::Exited } else { Event::StoppedOutside });
        // A run a reload retired is not brought back.
        if self.shared.config().desired == Desired::On && !self.shutting_down && self.retiring.is_none() {
            self.restart_timer = Some(Box::pin(tokio::time::sleep(PINNED_RESTART_DELAY)));
        }
    }

    /// The service is no longer running: forget where it was and what it had loaded.
    pub(super) fn clear_running(&mut self) {
        self.generation += 1;
        {
            let mut live = self.shared.live();
            live.pid = None;
            live.port = None;
            live.upstream = None;
            live.direct = None;
            live.meter = None;
            live.running_since = None;
            for m in &mut live.models {
                m.loaded = false;
                m.changing = false;
            }
        }
        self.fail_held_models(|| Unavailable::Stopped { reason: "the service stopped".into() });
        for waiters in &mut self.unload_waiters {
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
    }

    pub(super) fn begin_stop(&mut self) {
        // Dropping a start in progress kills its process group (ProcessHandle's Drop).
        self.starting = None;
        self.start_began = None;
        let timeout = self.shared.config().stop_timeout;
        let log = self.shared.log.clone();
        self.stopping = Some(match self.running.take() {
            Some(running) => Box::pin(async move { running.stop(timeout, &log).await }),
            None => Box::pin(std::future::ready(())),
        });
    }
}
