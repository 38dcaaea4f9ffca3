//! Admission: between routing and waking a service, a request is let in by its client's
//! budget (money reserved up front), the priority queue (concurrency, pool tokens, class) and
//! then released, settled and recorded when its response ends.
//!
//! The decisions are pure (`class`, `budget`, `bucket`, `queue`); `gate` does the waiting.

pub mod bucket;
pub mod budget;
pub mod class;
pub mod clock;
pub mod estimate;
pub mod gate;
pub mod queue;
