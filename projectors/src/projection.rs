//! What a projection is to the runtime: a versioned name and a handler applying one event
//! inside the batch's transaction.

use flowline_domain::EventEnvelope;
use sqlx::{Postgres, Transaction};

/// Where an event was read from.
#[derive(Debug, Clone, Copy)]
pub struct LogPlace {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event is not the next version of its stream (an earlier one is missing, e.g.
    /// dead-lettered): applying it would corrupt the view.
    #[error(
        "event {version} of stream {stream} does not follow the projected version {projected:?}"
    )]
    OutOfOrder {
        /// The stream.
        stream: uuid::Uuid,
        /// The event's version.
        version: u64,
        /// The version the view is at, if the stream is known.
        projected: Option<i64>,
    },
    /// The event is at a version of its stream that was already applied, but it is not
    /// the event applied there: two different events claim one place in the stream.
    /// Dropping it as a duplicate would hide it; it is dead-lettered and alarms instead.
    #[error(
        "event {offered} is at version {version} of stream {stream}, where event {applied:?} was applied"
    )]
    Conflict {
        /// The stream.
        stream: uuid::Uuid,
        /// The version both claim.
        version: u64,
        /// The event applied there (`None`: none is recorded).
        applied: Option<uuid::Uuid>,
        /// The event offered now.
        offered: uuid::Uuid,
    },
    /// The database refused the change.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An external store (Dgraph) failed; retried, never dead-lettered, since it says
    /// nothing about the record.
    #[error("graph store: {0}")]
    External(String),
}

impl ApplyError {
    /// `Ok` when `applied` (the event recorded at the offered event's place, if any) is
    /// the offered event itself, a re-delivery; a [`ApplyError::Conflict`] otherwise.
    pub fn unless_applied(
        offered: &flowline_domain::EventMetadata,
        applied: Option<uuid::Uuid>,
    ) -> Result<(), Self> {
        if applied == Some(offered.event_id) {
            return Ok(());
        }
        Err(Self::Conflict {
            stream: offered.stream_id,
            version: offered.stream_version,
            applied,
            offered: offered.event_id,
        })
    }
}

/// A projection of the workflow log.
pub trait Projection: Send + Sync + 'static {
    /// Its name with its version (`workflow_read_model.v1`): checkpoints, consumer group and
    /// dead letters are keyed by it.
    fn name(&self) -> &'static str;

    /// Applies events in log order (per partition) inside the batch's transaction, all or
    /// none. Re-delivered events (at or below the projected version) must be no-ops when
    /// they are the event applied there, and [`ApplyError::Conflict`] when not. The
    /// runtime calls it with a whole batch, and with single events to isolate a failure.
    fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[(EventEnvelope, LogPlace)],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}
