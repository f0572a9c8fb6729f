//! The published history, read back from the event store in log order.
//!
//! Every event the relay published is in `event_store` with the partition and offset the
//! broker acknowledged and the exact bytes it carries, so the store can serve a replay of
//! a partition as the log would: same places, keys and values. Headers are derived data
//! (the relay computes them from the row) and cost more to build than the rest of the
//! record, so they are built only for the records that need them ([`PublishedHistory::headers`]). A rebuild reads its
//! history here (at the database's speed, and whatever the topic's retention kept) and
//! reads from the broker only what the store does not hold; see
//! `docs/adr/0014-rebuilds-read-history-from-the-event-store.md`.

use std::ops::Range;

use flowline_event_log::LogRecord;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::relay::{OUTBOX_COLUMNS, OutboxRow};

/// Reads published events of one topic from the event store.
#[derive(Debug, Clone)]
pub struct PublishedHistory {
    pool: PgPool,
    topic: String,
    cloudevents_source: String,
}

impl PublishedHistory {
    /// The history of `topic` (the topic the relay publishes to), with headers built with
    /// the relay's `ce_source` template.
    pub fn new(pool: PgPool, topic: &str, cloudevents_source: &str) -> Self {
        Self {
            pool,
            topic: topic.to_owned(),
            cloudevents_source: cloudevents_source.to_owned(),
        }
    }

    /// The published events of `partition` at `offsets`, in offset order, without headers.
    /// Offsets the store does not hold (a record another producer wrote, a stale relay's
    /// duplicate) are simply absent: the caller sees the gap. Ranges rather than `LIMIT`
    /// keep the plan to exactly those rows, whatever the table's statistics say.
    pub async fn read(&self, partition: i32, offsets: Range<i64>) -> Result<Vec<LogRecord>> {
        let rows: Vec<(i64, Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT log_offset, stream_id, payload FROM event_store \
             WHERE log_partition = $1 AND log_offset >= $2 AND log_offset < $3 \
             ORDER BY log_offset",
        )
        .bind(partition)
        .bind(offsets.start)
        .bind(offsets.end)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(offset, stream_id, payload)| LogRecord {
                topic: self.topic.clone(),
                partition,
                offset,
                key: Some(crate::relay::record_key(stream_id)),
                payload: Some(payload),
                headers: Vec::new(),
            })
            .collect())
    }

    /// The headers the relay published the event at `partition`/`offset` with (none when
    /// the store does not hold it).
    pub async fn headers(
        &self,
        partition: i32,
        offset: i64,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let row: Option<OutboxRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS} FROM event_store WHERE log_partition = $1 AND log_offset = $2"
        )))
        .bind(partition)
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|row| row.headers(&self.cloudevents_source))
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, Some(value)))
            .collect())
    }
}
