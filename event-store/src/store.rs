//! Streams in PostgreSQL: load in version order, append one event with its expected version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use flowline_domain::EventEnvelope;
use flowline_schemas::EventCodec;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::chain::{self, ChainedEvent};
use crate::parked::{ParkedEvents, PublicationStatus};
use crate::publications::LogPosition;
use crate::record_size::record_bytes;
use crate::repository::AsOf;
use crate::{Error, Result};

/// Channel the relay listens on for new events.
pub(crate) const APPENDED_CHANNEL: &str = "event_store_appended";

/// An event as stored, with where it landed on the log once published.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Store-wide sequence number (commit order is not guaranteed to follow it).
    pub position: i64,
    /// The decoded event.
    pub envelope: EventEnvelope,
    /// Its place on the log, once the relay published it.
    pub log: Option<LogPosition>,
}

/// Wakes the outbox relay after an append: in-process when this process leads the relay,
/// through PostgreSQL `NOTIFY` when another instance does.
#[derive(Debug, Default)]
pub struct RelayWaker {
    pub(crate) local: Notify,
    pub(crate) leading: AtomicBool,
    /// A task of this process forwards `local` signals to other instances' relays.
    pub(crate) forwarding: AtomicBool,
}

impl RelayWaker {
    /// Whether a signal on `local` reaches the relay (it leads here, or it is forwarded),
    /// so an append needs no `NOTIFY` of its own.
    fn heard_in_process(&self) -> bool {
        self.leading.load(Ordering::Relaxed) || self.forwarding.load(Ordering::Relaxed)
    }
}

/// Where an already appended command's event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedCommand {
    /// The stream.
    pub stream_id: Uuid,
    /// The event's stream version.
    pub version: u64,
    /// The event's store position.
    pub position: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Fingerprint of the request that carried the command, when it had an idempotency key.
    pub fingerprint: Option<String>,
}

/// The PostgreSQL event store.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    codec: EventCodec,
    waker: Arc<RelayWaker>,
    /// The hash of the last event this store appended to each stream, with its version:
    /// a writer appending to a stream it appended to last (the executor, nearly always)
    /// needs no read of the predecessor. Stored events never change, so an entry is right
    /// for as long as it names the version before the one being appended.
    last_hashes: Arc<std::sync::Mutex<std::collections::HashMap<Uuid, (u64, chain::Hash)>>>,
    record_limit: Option<Arc<RecordLimit>>,
}

/// The largest record the log accepts, and what the relay adds to each record: an append
/// whose record would be larger is refused before anything is stored.
#[derive(Debug, Clone)]
pub struct RecordLimit {
    /// Largest record, in bytes as the producer counts them (`message.max.bytes`).
    pub max_bytes: usize,
    /// The relay's `ce_source` template (its headers count towards the record).
    pub cloudevents_source: String,
}

/// Streams whose last hash a store remembers before it starts over.
const REMEMBERED_STREAMS: usize = 50_000;

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    payload: Vec<u8>,
    log_partition: Option<i32>,
    log_offset: Option<i64>,
}

impl EventStore {
    /// A store on `pool` (migrated with `service-kit`'s migrator).
    pub fn new(pool: PgPool) -> Self {
        Self::with_waker(pool, Arc::default())
    }

    /// A store whose appends wake the relay sharing `waker`.
    pub fn with_waker(pool: PgPool, waker: Arc<RelayWaker>) -> Self {
        Self {
            pool,
            codec: EventCodec::default(),
            waker,
            last_hashes: Arc::default(),
            record_limit: None,
        }
    }

    /// The same store, refusing appends whose record would exceed `limit`
    /// ([`Error::EventTooLarge`]); the check uses the encoding that is stored.
    pub fn with_record_limit(mut self, limit: RecordLimit) -> Self {
        self.record_limit = Some(Arc::new(limit));
        self
    }

    /// A store for a process that appends often but runs no relay (the executor): an
    /// append only signals a background task, which wakes the relay with one `NOTIFY` per
    /// burst of appends. That keeps the round trip off every append's latency; a lost
    /// wake-up costs the relay's poll interval, nothing more.
    pub fn with_background_wakeups(pool: PgPool) -> Self {
        let waker = Arc::new(RelayWaker::default());
        waker.forwarding.store(true, Ordering::Relaxed);
        let forwarder = Arc::clone(&waker);
        let notifying = pool.clone();
        tokio::spawn(async move {
            loop {
                forwarder.local.notified().await;
                if let Err(error) = notify(&notifying, APPENDED_CHANNEL, "").await {
                    tracing::warn!(%error, "relay not woken; it finds the events at its next poll");
                }
            }
        });
        Self::with_waker(pool, waker)
    }

    /// The stream's events in version order; empty when the stream does not exist for this
    /// tenant.
    pub async fn load(&self, tenant: &str, stream_id: Uuid) -> Result<Vec<StoredEvent>> {
        self.load_range(tenant, stream_id, 0, None).await
    }

    /// The events with `after < version <= up_to` (no upper bound when `None`), in order.
    pub async fn load_range(
        &self,
        tenant: &str,
        stream_id: Uuid,
        after: u64,
        up_to: Option<u64>,
    ) -> Result<Vec<StoredEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT position, payload, log_partition, log_offset FROM event_store \
             WHERE stream_id = $1 AND tenant = $2 AND stream_version > $3 \
             AND ($4::bigint IS NULL OR stream_version <= $4) ORDER BY stream_version",
        )
        .bind(stream_id)
        .bind(tenant)
        .bind(after as i64)
        .bind(up_to.map(|v| v as i64))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| self.decode(row)).collect()
    }

    /// The stream's events at `versions`, in version order (those it has).
    pub async fn load_versions(
        &self,
        tenant: &str,
        stream_id: Uuid,
        versions: &[u64],
    ) -> Result<Vec<StoredEvent>> {
        let versions: Vec<i64> = versions.iter().map(|&v| v as i64).collect();
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT position, payload, log_partition, log_offset FROM event_store \
             WHERE stream_id = $1 AND tenant = $2 AND stream_version = ANY($3) \
             ORDER BY stream_version",
        )
        .bind(stream_id)
        .bind(tenant)
        .bind(&versions)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| self.decode(row)).collect()
    }

    /// Published events of `partition` from `from_offset` on, in log order, at most `limit`:
    /// the log as the store holds it. The relay marks each published batch in one
    /// statement, one batch after the other, so a reader that stopped at an offset never
    /// sees an earlier one appear later; offsets the store does not hold (another
    /// producer's record, a stale relay's duplicate) are simply absent.
    ///
    /// Each row is decoded on its own: one the codec cannot read is returned as its error
    /// with its offset, so a reader can set it aside and go on.
    pub async fn published(
        &self,
        partition: i32,
        from_offset: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Result<StoredEvent>)>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT position, payload, log_partition, log_offset FROM event_store \
             WHERE log_partition = $1 AND log_offset >= $2 ORDER BY log_offset LIMIT $3",
        )
        .bind(partition)
        .bind(from_offset)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.log_offset.unwrap_or(from_offset), self.decode(row)))
            .collect())
    }

    /// The stream's current version and the version `as_of` designates (the last event at
    /// or before it; 0 when the stream did not exist yet).
    pub async fn versions(&self, tenant: &str, stream_id: Uuid, as_of: AsOf) -> Result<(u64, u64)> {
        let (current, at_time): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT max(stream_version), \
                    max(stream_version) FILTER (WHERE occurred_at <= $3) \
             FROM event_store WHERE stream_id = $1 AND tenant = $2",
        )
        .bind(stream_id)
        .bind(tenant)
        .bind(match as_of {
            AsOf::Time(time) => Some(time),
            AsOf::Version(_) => None,
        })
        .fetch_one(&self.pool)
        .await?;
        let current = current.unwrap_or(0) as u64;
        let target = match as_of {
            AsOf::Version(version) => version,
            AsOf::Time(_) => at_time.unwrap_or(0) as u64,
        };
        Ok((current, target))
    }

    fn decode(&self, row: EventRow) -> Result<StoredEvent> {
        Ok(StoredEvent {
            position: row.position,
            envelope: self.codec.decode(&row.payload)?,
            log: row
                .log_partition
                .zip(row.log_offset)
                .map(|(partition, offset)| LogPosition { partition, offset }),
        })
    }

    /// Appends one event at `envelope.metadata.stream_version`, which must be the stream's
    /// next version, and returns its store position. The unique constraints decide races:
    /// a taken version is [`Error::VersionConflict`], a known command id is
    /// [`Error::DuplicateCommand`].
    pub async fn append(&self, envelope: &EventEnvelope, fingerprint: Option<&str>) -> Result<i64> {
        let encoded = self.codec.encode(envelope)?;
        if let Some(limit) = &self.record_limit {
            let bytes = record_bytes(envelope, &encoded, &limit.cloudevents_source);
            if bytes > limit.max_bytes {
                return Err(Error::EventTooLarge {
                    bytes,
                    max_bytes: limit.max_bytes,
                });
            }
        }
        let metadata = &envelope.metadata;
        // Stored events never change, so the predecessor's hash needs no transaction around
        // this read and the insert; a concurrent append of the same version loses on
        // UNIQUE(stream_id, stream_version), so the chain cannot fork in the store.
        let remembered = self
            .last_hashes
            .lock()
            .expect("hash cache lock")
            .get(&metadata.stream_id)
            .filter(|(version, _)| *version + 1 == metadata.stream_version)
            .map(|(_, hash)| *hash);
        let prev_hash = if let Some(hash) = remembered {
            hash
        } else if metadata.stream_version > 1 {
            let previous: Option<Option<Vec<u8>>> = sqlx::query_scalar(
                "SELECT event_hash FROM event_store WHERE stream_id = $1 AND stream_version = $2",
            )
            .bind(metadata.stream_id)
            .bind(metadata.stream_version as i64 - 1)
            .fetch_optional(&self.pool)
            .await?;
            // A predecessor from before the chain existed (NULL) starts a new chain.
            previous
                .flatten()
                .as_deref()
                .and_then(chain::from_bytes)
                .unwrap_or(chain::GENESIS)
        } else {
            chain::GENESIS
        };
        let event_hash = ChainedEvent {
            tenant: &metadata.tenant,
            stream_id: metadata.stream_id,
            stream_version: metadata.stream_version,
            event_id: metadata.event_id,
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            occurred_at: metadata.occurred_at,
            payload: &encoded.payload,
        }
        .hash(&prev_hash);
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO event_store (tenant, stream_id, stream_version, event_id, command_id, \
             event_type, schema_version, occurred_at, correlation_id, causation_id, \
             traceparent, tracestate, payload, command_fingerprint, prev_hash, event_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             RETURNING position",
        )
        .bind(&metadata.tenant)
        .bind(metadata.stream_id)
        .bind(metadata.stream_version as i64)
        .bind(metadata.event_id)
        .bind(metadata.command_id)
        .bind(encoded.event_type)
        .bind(encoded.schema_version as i32)
        .bind(metadata.occurred_at)
        .bind(metadata.correlation_id)
        .bind(metadata.causation_id)
        .bind(&metadata.traceparent)
        .bind(&metadata.tracestate)
        .bind(&encoded.payload)
        .bind(fingerprint)
        .bind(prev_hash.as_slice())
        .bind(event_hash.as_slice())
        .fetch_one(&self.pool)
        .await;
        let position = inserted.map_err(|error| classify_insert_error(error, envelope))?;
        {
            let mut last_hashes = self.last_hashes.lock().expect("hash cache lock");
            if last_hashes.len() >= REMEMBERED_STREAMS {
                last_hashes.clear();
            }
            last_hashes.insert(metadata.stream_id, (metadata.stream_version, event_hash));
        }
        self.waker.local.notify_one();
        // The event is committed: a lost wake-up only delays the relay by its poll
        // interval, so it must not turn a successful append into an error.
        if !self.waker.heard_in_process()
            && let Err(error) = notify(&self.pool, APPENDED_CHANNEL, "").await
        {
            tracing::warn!(%error, "relay not woken; it finds the event at its next poll");
        }
        Ok(position)
    }

    /// The event a command appended, if it was appended before.
    pub async fn find_command(
        &self,
        tenant: &str,
        command_id: Uuid,
    ) -> Result<Option<AppendedCommand>> {
        let row: Option<(Uuid, i64, i64, Uuid, Option<String>)> = sqlx::query_as(
            "SELECT stream_id, stream_version, position, event_id, command_fingerprint \
             FROM event_store WHERE tenant = $1 AND command_id = $2",
        )
        .bind(tenant)
        .bind(command_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(stream_id, version, position, event_id, fingerprint)| AppendedCommand {
                stream_id,
                version: version as u64,
                position,
                event_id,
                fingerprint,
            },
        ))
    }

    /// Where the event at `position` stands: published (and where), parked (and why), or
    /// still pending.
    pub async fn publication(&self, position: i64) -> Result<PublicationStatus> {
        let row: Option<(Option<i32>, Option<i64>, bool)> = sqlx::query_as(
            "SELECT log_partition, log_offset, parked_at IS NOT NULL FROM event_store \
             WHERE position = $1 AND (published_at IS NOT NULL OR parked_at IS NOT NULL)",
        )
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((Some(partition), Some(offset), _)) => {
                PublicationStatus::Published(LogPosition { partition, offset })
            }
            Some((_, _, true)) => match ParkedEvents::new(self.pool.clone()).get(position).await? {
                Some(parked) => PublicationStatus::Parked(Box::new(parked)),
                // Redriven in between: back in the outbox.
                None => PublicationStatus::Pending,
            },
            _ => PublicationStatus::Pending,
        })
    }
}

fn classify_insert_error(error: sqlx::Error, envelope: &EventEnvelope) -> Error {
    let constraint = error
        .as_database_error()
        .filter(|e| e.code().as_deref() == Some("23505"))
        .and_then(|e| e.constraint().map(str::to_owned));
    match constraint.as_deref() {
        Some("event_store_stream_id_stream_version_key") => Error::VersionConflict {
            stream_id: envelope.metadata.stream_id,
            version: envelope.metadata.stream_version,
        },
        Some("event_store_tenant_command_id_key") => {
            Error::DuplicateCommand(envelope.metadata.command_id)
        }
        _ => Error::Database(error),
    }
}

/// Sends `payload` (digits and punctuation only) on `channel`, in one round trip and a
/// transaction of its own.
///
/// Never inside a data transaction: a transaction that NOTIFYs holds a database-wide lock
/// through its commit's WAL flush, which would serialize every append (about one per
/// fsync). A notification is a wake-up that needs no durability, so it commits
/// asynchronously and the lock is brief; a lost one only costs a poll interval.
pub(crate) async fn notify(pool: &PgPool, channel: &'static str, payload: &str) -> Result<()> {
    debug_assert!(
        payload
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b',' || b == b'-')
    );
    let statement = format!(
        "BEGIN; SET LOCAL synchronous_commit TO OFF; NOTIFY {channel}, '{payload}'; COMMIT;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(pool)
        .await?;
    Ok(())
}
