//! Stage 4: a client may use only the models its config allows (403).

use super::Route;
use crate::app::App;
use crate::base::caller::Caller;
use crate::base::errors::ApiError;

pub fn check(app: &App, caller: &Caller, route: &Route) -> Result<(), ApiError> {
    let config = app.config();
    let (Some(client), Some(model)) = (caller.client.map(|i| &config.clients[i]), &route.model) else {
        return Ok(());
    };
    if client.may_use(&model.name) {
        Ok(())
    } else {
        Err(ApiError::Forbidden { client: client.name.clone(), model: model.name.to_string() })
    }
}
