//! warden's decisions, kept pure: state and `now` go in, a decision comes out. Nothing here
//! does IO, reads a clock or needs an async runtime, and the crate's dependencies make that a
//! compiler-checked rule rather than a convention (see ARCHITECTURE.md).
//!
//! - `lifecycle`: a service's states and the events that move it (start backoff included).
//! - `idle`: when a service sleeps and when a model unloads.
//! - `planner`: does a newcomer fit in memory, and what to offload first.
//! - `pressure`: memory level, trend and time to exhaustion, degrade at once / upgrade after a
//!   stabilization.
//! - `cache`: whether an answer may be cached, and the canonical text of its key.
//! - `batch`: the Batch API's statuses, and checking an input file before any line runs.
//! - `coalesce`: the items of an embeddings request, and a combined answer's usage shared back.
//! - admission: `class` (the five classes, the off-peak window), `budget` (micro-dollars,
//!   prices, the monthly ledger), `bucket` (token-bucket pools), `queue` (the priority
//!   dispatcher), `estimate` (what a request may use, from its body), `calendar` (UTC months).
#![forbid(unsafe_code)]

pub mod batch;
pub mod bucket;
pub mod budget;
pub mod cache;
pub mod calendar;
pub mod class;
pub mod coalesce;
pub mod estimate;
pub mod idle;
pub mod lifecycle;
pub mod planner;
pub mod pressure;
pub mod queue;
