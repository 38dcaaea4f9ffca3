//! Drivers are the only code that touches the outside world for a service: processes,
//! sockets, health endpoints. The service owner calls them; the HTTP layer never does.

pub mod health;
pub mod logs;
pub mod orphans;
pub mod process;
pub mod procfs;

/// Why a start did not produce a ready service.
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub reason: String,
    /// The last lines the service wrote, for the error the held requests get.
    pub log_tail: Vec<String>,
}
