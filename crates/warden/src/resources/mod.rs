//! Memory orchestration: how much there is (`capacity`: RAM from /proc and cgroups, VRAM from
//! the GPU driver), what a service needs (`estimate`, then measured), and the coordinator task
//! that makes room before a start, offloads, and reloads (`coordinator`). What to offload is
//! decided by the pure planner (`policy::planner`).

pub mod capacity;
pub mod coordinator;
pub mod estimate;
