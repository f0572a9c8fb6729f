//! Rebuilding a projection without downtime: a new copy builds into shadow tables (schema
//! `rebuild_<id>`, same tables as the live ones) while readers keep reading the live
//! tables; once it has caught up with the head of the log it is swapped in atomically (one
//! transaction moves the live tables to `retired_<id>` and the shadow ones to `public`, and
//! hands the rebuild's checkpoints to the live projection); the retired tables are dropped
//! after a grace period. A rebuild that stops (crash, Ctrl-C) resumes from its own
//! checkpoints the next time it is started.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flowline_event_log::{
    KafkaSettings, LogProducer, LogRecord, PartitionConsumer, consumer_config,
};
use flowline_event_store::PublishedHistory;
use flowline_graph::{AnyGraph, PostgresGraph};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::checkpoint;
use crate::config::HistorySource;
use crate::dead_letter;
use crate::projection::Projection;
use crate::runner::{DecodedBatch, Runner, RunnerSettings};
use crate::usage::{self, Usage};
use crate::workflow_graph::{self, WorkflowGraph};
use crate::workflow_read_model::{self, WorkflowReadModel};
use crate::{Error, Result};

/// The tables each projection owns (what a rebuild shadows and swaps).
pub fn tables_of(projection: &str) -> Option<&'static [&'static str]> {
    match projection {
        workflow_read_model::NAME => Some(&[
            "workflows",
            "workflow_steps",
            "workflow_step_attempts",
            "workflow_events",
        ]),
        workflow_graph::NAME => Some(&["graph_nodes", "graph_edges"]),
        usage::NAME => Some(usage::TABLES),
        _ => None,
    }
}

/// Where a rebuild starts reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartAt {
    /// The first record of every partition.
    Beginning,
    /// The first record at or after this time in every partition (Kafka `offsets_for_times`).
    Time(DateTime<Utc>),
}

/// How far a rebuild got.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Progress {
    /// Records applied by this run of the rebuild.
    pub applied: u64,
    /// Of those, read from the event store's copy of the published history.
    pub from_event_store: u64,
    /// Of those, read from the log (the broker).
    pub from_log: u64,
    /// Records still to read up to the current head of the log.
    pub remaining: u64,
    /// Records per second over this run.
    pub rate: f64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
}

/// A rebuild as recorded.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RebuildRecord {
    /// Its id.
    pub id: Uuid,
    /// The projection rebuilt.
    pub projection: String,
    /// `running`, `swapped`, `failed` (resumed when started again from the same point) or
    /// `abandoned` (a failed one replaced by a rebuild from another point).
    pub status: String,
    /// Where it started, when not from the beginning.
    pub from_time: Option<DateTime<Utc>>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When its tables went live.
    pub swapped_at: Option<DateTime<Utc>>,
    /// When the tables it replaced are dropped.
    pub retired_until: Option<DateTime<Utc>>,
    /// Latest progress.
    #[schema(value_type = Object)]
    pub progress: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
}

impl RebuildRecord {
    fn shadow_schema(&self) -> String {
        format!("rebuild_{}", self.id.simple())
    }

    fn retired_schema(&self) -> String {
        format!("retired_{}", self.id.simple())
    }

    /// The name its checkpoints are kept under.
    pub fn checkpoint(&self) -> String {
        format!("{}@rebuild-{}", self.projection, self.id.simple())
    }
}

/// A rebuild's record.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<RebuildRecord>> {
    Ok(sqlx::query_as("SELECT id, projection, status, from_time, started_at, swapped_at, retired_until, progress, error \
                        FROM projection_rebuilds WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Rebuilds still running (interrupted ones included).
pub async fn running(pool: &PgPool) -> Result<Vec<RebuildRecord>> {
    Ok(sqlx::query_as(
        "SELECT id, projection, status, from_time, started_at, swapped_at, retired_until, progress, error \
         FROM projection_rebuilds WHERE status = 'running' ORDER BY started_at",
    )
    .fetch_all(pool)
    .await?)
}

/// Gives up a failed rebuild: its tables, checkpoints and pending dead letters go.
async fn abandon(pool: &PgPool, id: Uuid) -> Result<()> {
    let record = find(pool, id)
        .await?
        .ok_or_else(|| Error::Rebuild("rebuild vanished".into()))?;
    let mut transaction = pool.begin().await?;
    sqlx::query("UPDATE projection_rebuilds SET status = 'abandoned' WHERE id = $1")
        .bind(id)
        .execute(&mut *transaction)
        .await?;
    drop_schema(&mut transaction, &record.shadow_schema()).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(record.checkpoint())
        .execute(&mut *transaction)
        .await?;
    dead_letter::supersede(&mut transaction, &record.checkpoint()).await?;
    transaction.commit().await?;
    Ok(())
}

/// Why `projection` cannot be rebuilt with this graph store, if it cannot: a rebuild builds
/// shadow PostgreSQL tables and swaps them in, and a graph view kept in Dgraph has none.
pub fn refusal(projection: &str, graph: &flowline_graph::GraphSettings) -> Option<String> {
    (graph.dgraph_url.is_some() && projection == workflow_graph::NAME).then(|| {
        "the graph view lives in Dgraph (DGRAPH_URL); shadow rebuilds are PostgreSQL only".into()
    })
}

/// Starts a rebuild of `projection`, or returns the one not finished (running, interrupted
/// or failed) to resume it. The flag says whether an earlier rebuild is resumed.
pub async fn start(
    pool: &PgPool,
    kafka: &KafkaSettings,
    projection: &str,
    at: StartAt,
) -> Result<(RebuildRecord, bool)> {
    let tables = tables_of(projection)
        .ok_or_else(|| Error::Rebuild(format!("unknown projection '{projection}'")))?;
    let requested_from = match at {
        StartAt::Time(time) => Some(time),
        StartAt::Beginning => None,
    };
    let unfinished: Option<(Uuid, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, status, from_time FROM projection_rebuilds \
         WHERE projection = $1 AND status IN ('running', 'failed') \
         ORDER BY started_at DESC LIMIT 1",
    )
    .bind(projection)
    .fetch_optional(pool)
    .await?;
    if let Some((id, status, from)) = unfinished {
        // The stored time has microseconds; compare what both can say.
        let micros = |time: Option<DateTime<Utc>>| time.map(|t| t.timestamp_micros());
        if micros(from) == micros(requested_from) {
            sqlx::query(
                "UPDATE projection_rebuilds SET status = 'running', error = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(pool)
            .await?;
            let record = find(pool, id)
                .await?
                .ok_or_else(|| Error::Rebuild("rebuild vanished".into()))?;
            return Ok((record, true));
        }
        if status == "running" {
            let since = from.map_or("the beginning".to_owned(), |t| t.to_rfc3339());
            return Err(Error::RebuildBusy(format!(
                "rebuild {id} of {projection} from {since} is still running; \
                 start one from another point once it has finished or failed"
            )));
        }
        // A failed rebuild from another point: the new request replaces it.
        abandon(pool, id).await?;
    }
    let start_offsets = match at {
        StartAt::Beginning => None,
        StartAt::Time(time) => {
            if time > Utc::now() {
                return Err(Error::Rebuild(format!(
                    "--from {} is in the future",
                    time.to_rfc3339()
                )));
            }
            let (brokers, topic) = (kafka.brokers.clone(), kafka.topic.clone());
            let offsets = tokio::task::spawn_blocking(move || {
                flowline_event_log::offsets_at_time(&brokers, &topic, time.timestamp_millis())
            })
            .await
            .map_err(|e| Error::Rebuild(e.to_string()))??;
            Some(offsets)
        }
    };
    let id = Uuid::now_v7();
    let mut transaction = pool.begin().await?;
    let record: RebuildRecord = sqlx::query_as(
        "INSERT INTO projection_rebuilds (id, projection, status, from_time) VALUES ($1, $2, 'running', $3) \
         RETURNING id, projection, status, from_time, started_at, swapped_at, retired_until, progress, error",
    )
    .bind(id)
    .bind(projection)
    .bind(match at {
        StartAt::Time(time) => Some(time),
        StartAt::Beginning => None,
    })
    .fetch_one(&mut *transaction)
    .await?;
    let shadow = record.shadow_schema();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {shadow}")))
        .execute(&mut *transaction)
        .await?;
    for table in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {shadow}.{table} (LIKE public.{table} INCLUDING ALL)"
        )))
        .execute(&mut *transaction)
        .await?;
    }
    if let Some(offsets) = start_offsets {
        let (partitions, next): (Vec<i32>, Vec<i64>) = offsets.into_iter().unzip();
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset) \
             SELECT $1, $2, p, o FROM unnest($3::int[], $4::bigint[]) AS c(p, o)",
        )
        .bind(record.checkpoint())
        .bind(&kafka.topic)
        .bind(&partitions)
        .bind(&next)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    info!(%id, projection, "rebuild started");
    Ok((record, false))
}

/// What a rebuild run needs.
#[derive(Clone)]
pub struct RebuildSettings {
    /// The database (its URL, to open a pool whose `search_path` puts the shadow first).
    pub database_url: String,
    /// A pool on the same database.
    pub pool: PgPool,
    /// The log.
    pub kafka: KafkaSettings,
    /// Records per transaction.
    pub batch_size: usize,
    /// How long the replaced tables are kept.
    pub grace: Duration,
    /// Producer of the dead-letter topic.
    pub dead_letters: LogProducer,
    /// Where history is read from, when not from the log alone.
    pub history: Option<PublishedHistory>,
}

impl RebuildSettings {
    /// The settings of the projectors' configuration (creates the dead-letter topic).
    pub async fn from_config(config: &crate::Config, pool: PgPool) -> Result<Self> {
        Ok(RebuildSettings {
            database_url: config.database.url.clone(),
            pool: pool.clone(),
            kafka: config.kafka.clone(),
            batch_size: config.rebuild_batch_size,
            grace: std::time::Duration::from_secs(config.rebuild_grace_seconds),
            dead_letters: crate::runner::dead_letter_producer(&config.kafka).await?,
            history: (config.rebuild_history == HistorySource::EventStore).then(|| {
                PublishedHistory::new(
                    pool.clone(),
                    &config.kafka.topic,
                    &config.cloudevents_source,
                )
            }),
        })
    }
}

/// Runs (or resumes) a rebuild until it is swapped in or `stop` is cancelled, calling
/// `report` with its progress about once a second. Blocks: call it on a thread of its own.
pub fn run(
    settings: RebuildSettings,
    record: RebuildRecord,
    runtime: Handle,
    stop: CancellationToken,
    mut report: impl FnMut(&Progress),
) -> Result<RebuildRecord> {
    // One runner per rebuild, whichever process started it.
    let mut guard = runtime.block_on(sqlx::PgConnection::connect(&settings.database_url))?;
    let locked: bool = runtime.block_on(
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(record.id.to_string())
            .fetch_one(&mut guard),
    )?;
    if !locked {
        return Err(Error::Rebuild(format!(
            "rebuild {} is already running elsewhere",
            record.id
        )));
    }
    // Without its schema, the search path would send the rebuild's writes to the live
    // tables.
    let shadow_exists: bool = runtime.block_on(
        sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(record.shadow_schema())
            .fetch_one(&mut guard),
    )?;
    let outcome = if shadow_exists {
        rebuild_in_shadow(&settings, &record, &runtime, &stop, &mut report)
    } else {
        Err(Error::Rebuild(format!(
            "its tables (schema {}) are gone",
            record.shadow_schema()
        )))
    };
    if let Err(error) = &outcome {
        warn!(id = %record.id, %error, "rebuild stopped; it resumes when started again");
        // Stopped by a shutdown it stays running (the next start of the service resumes
        // it); stopped by an error it says so, instead of running in name only. The lock
        // goes first, so a start right after the failure finds it free.
        if !stop.is_cancelled() {
            let marked = runtime.block_on(async {
                sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
                    .bind(record.id.to_string())
                    .execute(&mut guard)
                    .await?;
                sqlx::query(
                    "UPDATE projection_rebuilds SET status = 'failed', error = $2 \
                     WHERE id = $1 AND status = 'running'",
                )
                .bind(record.id)
                .bind(error.to_string())
                .execute(&settings.pool)
                .await
            });
            if let Err(error) = marked {
                warn!(id = %record.id, %error, "rebuild's failure not recorded");
            }
        }
    }
    outcome?;
    runtime
        .block_on(find(&settings.pool, record.id))?
        .ok_or_else(|| Error::Rebuild("rebuild vanished".into()))
}

/// Builds the projection into the rebuild's shadow schema until it swapped in.
fn rebuild_in_shadow(
    settings: &RebuildSettings,
    record: &RebuildRecord,
    runtime: &Handle,
    stop: &CancellationToken,
    report: &mut impl FnMut(&Progress),
) -> Result<()> {
    let options = PgConnectOptions::from_str(&settings.database_url)
        .map_err(Error::Database)?
        .options([("search_path", format!("{},public", record.shadow_schema()))]);
    let shadow_pool = runtime.block_on(
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options),
    )?;
    let runner_settings = RunnerSettings {
        pool: shadow_pool.clone(),
        kafka: settings.kafka.clone(),
        group_id: record.checkpoint(),
        batch_size: settings.batch_size,
        fetch_wait_ms: 10,
    };
    match record.projection.as_str() {
        workflow_graph::NAME => {
            let graph = WorkflowGraph::new(AnyGraph::Postgres(PostgresGraph::new(shadow_pool)));
            let runner = shadow_runner(graph, settings, record, runner_settings);
            catch_up_and_swap(settings, record, &runner, runtime, stop, report)
        }
        usage::NAME => {
            let runner = shadow_runner(Usage, settings, record, runner_settings);
            catch_up_and_swap(settings, record, &runner, runtime, stop, report)
        }
        _ => {
            let read_model = WorkflowReadModel::shadow();
            let runner = shadow_runner(read_model, settings, record, runner_settings);
            catch_up_and_swap(settings, record, &runner, runtime, stop, report)
        }
    }
}

/// A runner of `projection` writing into the rebuild's shadow tables under its checkpoint
/// name, reading history where the settings say.
fn shadow_runner<P: Projection>(
    projection: P,
    settings: &RebuildSettings,
    record: &RebuildRecord,
    runner_settings: RunnerSettings,
) -> Runner<P> {
    Runner::new(
        projection,
        Some(record.checkpoint()),
        runner_settings,
        settings.dead_letters.clone(),
    )
    .with_history(settings.history.clone())
}

/// Reports progress about once a second (and whenever asked to): records applied, what is
/// left up to the head of the log, rate and ETA; also kept on the rebuild's record.
struct ProgressReporter<'a, R> {
    settings: &'a RebuildSettings,
    record: &'a RebuildRecord,
    runtime: &'a Handle,
    /// Asks the broker for the heads of the log: one client for the whole rebuild rather
    /// than a connection per report.
    log: PartitionConsumer,
    partitions: i32,
    report: &'a mut R,
    started: Instant,
    reported: Option<Instant>,
    progress: Progress,
}

impl<R: FnMut(&Progress)> ProgressReporter<'_, R> {
    fn applied(&mut self, from_event_store: usize, from_log: usize) {
        self.progress.applied += (from_event_store + from_log) as u64;
        self.progress.from_event_store += from_event_store as u64;
        self.progress.from_log += from_log as u64;
    }

    fn due(&self) -> bool {
        self.reported
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
    }

    /// The next offset the log will write, per partition.
    fn heads(&self) -> Result<Vec<(i32, i64)>> {
        (0..self.partitions)
            .map(|partition| Ok((partition, self.log.watermarks(partition)?.1)))
            .collect()
    }

    /// Measures and reports; returns the records still to read.
    fn report(&mut self) -> Result<u64> {
        let topic = &self.settings.kafka.topic;
        let highs = self.heads()?;
        let done = self.runtime.block_on(checkpoint::all(
            &self.settings.pool,
            &self.record.checkpoint(),
            topic,
        ))?;
        let progress = &mut self.progress;
        progress.remaining = highs
            .iter()
            .map(|(partition, high)| {
                (high - done.get(partition).copied().unwrap_or(0)).max(0) as u64
            })
            .sum();
        progress.rate = progress.applied as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        progress.eta_seconds =
            (progress.rate > 0.0).then(|| progress.remaining as f64 / progress.rate);
        (self.report)(progress);
        self.reported = Some(Instant::now());
        let progress_json = serde_json::to_value(&*progress).expect("serializable");
        self.runtime.block_on(
            sqlx::query("UPDATE projection_rebuilds SET progress = $2 WHERE id = $1")
                .bind(self.record.id)
                .bind(progress_json)
                .execute(&self.settings.pool),
        )?;
        Ok(progress.remaining)
    }
}

fn catch_up_and_swap<P: Projection>(
    settings: &RebuildSettings,
    record: &RebuildRecord,
    runner: &Runner<P>,
    runtime: &Handle,
    stop: &CancellationToken,
    report: &mut impl FnMut(&Progress),
) -> Result<()> {
    let topic = &settings.kafka.topic;
    let partitions = flowline_event_log::topic_partitions(&settings.kafka.brokers, topic)?;
    let all: BTreeSet<i32> = (0..partitions).collect();
    let mut reporter = ProgressReporter {
        settings,
        record,
        runtime,
        log: PartitionConsumer::new(
            &consumer_config(&settings.kafka.brokers, &record.checkpoint()),
            topic,
        )?,
        partitions,
        report,
        started: Instant::now(),
        reported: None,
        progress: Progress::default(),
    };
    if let Some(history) = &settings.history {
        replay_history(runner, stop, history, &mut reporter)?;
    }
    let consumer = PartitionConsumer::new(
        &consumer_config(&settings.kafka.brokers, &record.checkpoint()),
        topic,
    )?;
    let positions = runtime.block_on(checkpoint::positions(
        &settings.pool,
        &record.checkpoint(),
        topic,
        &all,
    ))?;
    consumer.assign(&positions)?;
    while !stop.is_cancelled() {
        let batch =
            runner.decode(consumer.poll_records(settings.batch_size, Duration::from_millis(100))?);
        if !batch.is_empty() {
            if runtime
                .block_on(runner.apply_with_retries(&batch, stop))
                .is_none()
            {
                break;
            }
            reporter.applied(0, batch.len());
        }
        if (batch.is_empty() || reporter.due())
            && reporter.report()? == 0
            && runtime.block_on(swap(settings, record, partitions))?
        {
            info!(id = %record.id, projection = record.projection, "rebuild swapped in");
            return Ok(());
        }
    }
    Err(Error::Rebuild("stopped before catching up".into()))
}

/// Applies everything published before the rebuild started (up to the high watermarks read
/// now), reading each partition from the event store in offset order. Offsets the store
/// does not hold (records of another producer, a stale relay's duplicates, a batch the
/// relay has not marked yet) are read from the log, so the projection sees exactly the
/// records a replay of the log would show, in the same order.
///
/// A reader thread reads and decodes the next batches while this one writes the current
/// one: reading, decoding and writing each take a core's share, and the database does its
/// part of the reading on a connection of its own.
fn replay_history<P: Projection, R: FnMut(&Progress)>(
    runner: &Runner<P>,
    stop: &CancellationToken,
    history: &PublishedHistory,
    reporter: &mut ProgressReporter<'_, R>,
) -> Result<()> {
    let (settings, record, runtime) = (reporter.settings, reporter.record, reporter.runtime);
    let topic = &settings.kafka.topic;
    let heads = reporter.heads()?;
    let start = runtime.block_on(checkpoint::all(&settings.pool, &record.checkpoint(), topic))?;
    let share = (settings.batch_size / heads.len().max(1)).max(1) as i64;
    let (batches, ready) = std::sync::mpsc::sync_channel::<Result<HistoryBatch>>(2);
    std::thread::scope(|scope| {
        let reader = HistoryReader {
            history,
            gaps: GapReader::new(settings, record),
            runtime,
            heads,
            next: start,
            share,
            decode: |records| runner.decode(records),
        };
        scope.spawn(move || reader.run(&batches, stop));
        // Ends when the reader has sent everything (or failed); returning early drops
        // `ready`, which stops the reader at its next send.
        for batch in ready {
            let HistoryBatch {
                batch,
                from_event_store,
                from_log,
            } = batch?;
            if runtime
                .block_on(runner.apply_with_retries(&batch, stop))
                .is_none()
            {
                return Err(Error::Rebuild("stopped before catching up".into()));
            }
            reporter.applied(from_event_store, from_log);
            if reporter.due() {
                reporter.report()?;
            }
        }
        if stop.is_cancelled() {
            return Err(Error::Rebuild("stopped before catching up".into()));
        }
        Ok(())
    })
}

/// One batch of history, decoded, with where its records came from.
struct HistoryBatch {
    batch: DecodedBatch,
    from_event_store: usize,
    from_log: usize,
}

/// Reads history ahead of the writer: from the event store, gaps from the log.
struct HistoryReader<'a, D> {
    history: &'a PublishedHistory,
    gaps: GapReader<'a>,
    runtime: &'a Handle,
    /// Where history ends: the high watermarks when the rebuild (re)started.
    heads: Vec<(i32, i64)>,
    /// The next offset to read per partition.
    next: HashMap<i32, i64>,
    /// Records per partition and batch.
    share: i64,
    decode: D,
}

impl<D: Fn(Vec<LogRecord>) -> DecodedBatch> HistoryReader<'_, D> {
    fn run(
        mut self,
        batches: &std::sync::mpsc::SyncSender<Result<HistoryBatch>>,
        stop: &CancellationToken,
    ) {
        while !stop.is_cancelled() {
            let batch = match self.read_batch(stop) {
                Ok(Some(batch)) => Ok(batch),
                Ok(None) => return,
                Err(error) => Err(error),
            };
            let failed = batch.is_err();
            if batches.send(batch).is_err() || failed {
                return;
            }
        }
    }

    /// The next batch, or `None` when every partition is read up to its head.
    fn read_batch(&mut self, stop: &CancellationToken) -> Result<Option<HistoryBatch>> {
        loop {
            let done = self
                .heads
                .iter()
                .all(|(partition, head)| self.next.get(partition).copied().unwrap_or(0) >= *head);
            if done {
                return Ok(None);
            }
            // A round can come back empty (a gap retention deleted): go on past it.
            if let Some(batch) = self.read_round(stop)? {
                return Ok(Some(batch));
            }
        }
    }

    /// One read of up to `share` offsets from every partition not yet at its head.
    fn read_round(&mut self, stop: &CancellationToken) -> Result<Option<HistoryBatch>> {
        let mut records: Vec<LogRecord> = Vec::new();
        let mut from_log = 0;
        for &(partition, head) in &self.heads {
            let from = self.next.get(&partition).copied().unwrap_or(0);
            if from >= head {
                continue;
            }
            let until = head.min(from + self.share);
            let stored = self
                .runtime
                .block_on(self.history.read(partition, from..until))?;
            // The store's records up to its first gap; the gap itself comes from the log.
            let first = stored.first().map_or(until, |record| record.offset);
            let taken: Vec<LogRecord> = if first > from {
                let missing = self.gaps.read(partition, from, first, stop)?;
                from_log += missing.len();
                missing
            } else {
                stored
                    .into_iter()
                    .zip(from..)
                    .take_while(|(record, expected)| record.offset == *expected)
                    .map(|(record, _)| record)
                    .collect()
            };
            // Past the gap even when retention left nothing of it on the log.
            let reached = taken
                .last()
                .map_or(first, |record| record.offset + 1)
                .max(first);
            self.next.insert(partition, reached);
            records.extend(taken);
        }
        if records.is_empty() {
            return Ok(None);
        }
        let from_event_store = records.len() - from_log;
        Ok(Some(HistoryBatch {
            batch: (self.decode)(records),
            from_event_store,
            from_log,
        }))
    }
}

/// Reads offset ranges of single partitions from the log, for the offsets the event store
/// does not hold. One consumer, created on first use and re-pointed for each range.
struct GapReader<'a> {
    settings: &'a RebuildSettings,
    group_id: String,
    consumer: Option<PartitionConsumer>,
}

impl<'a> GapReader<'a> {
    fn new(settings: &'a RebuildSettings, record: &RebuildRecord) -> Self {
        Self {
            settings,
            group_id: record.checkpoint(),
            consumer: None,
        }
    }

    /// The records of `partition` at offsets `from..until`, in order (fewer when retention
    /// deleted some: the log then starts later; none when it deleted them all).
    fn read(
        &mut self,
        partition: i32,
        from: i64,
        until: i64,
        stop: &CancellationToken,
    ) -> Result<Vec<LogRecord>> {
        let consumer = match &mut self.consumer {
            Some(consumer) => consumer,
            empty => empty.insert(PartitionConsumer::new(
                &consumer_config(&self.settings.kafka.brokers, &self.group_id),
                &self.settings.kafka.topic,
            )?),
        };
        let (first_held, _) = consumer.watermarks(partition)?;
        let mut expected = from.max(first_held);
        if expected >= until {
            return Ok(Vec::new());
        }
        consumer.assign(&HashMap::from([(partition, Some(expected))]))?;
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while expected < until {
            if stop.is_cancelled() {
                return Err(Error::Rebuild("stopped before catching up".into()));
            }
            if Instant::now() >= deadline {
                return Err(Error::Rebuild(format!(
                    "partition {partition}: offsets {expected}..{until} are not in the event store and could not be read from the log"
                )));
            }
            let polled =
                consumer.poll_records((until - expected) as usize, Duration::from_millis(200))?;
            // A re-pointed consumer may still hand out records fetched for the previous
            // range: only this partition's, at or after the next expected offset, count.
            for record in polled {
                if record.partition != partition || record.offset < expected {
                    continue;
                }
                if record.offset >= until {
                    return Ok(records);
                }
                expected = record.offset + 1;
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// Longest a swap waits for the live tables' readers before it steps back.
const SWAP_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause after a swap stepped back, in which the reads queued behind it go through.
const SWAP_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// SQLSTATE of a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Swaps the shadow tables in if the rebuild is at least as far as the live projection on
/// every partition; `false` when it is not yet, or when the live tables' readers kept
/// their locks past [`SWAP_LOCK_TIMEOUT`].
async fn swap(settings: &RebuildSettings, record: &RebuildRecord, partitions: i32) -> Result<bool> {
    let topic = &settings.kafka.topic;
    let all: Vec<i32> = (0..partitions).collect();
    let tables = tables_of(&record.projection).expect("known projection");
    let mut transaction = settings.pool.begin().await?;
    // Holding the live checkpoints stops the live projection between two batches.
    let live = checkpoint::lock(&mut transaction, &record.projection, topic, &all).await?;
    let rebuilt = checkpoint::lock(&mut transaction, &record.checkpoint(), topic, &all).await?;
    if all
        .iter()
        .any(|p| rebuilt.get(p).copied().unwrap_or(0) < live.get(p).copied().unwrap_or(0))
    {
        return Ok(false); // the live projection is ahead: keep reading
    }
    // Before the DDL: a re-drive locks its letter, then the tables; taking the letters
    // first here keeps the two in one order.
    dead_letter::hand_over(&mut transaction, &record.projection, &record.checkpoint()).await?;
    let (shadow, retired) = (record.shadow_schema(), record.retired_schema());
    let mut ddl = format!("CREATE SCHEMA {retired};");
    for table in tables {
        ddl.push_str(&format!(
            "ALTER TABLE public.{table} SET SCHEMA {retired}; ALTER TABLE {shadow}.{table} SET SCHEMA public;"
        ));
    }
    ddl.push_str(&format!("DROP SCHEMA {shadow};"));
    // `ALTER TABLE` waits for every reader of the table, and every read after it waits
    // behind it: a long reader would stall all reads. Bounded, the DDL gives up instead,
    // and is tried again after a pause in which queued reads go through.
    let locked = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'; {ddl}",
        SWAP_LOCK_TIMEOUT.as_millis()
    )))
    .execute(&mut *transaction)
    .await;
    match locked {
        Ok(_) => {}
        Err(sqlx::Error::Database(error))
            if error.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
        {
            drop(transaction);
            info!(id = %record.id, "swap waited for readers of the live tables; trying again");
            tokio::time::sleep(SWAP_RETRY_PAUSE).await;
            return Ok(false);
        }
        Err(error) => return Err(error.into()),
    }
    let next: HashMap<i32, i64> = rebuilt;
    checkpoint::advance(&mut transaction, &record.projection, topic, &next).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(record.checkpoint())
        .execute(&mut *transaction)
        .await?;
    // Delivered at commit: readers drop what they cached from the replaced tables.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(flowline_domain::change::TABLES_REPLACED_CHANNEL)
        .bind(&record.projection)
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "UPDATE projection_rebuilds SET status = 'swapped', swapped_at = now(), \
         retired_until = now() + make_interval(secs => $2) WHERE id = $1",
    )
    .bind(record.id)
    .bind(settings.grace.as_secs_f64())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(true)
}

/// Drops the tables replaced by rebuilds whose grace period is over.
pub async fn drop_retired(pool: &PgPool) -> Result<usize> {
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM projection_rebuilds WHERE status = 'swapped' AND dropped_at IS NULL AND retired_until <= now()",
    )
    .fetch_all(pool)
    .await?;
    for id in &due {
        let mut transaction = pool.begin().await?;
        drop_schema(&mut transaction, &format!("retired_{}", id.simple())).await?;
        sqlx::query("UPDATE projection_rebuilds SET dropped_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
    }
    Ok(due.len())
}

/// Drops a rebuild's schema (shadow or retired) with its tables, if it is still there.
async fn drop_schema(transaction: &mut sqlx::PgConnection, schema: &str) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(transaction)
    .await?;
    Ok(())
}
