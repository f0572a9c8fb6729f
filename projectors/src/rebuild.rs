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
use flowline_event_log::{KafkaSettings, LogProducer, PartitionConsumer, consumer_config};
use flowline_graph::{AnyGraph, PostgresGraph};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::checkpoint;
use crate::projection::Projection;
use crate::runner::{Runner, RunnerSettings};
use crate::workflow_graph::{self, WorkflowGraph};
use crate::workflow_read_model::{self, WorkflowReadModel};
use crate::{Error, Result};

/// The tables each projection owns (what a rebuild shadows and swaps).
pub fn tables_of(projection: &str) -> Option<&'static [&'static str]> {
    match projection {
        workflow_read_model::NAME => Some(&["workflows", "workflow_steps", "workflow_events"]),
        workflow_graph::NAME => Some(&["graph_nodes", "graph_edges"]),
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
    /// `running`, `swapped` or `failed`.
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

/// Starts a rebuild of `projection`, or returns the one already running (to resume it).
/// The flag says whether an interrupted rebuild is resumed.
pub async fn start(
    pool: &PgPool,
    kafka: &KafkaSettings,
    projection: &str,
    at: StartAt,
) -> Result<(RebuildRecord, bool)> {
    let tables = tables_of(projection)
        .ok_or_else(|| Error::Rebuild(format!("unknown projection '{projection}'")))?;
    let running: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM projection_rebuilds WHERE projection = $1 AND status = 'running'",
    )
    .bind(projection)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = running {
        let record = find(pool, id)
            .await?
            .ok_or_else(|| Error::Rebuild("rebuild vanished".into()))?;
        return Ok((record, true));
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
}

impl RebuildSettings {
    /// The settings of the projectors' configuration (creates the dead-letter topic).
    pub async fn from_config(config: &crate::Config, pool: PgPool) -> Result<Self> {
        Ok(RebuildSettings {
            database_url: config.database.url.clone(),
            pool,
            kafka: config.kafka.clone(),
            batch_size: config.batch_size,
            grace: std::time::Duration::from_secs(config.rebuild_grace_seconds),
            dead_letters: crate::runner::dead_letter_producer(&config.kafka).await?,
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
    let outcome = match record.projection.as_str() {
        workflow_graph::NAME => {
            let graph = WorkflowGraph::new(AnyGraph::Postgres(PostgresGraph::new(shadow_pool)));
            let runner = Runner::new(
                graph,
                Some(record.checkpoint()),
                runner_settings,
                settings.dead_letters.clone(),
            );
            catch_up_and_swap(&settings, &record, &runner, &runtime, &stop, &mut report)
        }
        _ => {
            let runner = Runner::new(
                WorkflowReadModel::shadow(),
                Some(record.checkpoint()),
                runner_settings,
                settings.dead_letters.clone(),
            );
            catch_up_and_swap(&settings, &record, &runner, &runtime, &stop, &mut report)
        }
    };
    if let Err(error) = &outcome {
        warn!(id = %record.id, %error, "rebuild interrupted; it resumes when started again");
    }
    outcome?;
    runtime
        .block_on(find(&settings.pool, record.id))?
        .ok_or_else(|| Error::Rebuild("rebuild vanished".into()))
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
    let started = Instant::now();
    let mut progress = Progress::default();
    let mut reported = Instant::now() - Duration::from_secs(10);
    while !stop.is_cancelled() {
        let batch = consumer.poll_batch(settings.batch_size, Duration::from_millis(100))?;
        if !batch.is_empty() {
            if runtime
                .block_on(runner.apply_with_retries(&batch, stop))
                .is_none()
            {
                break;
            }
            progress.applied += batch.len() as u64;
        }
        if batch.is_empty() || reported.elapsed() >= Duration::from_secs(1) {
            let highs = flowline_event_log::high_watermarks(&settings.kafka.brokers, topic)?;
            let done =
                runtime.block_on(checkpoint::all(&settings.pool, &record.checkpoint(), topic))?;
            progress.remaining = highs
                .iter()
                .map(|(partition, high)| {
                    (high - done.get(partition).copied().unwrap_or(0)).max(0) as u64
                })
                .sum();
            progress.rate = progress.applied as f64 / started.elapsed().as_secs_f64().max(0.001);
            progress.eta_seconds =
                (progress.rate > 0.0).then(|| progress.remaining as f64 / progress.rate);
            report(&progress);
            reported = Instant::now();
            let progress_json = serde_json::to_value(&progress).expect("serializable");
            runtime.block_on(
                sqlx::query("UPDATE projection_rebuilds SET progress = $2 WHERE id = $1")
                    .bind(record.id)
                    .bind(progress_json)
                    .execute(&settings.pool),
            )?;
            if progress.remaining == 0 && runtime.block_on(swap(settings, record, partitions))? {
                info!(id = %record.id, projection = record.projection, "rebuild swapped in");
                return Ok(());
            }
        }
    }
    Err(Error::Rebuild("stopped before catching up".into()))
}

/// Swaps the shadow tables in if the rebuild is at least as far as the live projection on
/// every partition; `false` when it is not yet.
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
    let (shadow, retired) = (record.shadow_schema(), record.retired_schema());
    let mut ddl = format!("CREATE SCHEMA {retired};");
    for table in tables {
        ddl.push_str(&format!(
            "ALTER TABLE public.{table} SET SCHEMA {retired}; ALTER TABLE {shadow}.{table} SET SCHEMA public;"
        ));
    }
    ddl.push_str(&format!("DROP SCHEMA {shadow};"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut *transaction)
        .await?;
    let next: HashMap<i32, i64> = rebuilt;
    checkpoint::advance(&mut transaction, &record.projection, topic, &next).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(record.checkpoint())
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
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS retired_{} CASCADE",
            id.simple()
        )))
        .execute(&mut *transaction)
        .await?;
        sqlx::query("UPDATE projection_rebuilds SET dropped_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
    }
    Ok(due.len())
}
