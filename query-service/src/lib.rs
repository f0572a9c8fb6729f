//! The read side's HTTP API: REST and GraphQL over the PostgreSQL read models that the
//! projectors build. It reads the log only for the operators' audit endpoints
//! (`/v1/audit/*`, through `flowline-audit`).
//!
//! `Application::build` binds (port 0 allowed), so tests run the real service in-process.

mod api;
mod application;
mod audit;
mod budgets;
pub mod cache;
pub mod changes;
pub mod config;
pub mod consistency;
mod error;
mod graph_rest;
mod graphql;
mod log_cursor;
mod personal;
mod read_model;
mod rest;
mod step_output;
mod subscriptions;
mod usage;

pub use application::Application;
pub use config::ReadLimits;
pub use config::{Config, GraphqlLimits};
pub use error::{Error, Result};
