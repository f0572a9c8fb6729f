//! Events the relay could not publish: parked, listed for operators, and redriven.
//!
//! A record the log refuses for good (larger than the producer or broker accepts, invalid)
//! would otherwise be retried at the head of the outbox forever, stopping every later
//! command of every tenant. The relay parks it instead and goes on; the stream's later
//! events are held behind it so they never overtake it on the log. A redrive puts a
//! stream's parked events back in the outbox, in version order, once the cause is fixed.
//! See `docs/adr/0018-parked-events-and-snapshot-history.md`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::publications::LogPosition;
use crate::store::{APPENDED_CHANNEL, notify};

/// Channel the relay announces parked positions on (payload: positions, comma separated).
pub const PARKED_CHANNEL: &str = "event_store_parked";

/// An event the relay parked instead of publishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ParkedEvent {
    /// Its store position.
    pub position: i64,
    /// Its tenant.
    pub tenant: String,
    /// Its stream.
    pub stream_id: Uuid,
    /// Its stream version.
    pub stream_version: i64,
    /// Its id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Why it is parked: the log's refusal, or the event it is held behind.
    pub reason: String,
    /// The stream's refused event this one waits behind (`None`: refused itself).
    pub blocked_by: Option<Uuid>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Where a stored event stands on its way to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationStatus {
    /// Not yet published (or no such position).
    Pending,
    /// On the log, there.
    Published(LogPosition),
    /// Parked: it will not be published until an operator redrives it.
    Parked(Box<ParkedEvent>),
}

const PARKED_COLUMNS: &str = "position, tenant, stream_id, stream_version, event_id, \
     event_type, reason, blocked_by, parked_at";

/// What the relay parks: the event and why.
pub(crate) struct Parking {
    pub(crate) position: i64,
    pub(crate) tenant: String,
    pub(crate) stream_id: Uuid,
    pub(crate) stream_version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) reason: String,
    pub(crate) blocked_by: Option<Uuid>,
}

/// Parks `events` (recording why, marking them skipped by the relay) in one statement and
/// wakes the requests waiting for them.
pub(crate) async fn park(pool: &PgPool, events: &[Parking]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Parking) -> String| events.iter().map(f).collect::<Vec<_>>();
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    let streams: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.stream_version).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let blockers: Vec<Option<Uuid>> = events.iter().map(|e| e.blocked_by).collect();
    sqlx::query(
        "WITH parked AS ( \
           INSERT INTO parked_events (position, tenant, stream_id, stream_version, event_id, \
             event_type, reason, blocked_by) \
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::bigint[], \
             $5::uuid[], $6::text[], $7::text[], $8::uuid[]) \
           ON CONFLICT (position) DO NOTHING RETURNING position) \
         UPDATE event_store SET parked_at = now() FROM parked \
         WHERE event_store.position = parked.position",
    )
    .bind(&positions)
    .bind(column(|e| e.tenant.clone()))
    .bind(&streams)
    .bind(&versions)
    .bind(&ids)
    .bind(column(|e| e.event_type.clone()))
    .bind(column(|e| e.reason.clone()))
    .bind(&blockers)
    .execute(pool)
    .await?;
    let payload = positions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    notify(pool, PARKED_CHANNEL, &payload).await
}

/// The store positions a [`PARKED_CHANNEL`] notification announces.
pub(crate) fn parse_parked(payload: &str) -> impl Iterator<Item = i64> + '_ {
    payload
        .split(',')
        .filter_map(|position| position.parse().ok())
}

/// Operators' view of parked events, and their way to put them back in the outbox.
#[derive(Debug, Clone)]
pub struct ParkedEvents {
    pool: PgPool,
}

impl ParkedEvents {
    /// Parked events of the store in `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// How many events are parked.
    pub async fn count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM parked_events")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Parked events after store position `after`, oldest first, at most `limit`.
    pub async fn list(&self, after: i64, limit: i64) -> Result<Vec<ParkedEvent>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PARKED_COLUMNS} FROM parked_events WHERE position > $1 \
             ORDER BY position LIMIT $2"
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The parked event at store position `position`, if it is parked.
    pub async fn get(&self, position: i64) -> Result<Option<ParkedEvent>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PARKED_COLUMNS} FROM parked_events WHERE position = $1"
        )))
        .bind(position)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Puts every parked event of `streams` (every stream when `None`) back in the outbox
    /// and wakes the relay; returns how many. A whole stream at once, so its events are
    /// published in version order; one the log still refuses is parked again, its
    /// successors held behind it again.
    pub async fn redrive(&self, streams: Option<&[Uuid]>) -> Result<u64> {
        let redriven: Vec<i64> = sqlx::query_scalar(
            "WITH redriven AS ( \
               DELETE FROM parked_events WHERE $1::uuid[] IS NULL OR stream_id = ANY($1) \
               RETURNING position) \
             UPDATE event_store SET parked_at = NULL FROM redriven \
             WHERE event_store.position = redriven.position RETURNING event_store.position",
        )
        .bind(streams)
        .fetch_all(&self.pool)
        .await?;
        notify(&self.pool, APPENDED_CHANNEL, "").await?;
        Ok(redriven.len() as u64)
    }
}
