//! Idle sleep: the pure policy and the monitor loop that applies it.

pub mod monitor;
pub mod policy;
