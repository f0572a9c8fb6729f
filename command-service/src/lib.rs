//! The command side's HTTP API: validates requests, decides events with the `Workflow`
//! aggregate, appends them to the event store and answers once they are on the log.
//!
//! `Application::build` binds (port 0 allowed) and starts the outbox relay, so tests run
//! the real service in-process.

mod api;
mod api_keys;
mod application;
mod budgets;
mod commands;
pub mod config;
mod error;
mod idempotency;
mod privacy;
mod routes;

pub use application::Application;
pub use config::Config;
pub use error::{Error, Result};
