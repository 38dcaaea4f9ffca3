//! The idle monitor: every `check_interval`, asks owners to unload models whose keep-alive ran
//! out and to stop services idle past their timeout.
//! The owner re-checks under the lease lock, so a request that arrives meanwhile wins.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use policy::idle::{decide, decide_model, IdleDecision, ModelDecision};

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    app.monitor_running.store(true, Ordering::Relaxed);
    loop {
        let interval = app.idle_settings().check_interval;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // New settings: start a fresh interval with them.
            _ = app.idle_changed.notified() => continue,
            _ = tokio::time::sleep(interval) => {}
        }
        let settings = app.idle_settings();
        let now = Instant::now();
        for svc in app.services().iter().filter(|s| !s.shared.retired()) {
            // Servers may load or evict models on their own: believe what they report.
            svc.reconcile();
            for (model, inputs) in super::inputs::models(svc, &settings).iter().enumerate() {
                if let ModelDecision::Unload { idle_for } = decide_model(inputs, now) {
                    svc.request_model_unload(model, idle_for);
                }
            }
            if let IdleDecision::Sleep { idle_for } = decide(&super::inputs::service(svc, &settings), now) {
                svc.request_idle_stop(idle_for);
            }
        }
    }
    app.monitor_running.store(false, Ordering::Relaxed);
}
