//! A lease: held by a request from the moment it gets a running service until its response
//! body (stream included) ends. The idle clock starts when the last lease drops.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Live, Shared};

pub struct Lease {
    shared: Arc<Shared>,
    port: u16,
}

impl Lease {
    /// Called with the service's `Live` locked and its state running.
    pub(super) fn take(shared: Arc<Shared>, live: &mut Live, port: u16) -> Lease {
        live.in_flight += 1;
        live.last_used = Some(SystemTime::now());
        Lease { shared, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn service(&self) -> &str {
        &self.shared.config.name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut live = self.shared.live();
        live.in_flight -= 1;
        live.last_used = Some(SystemTime::now());
        if live.in_flight == 0 {
            live.idle_since = Some(Instant::now());
        }
    }
}
