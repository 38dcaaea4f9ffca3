//! Idle sleep: the monitor loop that applies the pure policy (`policy::idle`) to inputs read
//! from each service (`inputs`).

pub mod inputs;
pub mod monitor;
