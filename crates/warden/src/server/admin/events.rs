//! `GET /admin/events`: the event hub as server-sent events, one JSON object per event
//! (`event:` is its kind), a comment every 15 s to keep proxies from closing the stream. A
//! listener that falls behind gets a `lagged` event saying how many it missed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::app::App;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/admin/events", get(events))
}

async fn events(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (rx, draining) = (app.events.subscribe(), app.draining.clone());
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let draining = draining.clone();
        async move {
            let received = tokio::select! {
                r = rx.recv() => r,
                // warden is draining: end the stream so it does not hold the drain up.
                _ = draining.cancelled() => return None,
            };
            let event = match received {
                Ok(e) => Event::default().event(e.kind).json_data(&*e).unwrap_or_default(),
                Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(format!("{{\"missed\":{n}}}")),
                // The hub is gone: warden is stopping.
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), rx))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
