//! What every service of the engine needs at its edges, written once: the PostgreSQL pool
//! and embedded migrations, RFC 9457 problem responses, tracing with W3C trace context,
//! graceful shutdown, liveness/readiness with supervised background tasks, and the live
//! output channel of running steps.

pub mod db;
pub mod health;
pub mod http;
pub mod leases;
pub mod live;
pub mod openapi;
pub mod problem;
pub mod redis_settings;
pub mod request;
pub mod shutdown;
pub mod telemetry;

pub use problem::Problem;

/// Why shared plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused a connection or a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed to apply.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A setting is malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
