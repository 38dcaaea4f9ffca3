//! Memory orchestration: how much there is (`capacity`), what a service needs (`estimate`, then
//! measured), what to offload (`planner`, pure), and the coordinator that offloads, starts and
//! reloads (`coordinator`).

pub mod capacity;
pub mod coordinator;
pub mod estimate;
pub mod nvml;
