//! `POST /admin/reload`: reads the config file again and puts it in force (see
//! `crate::reload`); the answer says what changed. A refused file is a 400 naming the key
//! path and line, and the running config stays.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::App;
use crate::base::errors::ApiError;
use crate::reload::{reload, Refused};

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/admin/reload", post(reload_now))
}

async fn reload_now(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    match reload(&app).await {
        Ok(changes) => Ok(Json(json!({"reloaded": true, "changed": !changes.nothing(), "changes": changes}))),
        Err(e @ (Refused::Invalid(_) | Refused::NoFile)) => Err(ApiError::InvalidConfig(e.to_string())),
        Err(e @ Refused::State(_)) => Err(ApiError::Internal(e.to_string())),
    }
}
