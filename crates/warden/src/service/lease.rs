//! A lease: held by a request from the moment it gets a running service until its response
//! body (stream included) ends. The idle clock starts when the last lease drops.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Live, Shared};

pub struct Lease {
    shared: Arc<Shared>,
    upstream: Arc<str>,
    /// `upstream` as an address, for a local service reached directly (see `Live::direct`).
    direct: Option<std::net::SocketAddr>,
    /// The model this request uses, if it named one: its keep-alive clock waits for this too.
    model: Option<usize>,
}

impl Lease {
    /// Called with the service's `Live` locked and its state running.
    pub(super) fn take(shared: Arc<Shared>, live: &mut Live, upstream: Arc<str>, model: Option<usize>) -> Lease {
        let now = SystemTime::now();
        live.in_flight += 1;
        live.requests_total += 1;
        live.last_used = Some(now);
        if let Some(m) = model {
            live.models[m].in_flight += 1;
            live.models[m].last_used = Some(now);
        }
        Lease { shared, upstream, direct: live.direct, model }
    }

    /// The service's settings now. A guard, not an `Arc` clone: this is read on every request,
    /// from every thread, and a clone's count is one cache line they would all write.
    pub fn config(&self) -> arc_swap::Guard<Arc<crate::config::ServiceConfig>> {
        self.shared.config.load()
    }

    /// "host:port" of the service.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The service's address when it is reached on this thread's own connections.
    pub fn direct(&self) -> Option<std::net::SocketAddr> {
        self.direct
    }

    /// The pool that reaches this service from this thread (its own where it trusts its own CA).
    pub fn client(&self) -> &crate::base::http::HttpClient {
        self.shared.client.here()
    }

    pub fn service(&self) -> &str {
        self.shared.name()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut live = self.shared.live();
        let (now, wall) = (Instant::now(), SystemTime::now());
        live.in_flight -= 1;
        live.last_used = Some(wall);
        if live.in_flight == 0 {
            live.idle_since = Some(now);
            // An owner retiring after a reload waits for this (a stored permit is harmless).
            self.shared.lease_dropped.notify_one();
        }
        if let Some(m) = self.model {
            let model = &mut live.models[m];
            model.in_flight -= 1;
            model.last_used = Some(wall);
            if model.in_flight == 0 {
                model.idle_since = Some(now);
            }
        }
    }
}
