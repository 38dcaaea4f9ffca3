//! The admin API (`/admin/*`, behind the admin token): services and idle settings
//! (`services.rs`), memory (`resources.rs`), the scheduler, alerts and usage (`scheduler.rs`),
//! config reload (`reload.rs`), the dashboard's reads (`activity.rs`).
//! Reads come from published state; changes go to the owners as commands, never around them.

mod activity;
mod events;
mod pressure;
mod reload;
mod resources;
mod scheduler;
mod services;

use std::sync::Arc;

use axum::Router;

use crate::app::App;
pub use services::service_status;

pub fn routes() -> Router<Arc<App>> {
    services::routes()
        .merge(resources::routes())
        .merge(scheduler::routes())
        .merge(pressure::routes())
        .merge(events::routes())
        .merge(reload::routes())
        .merge(activity::routes())
}
