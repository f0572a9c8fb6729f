//! The projectors' errors.

/// Why projecting failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A projection handler failed.
    #[error("projection: {0}")]
    Apply(#[from] crate::projection::ApplyError),
    /// A rebuild could not start or go on.
    #[error("rebuild: {0}")]
    Rebuild(String),
    /// Another rebuild of the projection, from another point, is still running.
    #[error("rebuild: {0}")]
    RebuildBusy(String),
    /// The graph store could not be prepared.
    #[error("graph store: {0}")]
    Graph(String),
    /// The log failed.
    #[error("log: {0}")]
    Log(#[from] flowline_event_log::Error),
    /// Reading history from the event store failed.
    #[error("event store: {0}")]
    History(#[from] flowline_event_store::Error),
    /// The database or the listener could not be prepared at start.
    #[error(transparent)]
    Startup(#[from] flowline_service_kit::Error),
    /// Access control could not start (an unusable key set).
    #[error(transparent)]
    Access(#[from] flowline_access::Error),
    /// The admin address could not be bound.
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
