//! What every layer uses, at the bottom of the crate: the error type with its one status
//! mapping (`errors`), the pooled HTTP client and request ids (`http`), the
//! proxy's own keep-alive connections to local services (`pool`), who is asking
//! (`caller`), reads of the wall clock (`clock`), the event hub (`events`), and the histograms
//! `/metrics` shows (`metrics`). Nothing here imports from another module
//! of warden, so any module may import from here.

pub mod caller;
pub mod clock;
pub mod errors;
pub mod events;
pub mod http;
pub mod metrics;
pub mod pool;
