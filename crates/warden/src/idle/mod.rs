//! Idle sleep: the monitor loop that applies the pure policy (`policy::idle`).

pub mod monitor;
