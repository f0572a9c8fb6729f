//! The write side's event store: PostgreSQL holds every stream (the serialization point for
//! expected versions and command ids) and doubles as the outbox that a single elected
//! relay publishes to Kafka. A command is acknowledged only once its event is on the log.
//!
//! Why not Kafka alone: Kafka has no per-key compare-and-set and the broker used here has no
//! transactions; see `docs/adr/0001-append-path.md` for the design and its failure analysis.

pub mod chain;
pub mod headers;
mod history;
mod parked;
mod publications;
mod record_size;
mod relay;
mod repository;
mod store;

pub use history::PublishedHistory;
pub use parked::{PARKED_CHANNEL, ParkedEvent, ParkedEvents, PublicationStatus};
pub use publications::{LogPosition, PUBLISHED_CHANNEL, Publications, parse_published};
pub use record_size::record_bytes;
pub use relay::{OutboxRelay, RelayConfig};
pub use repository::{
    AsOf, PastState, SNAPSHOTS_KEPT, WORKFLOW_SNAPSHOT_SHAPE, WorkflowRepository,
};
pub use store::{AppendedCommand, EventStore, RecordLimit, RelayWaker, StoredEvent};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another command appended this stream version first.
    #[error("stream {stream_id} already has version {version}")]
    VersionConflict {
        /// The stream.
        stream_id: uuid::Uuid,
        /// The version both tried to write.
        version: u64,
    },
    /// This command was already appended (its id is in the store).
    #[error("command {0} was already appended")]
    DuplicateCommand(uuid::Uuid),
    /// The event was stored but not confirmed on the log within the wait.
    #[error("event at store position {0} not yet confirmed on the log")]
    PublicationPending(i64),
    /// The event was stored, but the relay parked it: the log refused it (or an earlier
    /// event of its stream) for good, and it waits for an operator's redrive.
    #[error("event {} is stored but parked, not published: {}", .0.event_id, .0.reason)]
    PublicationParked(Box<ParkedEvent>),
    /// The event's record would be larger than the log accepts: stored, it could never be
    /// published, so it is not stored.
    #[error(
        "the event would make a record of {bytes} bytes on the log; at most {max_bytes} are accepted"
    )]
    EventTooLarge {
        /// The record's size.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An event failed to encode or decode.
    #[error("codec: {0}")]
    Codec(#[from] flowline_schemas::Error),
    /// The log failed.
    #[error("log: {0}")]
    Log(#[from] flowline_event_log::Error),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
