//! The executor: a process manager that drives every run's step graph from its events.
//!
//! It reads the published log (the event store's copy of it, partition by partition, in
//! log order; see `docs/adr/0016-executor.md`), keeps one actor per live run, asks the
//! pure scheduler of `flowline-domain` what to do next, and records every transition
//! through the aggregate and the event store's expected-version append, exactly like the
//! command service. It never writes read models. Timers (retry backoffs, attempt
//! deadlines, wait timeouts, run deadlines) are times on the runs' events, so they
//! survive restarts without a timer table. Partitions are shared between executor
//! processes through the same PostgreSQL leases as the projectors; a killed process's
//! runs continue elsewhere once its leases expire.
//!
//! Step kinds run behind one [`runners::StepRunner`] port each: `template`, `http`,
//! `mcp_tool` (through the `flowline-mcp-client` port, ADR 23) and `llm` (over
//! `flowline-model-providers`, with budgets, see `budget`, ADR 24) once their config files
//! are given.

pub mod admin;
pub mod application;
pub mod bounded;
pub mod budget;
pub mod config;
pub mod dispatch;
mod feed;
pub mod live;
pub mod metrics;
pub mod payloads;
pub mod render;
mod run;
pub mod runners;

pub use application::Application;
pub use config::Config;

/// Why the executor could not start or went down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Database, listener or configuration at start.
    #[error(transparent)]
    Startup(#[from] flowline_service_kit::Error),
    /// The log's topic could not be read.
    #[error(transparent)]
    Log(#[from] flowline_event_log::Error),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] flowline_event_store::Error),
    /// A query of the executor's own tables failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A setting is malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// Access control could not start (an unusable key set).
    #[error(transparent)]
    Access(#[from] flowline_access::Error),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
