//! warden: wakes AI services on demand, holds requests through a cold start, streams answers
//! through, and puts idle services to sleep. See ARCHITECTURE.md for the map.

pub mod account;
pub mod admission;
pub mod app;
pub mod base;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod driver;
pub mod idle;
pub mod jobs;
pub mod pipeline;
pub mod pressure;
pub mod reload;
pub mod resources;
pub mod server;
pub mod service;
pub mod shared;
