//! The read side's HTTP API: REST and GraphQL over the PostgreSQL read models that the
//! projectors build. It never reads the log.
//!
//! `Application::build` binds (port 0 allowed), so tests run the real service in-process.

mod application;
pub mod config;
mod error;
mod graph_rest;
mod graphql;
mod read_model;
mod rest;

pub use application::Application;
pub use config::{Config, GraphqlLimits};
pub use error::{Error, Result};
