//! How a start asks for memory room: the owner sends a [`RoomRequest`] to the coordinator task
//! (`resources::coordinator`) and awaits its reply. The coordinator depends on services (it
//! reads their state and stops victims through their handles); services know only this
//! channel, so neither imports the other's internals.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::driver::StartFailure;

/// "Service `service` wants to start; make room by `deadline`."
pub struct RoomRequest {
    /// The service's index in the config.
    pub service: usize,
    /// The start's deadline: room-making and the start itself share `start_timeout`.
    pub deadline: Instant,
    /// Ok once room is granted; Err with why it cannot be (never fits: permanent; only pinned
    /// services could make room: transient). Dropped unanswered if the start is abandoned.
    pub reply: oneshot::Sender<Result<(), StartFailure>>,
}

pub type RoomTx = mpsc::UnboundedSender<RoomRequest>;
pub type RoomRx = mpsc::UnboundedReceiver<RoomRequest>;
