//! Config reload without a restart (`SIGHUP`, `POST /admin/reload`, `warden reload`): the file
//! is read and validated again (a bad one is refused and the running config stays), then put
//! in force at once through the owners' handles.
//!
//! - An unchanged service is not touched: same owner, same process, same leases.
//! - A changed service gets a new owner in its place; the old one takes no new requests and
//!   stops once those in flight are done, and only then may the new one start.
//! - A removed service drains and stops the same way, and keeps its place, retired.
//! - An added service gets an owner in a new place, ready to wake.
//! - Clients, tiers, pools, prices and scheduler settings go to admission, which keeps its
//!   ledgers, holds and queue (see `Gate::reconfigure`).

use std::sync::Arc;

use tracing::{info, warn};

use crate::app::App;
use crate::config::reload::{merge, Changes};
use crate::config::Config;
use crate::service::spawn_owner;

/// Reads the config file again and puts it in force; `Err` is the reason it was refused
/// (a config error names the key path and line).
pub async fn reload(app: &App) -> Result<Changes, Refused> {
    let _one = app.reloading.lock().await;
    let old = app.config();
    let path = old.source.clone().ok_or(Refused::NoFile)?;
    let new = crate::config::load(&path).map_err(|e| Refused::Invalid(format!("{}: {e}", path.display())))?;
    let (next, changes) = merge(&old, new);
    apply(app, &old, Arc::new(next))?;
    log(&changes);
    Ok(changes)
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum Refused {
    /// The file does not parse or validate.
    Invalid(String),
    /// warden was not started from a file.
    NoFile,
    /// The usage database could not be read for new clients' spend.
    State(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(e) => write!(f, "the new config is refused, the running one stays: {e}"),
            Refused::NoFile => f.write_str("this warden was not started from a config file"),
            Refused::State(e) => write!(f, "cannot read the usage database: {e}"),
        }
    }
}

fn apply(app: &App, old: &Config, next: Arc<Config>) -> Result<(), Refused> {
    // Services whose owner, runs and learned limits stay as they are: unchanged, or retuned
    // (new settings for the run as it is).
    let kept: Vec<bool> = (0..next.services.len())
        .map(|i| old.services.get(i).is_some_and(|o| crate::config::reload::tuned_only(o, &next.services[i])))
        .collect();
    // Admission first: the one step that can fail (reading new clients' spend) changes
    // nothing when it does. A service place it learns of before the handles is not routed
    // to until the config below is in force.
    app.gate.reconfigure(next.clone(), &kept).map_err(Refused::State)?;
    let fresh: Vec<usize> = (0..next.services.len()).filter(|&i| !kept[i]).collect();
    app.owner_ctx.secret_env.store(Arc::new(next.secret_env.clone()));
    app.coordinator.reconfigure(next.services.len(), &fresh);
    let mut handles = app.services().as_ref().clone();
    for (i, h) in handles.iter().enumerate() {
        if kept[i] && old.services[i] != next.services[i] {
            h.shared.retune(Arc::new(next.services[i].clone()));
        }
    }
    for &i in &fresh {
        let cfg = &next.services[i];
        let before = handles.get(i).map(|h| h.retire());
        if cfg.retired {
            continue;
        }
        let handle = spawn_owner(i, Arc::new(cfg.clone()), app.owner_ctx.clone(), before);
        match handles.get_mut(i) {
            Some(h) => *h = handle,
            None => handles.push(handle),
        }
    }
    // Handles first: whatever reads the new config below finds every place it names.
    app.services.set(handles);
    app.directory.reconfigure(&old.models, next.models.clone(), |s| kept.get(s).copied().unwrap_or(false));
    app.pressure.set_config(next.clone());
    if next.idle != old.idle {
        app.update_idle_settings(|idle| *idle = next.idle);
    }
    app.set_config(next);
    Ok(())
}

fn log(ch: &Changes) {
    if ch.nothing() {
        info!("Config reloaded: nothing changed");
    } else {
        let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
        info!(
            "Config reloaded: services added {}, changed {}, removed {}; clients added {}, changed {}, removed {}; sections {}",
            list(&ch.services.added),
            list(&ch.services.changed),
            list(&ch.services.removed),
            list(&ch.clients.added),
            list(&ch.clients.changed),
            list(&ch.clients.removed),
            if ch.sections.is_empty() { "-".to_string() } else { ch.sections.join(", ") },
        );
    }
    for key in &ch.need_restart {
        warn!("Config reload: {key} changed, and takes effect only after a restart");
    }
}
