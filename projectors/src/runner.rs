//! Runs a projection: a consumer on its own thread, batches applied in one transaction
//! each, checkpoints committed with the rows, records that cannot be applied dead-lettered.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowline_domain::EventEnvelope;
use flowline_event_log::{
    KafkaSettings, LogProducer, LogRecord, OutgoingRecord, PartitionConsumer, consumer_config,
};
use flowline_event_store::PublishedHistory;
use flowline_schemas::EventCodec;
use flowline_service_kit::health::{Health, TaskReport, TaskState};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint;
use crate::dead_letter;
use crate::leases::{Leases, RENEW_EVERY};
use crate::projection::{ApplyError, LogPlace, Projection};
use crate::{Error, Result};

/// Longest time between two commits of the group's offsets.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Tries of a failing handler before its record is dead-lettered.
pub const HANDLER_ATTEMPTS: i32 = 3;
/// How often the checkpoints of the owned partitions are compared with the log's
/// watermarks even when nothing seems wrong: a log that was recreated or trimmed under an
/// idle projection shows nothing to its consumer.
const WATERMARK_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What a runner needs.
pub struct RunnerSettings {
    pub(crate) pool: PgPool,
    pub(crate) kafka: KafkaSettings,
    pub(crate) group_id: String,
    pub(crate) batch_size: usize,
    pub(crate) fetch_wait_ms: u32,
}

/// The dead-letter topic of a topic.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Creates the dead-letter topic of `kafka.topic` if missing and returns a producer to it.
pub async fn dead_letter_producer(kafka: &KafkaSettings) -> Result<LogProducer> {
    let settings = KafkaSettings {
        topic: dead_letter_topic(&kafka.topic),
        partitions: 1,
        ..kafka.clone()
    };
    flowline_event_log::ensure_topic(&settings).await?;
    Ok(LogProducer::new(&settings)?)
}

/// Starts `projection` on a thread of its own; it stops when `stop` is cancelled. Its
/// state shows in `health` (halted, or failed if the thread panicked).
pub fn spawn<P: Projection>(
    projection: P,
    settings: RunnerSettings,
    dead_letters: LogProducer,
    stop: CancellationToken,
    health: &Health,
) -> Result<JoinHandle<()>> {
    let runtime = Handle::current();
    let mut config = consumer_config(&settings.kafka.brokers, &settings.group_id);
    config.set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string());
    // A position the log does not hold is an error to look at, never a silent jump to
    // the beginning: see `misplaced`.
    config.set("auto.offset.reset", "error");
    let report = health.task(&format!("projection {}", projection.name()));
    let consumer = PartitionConsumer::new(&config, &settings.kafka.topic)?;
    let partitions =
        flowline_event_log::topic_partitions(&settings.kafka.brokers, &settings.kafka.topic)?;
    let leases = Leases::new(settings.pool.clone(), projection.name(), partitions);
    let runner = Runner::new(projection, None, settings, dead_letters);
    let handle = std::thread::Builder::new()
        .name(format!("projector-{}", runner.projection.name()))
        .spawn(move || runner.run(consumer, leases, runtime, stop, report))
        .expect("spawn projector thread");
    Ok(handle)
}

pub(crate) struct Runner<P> {
    projection: Arc<P>,
    /// Name its checkpoints and dead letters are kept under (the projection's name, or a
    /// rebuild's).
    checkpoint: String,
    settings: RunnerSettings,
    dead_letters: LogProducer,
    codec: EventCodec,
    /// Where records read from the event store get their headers.
    history: Option<PublishedHistory>,
}

/// An event with its place on the log.
type Placed = (EventEnvelope, LogPlace);

/// What following the leases found.
enum Placement {
    /// Nothing to do.
    Unchanged,
    /// Reading every owned partition from its checkpoint.
    Reading,
    /// A checkpoint is not a position the log holds (why, and the positions then):
    /// reading nothing.
    Halted(String, Positions),
}

/// Next offset per partition (`None`: none stored yet).
type Positions = HashMap<i32, Option<i64>>;

/// Why the log cannot be read from one of `positions` (next offset per partition; `None`
/// reads from offset 0): a checkpoint past the high watermark means the log is not the one
/// the projection read (the topic was recreated), one below the low watermark means records
/// were deleted (retention) before they were applied. Reading on would skip records, or
/// apply other records at known offsets; the projection halts instead.
fn misplaced(kafka: &KafkaSettings, positions: &Positions) -> Result<Option<String>> {
    let marks =
        flowline_event_log::watermarks(&kafka.brokers, &kafka.topic, positions.keys().copied())?;
    let mut partitions: Vec<_> = positions.iter().collect();
    partitions.sort();
    for (&partition, &next) in partitions {
        let (low, high) = marks[&partition];
        if let Some(problem) = position_problem(partition, next.unwrap_or(0), low, high) {
            return Ok(Some(problem));
        }
    }
    Ok(None)
}

/// Why reading `partition` from `next` would not read what the projection has not applied
/// yet, given the log's watermarks.
fn position_problem(partition: i32, next: i64, low: i64, high: i64) -> Option<String> {
    if next > high {
        return Some(format!(
            "partition {partition}: checkpoint {next} is ahead of the log's high watermark {high} \
             (was the topic recreated?); rebuild the projection or restore the log"
        ));
    }
    if next < low {
        return Some(format!(
            "partition {partition}: checkpoint {next} is behind the log's low watermark {low}: \
             records {next}..{low} were deleted before they were applied (retention?); \
             rebuild the projection from the event store"
        ));
    }
    None
}

/// Records with their events decoded: decoding is pure work that a reader can do ahead,
/// on its own thread, while the previous batch is being written.
pub(crate) struct DecodedBatch {
    records: Vec<LogRecord>,
    /// The decodable records' events, in batch order, with their places.
    events: Vec<(EventEnvelope, LogPlace)>,
    /// For each event, the index of its record.
    sources: Vec<usize>,
    /// Records that cannot be decoded, with why.
    undecodable: Vec<(usize, String)>,
}

impl DecodedBatch {
    pub(crate) fn decode(codec: &EventCodec, records: Vec<LogRecord>) -> Self {
        let mut events = Vec::with_capacity(records.len());
        let mut sources = Vec::with_capacity(records.len());
        let mut undecodable = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let place = LogPlace {
                partition: record.partition,
                offset: record.offset,
            };
            match record
                .payload
                .as_deref()
                .map(|payload| codec.decode(payload))
            {
                Some(Ok(envelope)) => {
                    events.push((envelope, place));
                    sources.push(index);
                }
                Some(Err(error)) => undecodable.push((index, format!("undecodable: {error}"))),
                None => undecodable.push((index, "record has no value".to_owned())),
            }
        }
        Self {
            records,
            events,
            sources,
            undecodable,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A record the batch dead-lettered, to copy to the dead-letter topic after commit.
struct Rejected {
    message: LogRecord,
    reason: String,
}

/// How a batch is applied: all at once, or each record in a savepoint of its own so a
/// failing one can be dead-lettered without losing the others.
#[derive(Clone, Copy, PartialEq)]
enum Isolation {
    Batch,
    PerRecord,
}

/// A handler failure that is the record's fault (dead-letter it), not the infrastructure's
/// (retry the batch).
fn is_record_failure(error: &ApplyError) -> bool {
    match error {
        ApplyError::OutOfOrder { .. } | ApplyError::Conflict { .. } => true,
        ApplyError::Database(sqlx::Error::Database(refused)) => {
            !refused.code().is_some_and(|code| is_transient(&code))
        }
        ApplyError::Database(_) | ApplyError::External(_) => false,
    }
}

/// SQLSTATEs that say nothing about the record: the same statement may succeed when tried
/// again (connection lost, deadlock or serialization failure, server short of resources or
/// shutting down, statement cancelled, lock not available), or it fails for every record
/// alike (a table or column missing, a privilege revoked: a deployment to fix, while the
/// lag shows the projection stalled). Dead-lettering on them would set aside good records,
/// and every later event of their streams after them.
fn is_transient(sqlstate: &str) -> bool {
    const TRANSIENT_CLASSES: [&str; 7] = [
        "08", // connection exception
        "40", // transaction rollback: serialization failure, deadlock
        "42", // syntax error or access rule violation: the schema, not the record
        "53", // insufficient resources
        "55", // object not in prerequisite state: lock not available
        "57", // operator intervention: cancelled, shutting down
        "58", // system error
    ];
    // A read-only transaction: connected to a server that is (now) a standby.
    const READ_ONLY: &str = "25006";
    sqlstate == READ_ONLY
        || TRANSIENT_CLASSES
            .iter()
            .any(|class| sqlstate.starts_with(class))
}

impl<P: Projection> Runner<P> {
    /// A runner of `projection` keeping checkpoints under `checkpoint` (default: its name).
    pub(crate) fn new(
        projection: P,
        checkpoint: Option<String>,
        settings: RunnerSettings,
        dead_letters: LogProducer,
    ) -> Self {
        Self {
            checkpoint: checkpoint.unwrap_or_else(|| projection.name().to_owned()),
            projection: Arc::new(projection),
            settings,
            dead_letters,
            codec: EventCodec::default(),
            history: None,
        }
    }

    /// Decodes the events of `records`.
    pub(crate) fn decode(&self, records: Vec<LogRecord>) -> DecodedBatch {
        DecodedBatch::decode(&self.codec, records)
    }

    /// Gives records read from `history` their headers when they are dead-lettered.
    pub(crate) fn with_history(mut self, history: Option<PublishedHistory>) -> Self {
        self.history = history;
        self
    }

    /// Renews the leases and, when the owned partitions changed, reads exactly those from
    /// their checkpoints, after checking (then, and whenever `check`) that the log holds
    /// those positions. A halt lasts until the checkpoints change (an operator rebuilt or
    /// reset the projection): a recreated log that grows past the old checkpoints would
    /// otherwise pass the check and have its first records skipped.
    async fn follow_leases(
        &self,
        leases: &Leases,
        consumer: &PartitionConsumer,
        owned: &mut BTreeSet<i32>,
        check: bool,
        halted: Option<&(String, Positions)>,
    ) -> Result<Placement> {
        let now_owned = leases.renew().await?;
        let moved = now_owned != *owned;
        if !moved && !check {
            return Ok(Placement::Unchanged);
        }
        let positions = checkpoint::positions(
            &self.settings.pool,
            self.projection.name(),
            &self.settings.kafka.topic,
            &now_owned,
        )
        .await?;
        let problem = match halted {
            Some((reason, at)) if *at == positions => Some(reason.clone()),
            _ => misplaced(&self.settings.kafka, &positions)?,
        };
        if let Some(reason) = problem {
            consumer.assign(&HashMap::new())?;
            // Owning "nothing read" makes the next renewal look again.
            owned.clear();
            return Ok(Placement::Halted(reason, positions));
        }
        if moved {
            consumer.assign(&positions)?;
            info!(projection = self.projection.name(), partitions = ?now_owned, "reading partitions");
            *owned = now_owned;
        }
        Ok(Placement::Reading)
    }

    /// One span per record that carries a `traceparent`, a child of the request that
    /// decided its event, open while its batch is applied: a trace shows the command and
    /// the projection of its event. Records read from the event store carry none.
    fn record_spans(&self, batch: &DecodedBatch) -> Vec<tracing::Span> {
        batch
            .records
            .iter()
            .filter_map(|record| {
                let traceparent = record
                    .headers
                    .iter()
                    .find(|(name, _)| name == "traceparent")?
                    .1
                    .as_deref()?;
                let span = tracing::info_span!(
                    "project",
                    projection = self.projection.name(),
                    partition = record.partition,
                    offset = record.offset
                );
                if span.is_disabled() {
                    return None;
                }
                flowline_service_kit::telemetry::adopt_traceparent(
                    &span,
                    std::str::from_utf8(traceparent).ok()?,
                );
                Some(span)
            })
            .collect()
    }

    fn run(
        self,
        consumer: PartitionConsumer,
        leases: Leases,
        runtime: Handle,
        stop: CancellationToken,
        report: TaskReport,
    ) {
        let name = self.projection.name();
        info!(projection = name, group = %self.settings.group_id, "projector started");
        let mut progress: HashMap<i32, i64> = HashMap::new();
        let mut progress_committed = Instant::now();
        let mut owned = BTreeSet::new();
        let mut renewed: Option<Instant> = None;
        let mut checked = Instant::now();
        let mut check_now = true;
        let mut halted: Option<(String, Positions)> = None;
        while !stop.is_cancelled() {
            if check_now || halted.is_some() || renewed.is_none_or(|at| at.elapsed() >= RENEW_EVERY)
            {
                let check = check_now || checked.elapsed() >= WATERMARK_CHECK_INTERVAL;
                let placed = runtime.block_on(self.follow_leases(
                    &leases,
                    &consumer,
                    &mut owned,
                    check,
                    halted.as_ref(),
                ));
                match placed {
                    Ok(Placement::Unchanged) => {}
                    Ok(Placement::Reading) => {
                        if halted.take().is_some() {
                            info!(projection = name, "checkpoints reset; projecting again");
                            report.resume();
                        }
                    }
                    Ok(Placement::Halted(reason, at)) => {
                        if halted.as_ref().is_none_or(|(before, _)| *before != reason) {
                            error!(projection = name, alert = "projection_halted", %reason, "projection halted");
                            report.halt(reason.clone());
                        }
                        halted = Some((reason, at));
                    }
                    Err(error) => warn!(%error, "lease renewal failed"),
                }
                if check {
                    checked = Instant::now();
                }
                check_now = false;
                renewed = Some(Instant::now());
            }
            if halted.is_some() {
                std::thread::sleep(RENEW_EVERY.min(Duration::from_millis(500)));
                continue;
            }
            let batch =
                match consumer.poll_records(self.settings.batch_size, Duration::from_millis(100)) {
                    Ok(batch) => self.decode(batch),
                    Err(error) => {
                        // An offset out of range among them: look at the watermarks now.
                        warn!(%error, "poll failed");
                        check_now = true;
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
            if batch.is_empty() {
                continue;
            }
            let spans = self.record_spans(&batch);
            let applied = runtime.block_on(self.apply_with_retries(&batch, &stop));
            drop(spans);
            let Some(next_offsets) = applied else {
                break;
            };
            progress.extend(next_offsets);
            // Group offsets only feed lag tools, so they are sent at most once per interval:
            // each commit is a write on the broker.
            if progress_committed.elapsed() >= GROUP_COMMIT_INTERVAL {
                if let Err(error) = consumer.commit_progress(&progress) {
                    warn!(%error, "group offset commit failed (checkpoints are in PostgreSQL)");
                }
                progress.clear();
                progress_committed = Instant::now();
            }
        }
        if let Err(error) = runtime.block_on(leases.release()) {
            warn!(%error, "leases not released; they expire on their own");
        }
        report.set(TaskState::Stopped);
        info!(projection = name, "projector stopped");
    }

    /// Applies a batch, retrying until it commits (record by record once a handler failed),
    /// and copies its dead letters to the dead-letter topic. `None` once `stop` is cancelled.
    pub(crate) async fn apply_with_retries(
        &self,
        batch: &DecodedBatch,
        stop: &CancellationToken,
    ) -> Option<HashMap<i32, i64>> {
        let mut failures = 0;
        let mut isolation = Isolation::Batch;
        loop {
            match self.apply_batch(batch, isolation).await {
                Ok((next_offsets, rejected)) => {
                    self.copy_to_dead_letter_topic(rejected).await;
                    return Some(next_offsets);
                }
                Err(BatchError::Record) => isolation = Isolation::PerRecord,
                Err(BatchError::Other(error)) if !stop.is_cancelled() => {
                    failures += 1;
                    error!(%error, failures, "batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * failures.min(10))).await;
                }
                Err(BatchError::Other(_)) => return None,
            }
        }
    }

    /// Applies a batch in one transaction; returns the new next offsets and the records
    /// dead-lettered.
    async fn apply_batch(
        &self,
        batch: &DecodedBatch,
        isolation: Isolation,
    ) -> Result<(HashMap<i32, i64>, Vec<Rejected>), BatchError> {
        let name = self.checkpoint.as_str();
        let topic = &self.settings.kafka.topic;
        let partitions: Vec<i32> = batch
            .records
            .iter()
            .map(|m| m.partition)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut transaction = self
            .settings
            .pool
            .begin()
            .await
            .map_err(BatchError::other)?;
        let checkpointed = checkpoint::lock(&mut transaction, name, topic, &partitions)
            .await
            .map_err(BatchError::other)?;
        // Records below the checkpoint were applied by an earlier batch (redelivery after a
        // rebalance or a crash), and so was a record the batch already holds once.
        let mut next = checkpointed;
        let mut advanced = HashMap::new();
        let fresh: Vec<bool> = batch
            .records
            .iter()
            .map(|record| {
                let next = next.entry(record.partition).or_insert(0);
                let fresh = record.offset >= *next;
                if fresh {
                    *next = record.offset + 1;
                    advanced.insert(record.partition, *next);
                }
                fresh
            })
            .collect();
        let is_new = |index: usize| fresh[index];
        let mut failures: Vec<(usize, String, i32)> = batch
            .undecodable
            .iter()
            .filter(|(index, _)| is_new(*index))
            .map(|(index, reason)| (*index, reason.clone(), 1))
            .collect();
        let (events, sources): (Cow<'_, [Placed]>, Cow<'_, [usize]>) =
            if batch.sources.iter().all(|index| is_new(*index)) {
                (Cow::Borrowed(&batch.events), Cow::Borrowed(&batch.sources))
            } else {
                let (events, sources) = batch
                    .events
                    .iter()
                    .zip(&batch.sources)
                    .filter(|(_, index)| is_new(**index))
                    .map(|(event, index)| (event.clone(), *index))
                    .unzip::<_, _, Vec<_>, Vec<_>>();
                (Cow::Owned(events), Cow::Owned(sources))
            };
        match isolation {
            Isolation::Batch if !events.is_empty() => {
                match self.projection.apply_all(&mut transaction, &events).await {
                    Ok(()) => {}
                    Err(error) if is_record_failure(&error) => return Err(BatchError::Record),
                    Err(error) => return Err(BatchError::other(error)),
                }
            }
            Isolation::Batch => {}
            Isolation::PerRecord => {
                for (event, &index) in events.iter().zip(sources.iter()) {
                    if let Some((reason, attempts)) =
                        self.apply_isolated(&mut transaction, event).await?
                    {
                        failures.push((index, reason, attempts));
                    }
                }
            }
        }
        failures.sort_by_key(|(index, _, _)| *index);
        let mut rejected = Vec::with_capacity(failures.len());
        for (index, reason, attempts) in failures {
            let message = self.with_headers(&batch.records[index]).await?;
            error!(projection = name, partition = message.partition, offset = message.offset, %reason, "record dead-lettered");
            dead_letter::record(&mut transaction, name, &message, &reason, attempts)
                .await
                .map_err(BatchError::other)?;
            rejected.push(Rejected { message, reason });
        }
        if !advanced.is_empty() {
            checkpoint::advance(&mut transaction, name, topic, &advanced)
                .await
                .map_err(BatchError::other)?;
        }
        transaction.commit().await.map_err(BatchError::other)?;
        Ok((advanced, rejected))
    }

    /// The record as dead letters keep it: records read from the event store come without
    /// their headers, which are built only now.
    async fn with_headers(&self, message: &LogRecord) -> Result<LogRecord, BatchError> {
        let mut message = message.clone();
        if message.headers.is_empty()
            && let Some(history) = &self.history
        {
            message.headers = history
                .headers(message.partition, message.offset)
                .await
                .map_err(BatchError::other)?;
        }
        Ok(message)
    }

    /// Applies one record in a savepoint of its own; `Some((reason, attempts))` when it
    /// must be dead-lettered.
    async fn apply_isolated(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        event: &(EventEnvelope, LogPlace),
    ) -> Result<Option<(String, i32)>, BatchError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut savepoint = sqlx::Acquire::begin(&mut *transaction)
                .await
                .map_err(BatchError::other)?;
            match self
                .projection
                .apply_all(&mut savepoint, std::slice::from_ref(event))
                .await
            {
                Ok(()) => {
                    savepoint.commit().await.map_err(BatchError::other)?;
                    return Ok(None);
                }
                Err(error) if is_record_failure(&error) => {
                    savepoint.rollback().await.map_err(BatchError::other)?;
                    let deterministic = matches!(
                        error,
                        ApplyError::OutOfOrder { .. } | ApplyError::Conflict { .. }
                    );
                    if deterministic || attempts >= HANDLER_ATTEMPTS {
                        return Ok(Some((error.to_string(), attempts)));
                    }
                }
                Err(error) => return Err(BatchError::other(error)),
            }
        }
    }

    /// Copies dead-lettered records to `<topic>.dlq` for consumers outside the database.
    /// Best effort: the `dead_letters` table is the record operators re-drive from.
    async fn copy_to_dead_letter_topic(&self, rejected: Vec<Rejected>) {
        if rejected.is_empty() {
            return;
        }
        let records: Vec<OutgoingRecord> = rejected
            .into_iter()
            .map(|Rejected { message, reason }| {
                let mut headers: Vec<(String, Vec<u8>)> = message
                    .headers
                    .into_iter()
                    .map(|(key, value)| (key, value.unwrap_or_default()))
                    .collect();
                headers.push(("dlq-reason".into(), reason.into_bytes()));
                headers.push((
                    "dlq-projection".into(),
                    self.projection.name().as_bytes().to_vec(),
                ));
                headers.push((
                    "dlq-source-partition".into(),
                    message.partition.to_string().into_bytes(),
                ));
                headers.push((
                    "dlq-source-offset".into(),
                    message.offset.to_string().into_bytes(),
                ));
                OutgoingRecord {
                    key: message.key.unwrap_or_default(),
                    partition: 0,
                    payload: message.payload.unwrap_or_default(),
                    headers,
                }
            })
            .collect();
        if let Err(error) = self.dead_letters.publish(&records).await {
            warn!(%error, "dead letters not copied to the dead-letter topic");
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A record's handler failed: retry the batch record by record.
    Record,
    /// Anything else: retry the batch later.
    Other(Error),
}

impl BatchError {
    fn other(error: impl Into<Error>) -> Self {
        Self::Other(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::{is_transient, position_problem};

    #[test]
    fn a_checkpoint_outside_the_logs_watermarks_is_a_problem_naming_why() {
        assert_eq!(
            position_problem(0, 0, 0, 0),
            None,
            "an empty log, nothing applied"
        );
        assert_eq!(position_problem(0, 5, 0, 5), None, "caught up");
        assert_eq!(
            position_problem(0, 3, 2, 9),
            None,
            "behind, still on the log"
        );
        let ahead = position_problem(1, 7, 0, 2).unwrap();
        assert!(
            ahead.contains("partition 1") && ahead.contains("ahead of the log's high watermark 2"),
            "{ahead}"
        );
        // Retention deleted offsets 3 and 4 before the projection applied them: reading
        // on from the low watermark would skip them.
        let behind = position_problem(2, 3, 5, 9).unwrap();
        assert!(
            behind.contains("behind the log's low watermark 5") && behind.contains("records 3..5"),
            "{behind}"
        );
    }

    #[test]
    fn infrastructure_failures_are_retried_and_refused_records_dead_lettered() {
        for retried in [
            "40001", "40P01", "57014", "57P01", "08006", "53300", "55P03", "42P01",
        ] {
            assert!(is_transient(retried), "{retried}");
        }
        for refused in ["23514", "23505", "23502", "23503", "22P02", "22001"] {
            assert!(!is_transient(refused), "{refused}");
        }
    }
}
