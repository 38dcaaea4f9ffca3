//! The last step of a request: what it used and cost (`usage`), written durably (`store`),
//! and the alerts raised along the way (`alerts`).

pub mod alerts;
pub mod performance;
pub mod recent;
pub mod savings;
pub mod store;
pub mod usage;
