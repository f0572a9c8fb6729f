//! The outbox relay: one elected instance publishes stored events to Kafka and marks them
//! published, so that a command is acknowledged only once its event is on the log.
//!
//! Election is a PostgreSQL advisory lock held on a dedicated connection: if the leader's
//! process dies, its session ends and another instance takes over. A new leader first
//! recovers the previous leader's in-doubt batch by reading the tail of every partition
//! and marking the events it finds there (by their `event-id` header) as published; all
//! others are published again. Duplicates remain possible only for a leader that lost its
//! lock while its records were in flight; consumers drop them by stream version.
//!
//! A record the log refuses for good (see [`refused_for_good`]) does not stop the relay: the
//! batch it was in is published again one record at a time, the refused record is parked
//! and the stream's later events are held behind it (`crate::parked`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use flowline_event_log::{KafkaSettings, LogProducer, OutgoingRecord, partition_for};
use rdkafka::Message;
use rdkafka::message::Headers;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::Result;
use crate::parked::{Parking, park};
use crate::publications::{LogPosition, PUBLISHED_CHANNEL, encode_payload};
use crate::store::{APPENDED_CHANNEL, RelayWaker, notify};
use crate::{chain, headers};

/// Advisory-lock key of the relay leadership (per database).
const LEADER_LOCK: i64 = 0x666c_6f77_6c69_6e65; // "flowline"
/// How often a leader confirms that its lock connection is alive.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most events per produce round (bounded so the NOTIFY payload stays under 8000 bytes).
    pub batch_size: i64,
    /// Longest wait between looks at the outbox when no notification arrives.
    pub poll_interval: Duration,
    /// How long a new leader lets a dead leader's in-flight records land before reading
    /// the tails.
    pub takeover_settle: Duration,
    /// `ce_source` of every record; `{tenant}` is replaced by the stream's tenant.
    pub cloudevents_source: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_millis(250),
            takeover_settle: Duration::from_millis(500),
            cloudevents_source: headers::cloudevents::DEFAULT_SOURCE.to_owned(),
        }
    }
}

/// Publishes the event store to the log. Run one per writer instance; one leads.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    kafka: KafkaSettings,
    config: RelayConfig,
    waker: Arc<RelayWaker>,
}

/// An event as stored, with what the relay needs to publish it.
#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub(crate) position: i64,
    pub(crate) tenant: String,
    pub(crate) stream_id: Uuid,
    pub(crate) stream_version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) command_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Uuid,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) payload: Vec<u8>,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) prev_hash: Option<Vec<u8>>,
    pub(crate) event_hash: Option<Vec<u8>>,
}

/// The columns of [`OutboxRow`], for queries selecting one.
pub(crate) const OUTBOX_COLUMNS: &str = "position, tenant, stream_id, stream_version, event_id, \
     command_id, event_type, schema_version, correlation_id, causation_id, traceparent, \
     tracestate, payload, occurred_at, prev_hash, event_hash";

/// An outbox row with the refused event of its stream it must wait behind, if any.
#[derive(sqlx::FromRow)]
struct Candidate {
    #[sqlx(flatten)]
    row: OutboxRow,
    blocked_by: Option<Uuid>,
}

/// Why the relay parks an event held behind `blocker`.
fn held_reason(blocker: Uuid) -> String {
    format!("held behind event {blocker} of its stream, which the log refused")
}

/// Whether `error` is the log refusing this one record for good (it would refuse it again,
/// however often it is sent), as opposed to the log being unavailable.
pub(crate) fn refused_for_good(error: &flowline_event_log::Error) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    matches!(
        error,
        flowline_event_log::Error::Kafka(KafkaError::MessageProduction(code)) if matches!(
            code,
            Code::MessageSizeTooLarge
                | Code::MessageBatchTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::InvalidRecord
                | Code::BadMessage
                | Code::InvalidTimestamp
        )
    )
}

/// The key an event's record has on the log (it decides the partition): its stream id.
pub(crate) fn record_key(stream_id: Uuid) -> Vec<u8> {
    stream_id.to_string().into_bytes()
}

impl OutboxRow {
    /// The record key: the stream id.
    pub(crate) fn key(&self) -> Vec<u8> {
        record_key(self.stream_id)
    }

    /// The headers the relay publishes the event with (CloudEvents binary mode, the
    /// engine's own routing headers, the hash chain and the trace context).
    pub(crate) fn headers(&self, source_template: &str) -> Vec<(String, Vec<u8>)> {
        use headers::cloudevents as ce;
        let text = |name: &str, value: String| (name.to_owned(), value.into_bytes());
        let schema_version = self.schema_version as u32;
        let mut record_headers = vec![
            text(ce::SPECVERSION, ce::SPEC_VERSION_1_0.to_owned()),
            text(ce::ID, self.event_id.to_string()),
            text(ce::SOURCE, ce::source(source_template, &self.tenant)),
            text(ce::TYPE, ce::event_type(&self.event_type, schema_version)),
            text(
                ce::TIME,
                self.occurred_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            text(ce::SUBJECT, self.stream_id.to_string()),
            text(
                headers::CONTENT_TYPE,
                headers::content_type(&self.event_type, schema_version),
            ),
            text(headers::EVENT_TYPE, self.event_type.clone()),
            text(headers::SCHEMA_VERSION, self.schema_version.to_string()),
            text(headers::EVENT_ID, self.event_id.to_string()),
            text(headers::TENANT, self.tenant.clone()),
            text(headers::STREAM_ID, self.stream_id.to_string()),
            text(headers::STREAM_VERSION, self.stream_version.to_string()),
            text(headers::COMMAND_ID, self.command_id.to_string()),
            text(headers::CORRELATION_ID, self.correlation_id.to_string()),
            text(headers::CAUSATION_ID, self.causation_id.to_string()),
        ];
        // Events stored before the chain existed carry neither: "not chained".
        let hashes = self
            .prev_hash
            .as_deref()
            .and_then(chain::from_bytes)
            .zip(self.event_hash.as_deref().and_then(chain::from_bytes));
        if let Some((prev_hash, event_hash)) = hashes {
            record_headers.push(text(headers::PREV_HASH, chain::to_hex(&prev_hash)));
            record_headers.push(text(headers::HASH, chain::to_hex(&event_hash)));
        }
        if let Some(traceparent) = &self.traceparent {
            record_headers.push(text(headers::TRACEPARENT, traceparent.clone()));
        }
        if let Some(tracestate) = &self.tracestate {
            record_headers.push(text(headers::TRACESTATE, tracestate.clone()));
        }
        record_headers
    }

    fn into_record(self, partitions: i32, source_template: &str) -> OutgoingRecord {
        let key = self.key();
        OutgoingRecord {
            partition: partition_for(&key, partitions),
            headers: self.headers(source_template),
            key,
            payload: self.payload,
        }
    }

    fn parking(&self, reason: String, blocked_by: Option<Uuid>) -> Parking {
        Parking {
            position: self.position,
            tenant: self.tenant.clone(),
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            reason,
            blocked_by,
        }
    }
}

enum Leadership {
    Lost,
    Shutdown,
}

impl OutboxRelay {
    /// A relay for the store in `pool`, publishing to `kafka.topic`.
    pub fn new(pool: PgPool, kafka: KafkaSettings, config: RelayConfig) -> Self {
        Self {
            pool,
            kafka,
            config,
            waker: Arc::default(),
        }
    }

    /// The waker to give this process's [`crate::EventStore`], so its appends wake this
    /// relay without a round trip through PostgreSQL while it leads.
    pub fn waker(&self) -> Arc<RelayWaker> {
        Arc::clone(&self.waker)
    }

    /// Campaigns for leadership and publishes while leading, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.lead_once(&shutdown).await {
                Ok(Leadership::Shutdown) => return,
                Ok(Leadership::Lost) => {}
                Err(error) => warn!(%error, "outbox relay failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn lead_once(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        // A connection of its own, outside the pool: the lock lives exactly as long as it.
        let mut lock = self.pool.acquire().await?.detach();
        let leading: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut lock)
            .await?;
        if !leading {
            let _ = lock.close().await;
            return Ok(Leadership::Lost);
        }
        info!(topic = %self.kafka.topic, "outbox relay leading");
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(APPENDED_CHANNEL).await?;
        let partitions = flowline_event_log::ensure_topic(&self.kafka).await?;
        self.waker.leading.store(true, Ordering::Relaxed);
        let outcome = self
            .lead(partitions, &mut lock, &mut listener, shutdown)
            .await;
        self.waker.leading.store(false, Ordering::Relaxed);
        outcome
    }

    async fn lead(
        &self,
        partitions: i32,
        lock: &mut PgConnection,
        listener: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Leadership> {
        let mut isolate = false;
        loop {
            let producer = LogProducer::new(&self.kafka)?;
            self.recover().await?;
            let published = async {
                if std::mem::take(&mut isolate) {
                    self.publish_one_by_one(&producer, partitions).await?;
                }
                self.publish_until_failure(&producer, partitions, lock, listener, shutdown)
                    .await
            };
            match published.await {
                Ok(outcome) => {
                    let _ = producer.flush(Duration::from_secs(5));
                    return Ok(outcome);
                }
                Err(crate::Error::Log(error)) if refused_for_good(&error) => {
                    // One record of the batch is refused; which one, the batch's error does
                    // not say. What landed is recovered from the log, then the rest goes
                    // one record at a time so that only the refused one is parked.
                    warn!(%error, "the log refused a record; publishing one at a time");
                    isolate = true;
                }
                Err(crate::Error::Log(error)) => {
                    // The producer's state is unknown: start a fresh one and recover from
                    // what the log actually holds.
                    warn!(%error, "publish failed; recovering from the log");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn publish_until_failure(
        &self,
        producer: &LogProducer,
        partitions: i32,
        lock: &mut PgConnection,
        listener: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Leadership> {
        let mut lock_checked = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(Leadership::Shutdown);
            }
            // Still leading? A broken lock connection means another instance may lead now.
            // Checked once per interval rather than per batch: a stale leader can only
            // cause duplicates, which consumers drop by stream version.
            if lock_checked.elapsed() > LOCK_CHECK_INTERVAL {
                if sqlx::query("SELECT 1").execute(&mut *lock).await.is_err() {
                    warn!("lost the relay lock connection; stepping down");
                    return Ok(Leadership::Lost);
                }
                lock_checked = Instant::now();
            }
            let candidates = self.outbox_head().await?;
            if candidates.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(Leadership::Shutdown),
                    () = self.waker.local.notified() => {}
                    _ = listener.recv() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
                continue;
            }
            let (held, rows): (Vec<Candidate>, Vec<Candidate>) = candidates
                .into_iter()
                .partition(|candidate| candidate.blocked_by.is_some());
            self.hold(&held).await?;
            let rows: Vec<OutboxRow> = rows.into_iter().map(|c| c.row).collect();
            if rows.is_empty() {
                continue;
            }
            let positions: Vec<i64> = rows.iter().map(|r| r.position).collect();
            let records: Vec<OutgoingRecord> = rows
                .into_iter()
                .map(|r| r.into_record(partitions, &self.config.cloudevents_source))
                .collect();
            let deliveries = producer.publish(&records).await?;
            let published: Vec<(i64, LogPosition)> = positions
                .into_iter()
                .zip(deliveries)
                .map(|(position, d)| {
                    (
                        position,
                        LogPosition {
                            partition: d.partition,
                            offset: d.offset,
                        },
                    )
                })
                .collect();
            debug!(events = published.len(), "published");
            self.mark_published(&published).await?;
        }
    }

    /// The oldest unpublished, unparked events, each with the refused event of its stream
    /// it must wait behind (if its stream has one).
    async fn outbox_head(&self) -> Result<Vec<Candidate>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OUTBOX_COLUMNS}, \
               (SELECT p.event_id FROM parked_events p WHERE p.stream_id = e.stream_id \
                ORDER BY p.stream_version LIMIT 1) AS blocked_by \
             FROM event_store e WHERE published_at IS NULL AND parked_at IS NULL \
             ORDER BY position LIMIT $1"
        )))
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Parks events of streams that have a refused event, behind it.
    async fn hold(&self, held: &[Candidate]) -> Result<()> {
        let parkings: Vec<Parking> = held
            .iter()
            .filter_map(|c| {
                let blocker = c.blocked_by?;
                Some(c.row.parking(held_reason(blocker), Some(blocker)))
            })
            .collect();
        if !parkings.is_empty() {
            warn!(
                events = parkings.len(),
                "events held behind a parked event of their stream"
            );
        }
        park(&self.pool, &parkings).await
    }

    /// Publishes the head of the outbox one record at a time: a record the log refuses for
    /// good is parked, the later events of its stream are held behind it, the others are
    /// published. Any other failure ends the pass (the log is unavailable: retried as ever).
    async fn publish_one_by_one(&self, producer: &LogProducer, partitions: i32) -> Result<()> {
        let mut refused: HashMap<Uuid, Uuid> = HashMap::new();
        for candidate in self.outbox_head().await? {
            let row = candidate.row;
            if let Some(blocker) = candidate
                .blocked_by
                .or_else(|| refused.get(&row.stream_id).copied())
            {
                park(
                    &self.pool,
                    &[row.parking(held_reason(blocker), Some(blocker))],
                )
                .await?;
                continue;
            }
            let (position, stream_id, event_id) = (row.position, row.stream_id, row.event_id);
            let size = row.payload.len();
            let parking = row.parking(String::new(), None);
            let record = row.into_record(partitions, &self.config.cloudevents_source);
            match producer.publish(std::slice::from_ref(&record)).await {
                Ok(deliveries) => {
                    let published: Vec<(i64, LogPosition)> = deliveries
                        .into_iter()
                        .map(|d| {
                            let log = LogPosition {
                                partition: d.partition,
                                offset: d.offset,
                            };
                            (position, log)
                        })
                        .collect();
                    self.mark_published(&published).await?;
                }
                Err(failure) if refused_for_good(&failure) => {
                    let reason = format!("the log refused the record ({size} bytes): {failure}");
                    error!(
                        %event_id, %stream_id, tenant = %parking.tenant,
                        version = parking.stream_version, %reason,
                        "event parked: it will not be published until an operator redrives it"
                    );
                    park(&self.pool, &[Parking { reason, ..parking }]).await?;
                    refused.insert(stream_id, event_id);
                }
                Err(failure) => return Err(failure.into()),
            }
        }
        Ok(())
    }

    async fn mark_published(&self, published: &[(i64, LogPosition)]) -> Result<()> {
        let positions: Vec<i64> = published.iter().map(|(p, _)| *p).collect();
        let partitions: Vec<i32> = published.iter().map(|(_, l)| l.partition).collect();
        let offsets: Vec<i64> = published.iter().map(|(_, l)| l.offset).collect();
        sqlx::query(
            "UPDATE event_store SET published_at = now(), log_partition = batch.partition, \
             log_offset = batch.log_offset \
             FROM unnest($1::bigint[], $2::int[], $3::bigint[]) \
               AS batch(position, partition, log_offset) \
             WHERE event_store.position = batch.position",
        )
        .bind(&positions)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&self.pool)
        .await?;
        notify(&self.pool, PUBLISHED_CHANNEL, &encode_payload(published)).await
    }

    /// Marks as published every unpublished event that is already on the log: at most the
    /// previous leader's last batch, which is within the tail window of each partition.
    async fn recover(&self) -> Result<()> {
        let unpublished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_store WHERE published_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        if unpublished == 0 {
            return Ok(());
        }
        tokio::time::sleep(self.config.takeover_settle).await;
        let brokers = self.kafka.brokers.clone();
        let topic = self.kafka.topic.clone();
        let window = self.config.batch_size * 2 + 64;
        let tails = tokio::task::spawn_blocking(move || {
            flowline_event_log::read_partition_tails(&brokers, &topic, window)
        })
        .await
        .map_err(|e| crate::Error::Log(flowline_event_log::Error::NotDelivered(e.to_string())))??;
        let mut on_log: HashMap<Uuid, LogPosition> = HashMap::new();
        for (partition, records) in tails {
            for record in records {
                let event_id = record.headers().and_then(|h| {
                    h.iter()
                        .find(|header| header.key == headers::EVENT_ID)
                        .and_then(|header| header.value)
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .and_then(|text| Uuid::parse_str(text).ok())
                });
                if let Some(event_id) = event_id {
                    on_log.insert(
                        event_id,
                        LogPosition {
                            partition,
                            offset: record.offset(),
                        },
                    );
                }
            }
        }
        let ids: Vec<Uuid> = on_log.keys().copied().collect();
        let partitions: Vec<i32> = ids.iter().map(|id| on_log[id].partition).collect();
        let offsets: Vec<i64> = ids.iter().map(|id| on_log[id].offset).collect();
        // A parked event found on the log (a refusal reported after all) is published.
        let recovered: Vec<(i64, i32, i64)> = sqlx::query_as(
            "WITH recovered AS ( \
               UPDATE event_store SET published_at = now(), log_partition = tail.partition, \
                 log_offset = tail.log_offset, parked_at = NULL \
               FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS tail(event_id, partition, log_offset) \
               WHERE event_store.event_id = tail.event_id AND event_store.published_at IS NULL \
               RETURNING event_store.position, tail.partition, tail.log_offset), \
             unparked AS (DELETE FROM parked_events WHERE position IN \
               (SELECT position FROM recovered)) \
             SELECT position, partition, log_offset FROM recovered",
        )
        .bind(&ids)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(&self.pool)
        .await?;
        let recovered: Vec<(i64, LogPosition)> = recovered
            .into_iter()
            .map(|(position, partition, offset)| (position, LogPosition { partition, offset }))
            .collect();
        for chunk in recovered.chunks(self.config.batch_size as usize) {
            notify(&self.pool, PUBLISHED_CHANNEL, &encode_payload(chunk)).await?;
        }
        info!(
            unpublished,
            recovered = recovered.len(),
            "outbox recovery: events found on the log marked published"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

    use super::refused_for_good;

    fn production(code: Code) -> flowline_event_log::Error {
        flowline_event_log::Error::Kafka(KafkaError::MessageProduction(code))
    }

    #[test]
    fn only_a_refusal_of_the_record_itself_parks_it() {
        for refused in [
            Code::MessageSizeTooLarge,
            Code::MessageBatchTooLarge,
            Code::InvalidRecord,
        ] {
            assert!(refused_for_good(&production(refused)), "{refused:?}");
        }
        // The log being unavailable is retried, never parked: parking on an outage would
        // park everything.
        for unavailable in [
            Code::AllBrokersDown,
            Code::MessageTimedOut,
            Code::RequestTimedOut,
            Code::NotLeaderForPartition,
            Code::UnknownTopicOrPartition,
            Code::QueueFull,
        ] {
            assert!(
                !refused_for_good(&production(unavailable)),
                "{unavailable:?}"
            );
        }
        assert!(!refused_for_good(&flowline_event_log::Error::NotDelivered(
            "producer dropped".into()
        )));
    }
}
