//! Dead letters: records a projection could not apply, kept with the reason, their place on
//! the log and their payload, so the projection can move on and an operator can re-drive
//! them after a fix.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use flowline_event_log::LogRecord;
use flowline_schemas::EventCodec;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::Result;
use crate::projection::{LogPlace, Projection};

/// A dead-lettered record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its id, for `show` and `redrive`.
    pub id: i64,
    /// The projection that failed.
    pub projection: String,
    /// Where the record is on the log.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub log_offset: i64,
    /// Record key (the stream id).
    pub record_key: Option<String>,
    /// The record's value, base64 in JSON.
    #[serde(serialize_with = "as_base64")]
    #[schema(value_type = Option<String>, format = Byte)]
    pub payload: Option<Vec<u8>>,
    /// The record's headers.
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    /// Why it failed (the last failure).
    pub reason: String,
    /// How many times the handler was tried.
    pub attempts: i32,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// When a re-drive applied it, if one did.
    pub redriven_at: Option<DateTime<Utc>>,
    /// When a rebuild replaced the tables it was missing from (the rebuild keeps its own
    /// dead letters for whatever failed again); a superseded letter is no longer pending.
    pub superseded_at: Option<DateTime<Utc>>,
}

fn as_base64<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
        None => serializer.serialize_none(),
    }
}

/// Records a failed record in the batch's transaction (so the checkpoint moves past it only
/// together with its dead letter).
pub async fn record(
    transaction: &mut Transaction<'_, Postgres>,
    projection: &str,
    message: &LogRecord,
    reason: &str,
    attempts: i32,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (projection, topic, partition, log_offset, record_key, payload, \
         headers, reason, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (projection, topic, partition, log_offset) WHERE superseded_at IS NULL \
         DO UPDATE SET reason = excluded.reason, attempts = dead_letters.attempts + excluded.attempts, \
                       failed_at = now(), redriven_at = NULL",
    )
    .bind(projection)
    .bind(&message.topic)
    .bind(message.partition)
    .bind(message.offset)
    .bind(message.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()))
    .bind(message.payload.as_deref())
    .bind(message.headers_json())
    .bind(reason)
    .bind(attempts)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Dead letters of `projection` (all projections when `None`), oldest first; re-driven and
/// superseded ones only when `include_redriven`.
pub async fn list(
    pool: &PgPool,
    projection: Option<&str>,
    include_redriven: bool,
) -> sqlx::Result<Vec<DeadLetter>> {
    sqlx::query_as(
        "SELECT * FROM dead_letters WHERE ($1::text IS NULL OR projection = $1) \
         AND ($2 OR (redriven_at IS NULL AND superseded_at IS NULL)) ORDER BY id",
    )
    .bind(projection)
    .bind(include_redriven)
    .fetch_all(pool)
    .await
}

/// One dead letter.
pub async fn show(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeadLetter>> {
    sqlx::query_as("SELECT * FROM dead_letters WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What a re-drive did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Redrive {
    /// Applied; the dead letter is marked re-driven.
    Applied {
        /// The dead letter.
        id: i64,
    },
    /// Still failing; the reason is updated.
    Failed {
        /// The dead letter.
        id: i64,
        /// Why.
        reason: String,
    },
    /// No pending dead letter with this id.
    NotPending {
        /// The id asked for.
        id: i64,
    },
}

/// Applies a dead letter again with `projection` (after a fix).
pub async fn redrive<P: Projection>(pool: &PgPool, projection: &P, id: i64) -> Result<Redrive> {
    let mut transaction = pool.begin().await?;
    let letter: Option<DeadLetter> = sqlx::query_as(
        "SELECT * FROM dead_letters WHERE id = $1 AND projection = $2 AND redriven_at IS NULL \
         AND superseded_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .bind(projection.name())
    .fetch_optional(&mut *transaction)
    .await?;
    let Some(letter) = letter else {
        return Ok(Redrive::NotPending { id });
    };
    let outcome = match EventCodec::default().decode(letter.payload.as_deref().unwrap_or_default())
    {
        Err(error) => Err(format!("undecodable: {error}")),
        Ok(envelope) => {
            let mut attempt = sqlx::Acquire::begin(&mut transaction).await?;
            let place = LogPlace {
                partition: letter.partition,
                offset: letter.log_offset,
            };
            match projection
                .apply_all(&mut attempt, &[(envelope, place)])
                .await
            {
                Ok(()) => {
                    attempt.commit().await?;
                    Ok(())
                }
                Err(error) => {
                    attempt.rollback().await?;
                    Err(error.to_string())
                }
            }
        }
    };
    let result = match outcome {
        Ok(()) => {
            sqlx::query("UPDATE dead_letters SET redriven_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            Redrive::Applied { id }
        }
        Err(reason) => {
            sqlx::query(
                "UPDATE dead_letters SET reason = $2, attempts = attempts + 1 WHERE id = $1",
            )
            .bind(id)
            .bind(&reason)
            .execute(&mut *transaction)
            .await?;
            Redrive::Failed { id, reason }
        }
    };
    transaction.commit().await?;
    Ok(result)
}

/// Re-drives every pending dead letter of `projection`, in log order.
pub async fn redrive_all<P: Projection>(pool: &PgPool, projection: &P) -> Result<Vec<Redrive>> {
    let mut pending = list(pool, Some(projection.name()), false).await?;
    pending.sort_by_key(|letter| (letter.partition, letter.log_offset));
    let mut outcomes = Vec::with_capacity(pending.len());
    for letter in pending {
        outcomes.push(redrive(pool, projection, letter.id).await?);
    }
    Ok(outcomes)
}

/// At a rebuild's swap, in its transaction: the letters of the replaced tables are
/// superseded, and the rebuild's own letters (kept under its checkpoint name while it ran)
/// become the live projection's, so they can be re-driven into the tables now live.
pub async fn hand_over(
    transaction: &mut Transaction<'_, Postgres>,
    projection: &str,
    rebuild: &str,
) -> sqlx::Result<()> {
    supersede(transaction, projection).await?;
    sqlx::query("UPDATE dead_letters SET projection = $1 WHERE projection = $2")
        .bind(projection)
        .bind(rebuild)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// Marks the letters of `projection` (a live name or a rebuild's) superseded: the tables
/// they were missing from are gone.
pub async fn supersede(
    transaction: &mut Transaction<'_, Postgres>,
    projection: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dead_letters SET superseded_at = now() \
         WHERE projection = $1 AND superseded_at IS NULL",
    )
    .bind(projection)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
