//! Stage 5: what a request may use, before it runs. For a model with a price or pools, the
//! pure `policy::estimate` reads the body (prompt estimated high, output bounded by
//! `max_tokens`, which it sets when absent) and may rewrite it (ask a stream for its usage).

use axum::body::Bytes;
use policy::estimate::{prepare, prepare_ollama, Estimate};

use super::{Endpoint, Route};
use crate::app::App;

pub struct Estimated {
    pub estimate: Estimate,
    /// What to send: the client's body, or its rewrite.
    pub body: Bytes,
}

pub fn request(app: &App, route: &Route, endpoint: Endpoint, body: Bytes) -> Estimated {
    let termed = route.model.as_ref().is_some_and(|m| app.config().model_terms.contains_key(&*m.name));
    let plain = || Estimated { estimate: Estimate::default(), body: body.clone() };
    if !termed {
        return plain();
    }
    let bound = app.config().scheduler.default_max_tokens;
    let p = match endpoint.ollama() {
        true => prepare_ollama(&body, endpoint.embeds(), bound),
        false => prepare(&body, endpoint.embeds(), bound),
    };
    match p.rewritten {
        Some(b) => Estimated { estimate: p.estimate, body: b.into() },
        None => Estimated { estimate: p.estimate, ..plain() },
    }
}
