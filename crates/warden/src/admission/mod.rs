//! Admission: between routing and waking a service, a request is let in by its client's
//! budget (money reserved up front), the priority queue (concurrency, pool tokens, class) and
//! then released, settled and recorded when its response ends.
//!
//! The decisions are pure and live in the `warden-policy` crate (`class`, `budget`, `bucket`,
//! `queue`, `estimate`); `gate` owns their state and does the waiting.

pub mod gate;
