//! Memory orchestration: the pure eviction planner (more to come: capacity detection, the
//! coordinator that offloads and reloads).

pub mod planner;
