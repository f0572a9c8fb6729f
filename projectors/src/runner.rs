//! Runs a projection: a consumer on its own thread, batches applied in one transaction
//! each, checkpoints committed with the rows.

use std::collections::{BTreeSet, HashMap};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowline_event_log::{CheckpointedConsumer, KafkaSettings, consumer_config};
use flowline_schemas::EventCodec;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Result;
use crate::checkpoint::{self, PgCheckpoints};
use crate::workflow_read_model::{self, LogPlace};

/// Longest time between two commits of the group's offsets.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// What a runner needs.
pub struct RunnerSettings {
    pub(crate) pool: PgPool,
    pub(crate) kafka: KafkaSettings,
    pub(crate) group_id: String,
    pub(crate) batch_size: usize,
}

/// Starts the `workflow_read_model` projection on a thread of its own; it stops when
/// `stop` is cancelled.
pub fn spawn(settings: RunnerSettings, stop: CancellationToken) -> Result<JoinHandle<()>> {
    let runtime = Handle::current();
    let source = PgCheckpoints {
        pool: settings.pool.clone(),
        projection: workflow_read_model::NAME.to_owned(),
        runtime: runtime.clone(),
    };
    let config = consumer_config(&settings.kafka.brokers, &settings.group_id);
    let consumer = CheckpointedConsumer::subscribe(&config, &settings.kafka.topic, source)?;
    let handle = std::thread::Builder::new()
        .name(format!("projector-{}", workflow_read_model::NAME))
        .spawn(move || run(settings, consumer, runtime, stop))
        .expect("spawn projector thread");
    Ok(handle)
}

fn run(
    settings: RunnerSettings,
    consumer: CheckpointedConsumer<PgCheckpoints>,
    runtime: Handle,
    stop: CancellationToken,
) {
    info!(projection = workflow_read_model::NAME, group = %settings.group_id, "projector started");
    let codec = EventCodec::default();
    let mut progress: HashMap<i32, i64> = HashMap::new();
    let mut progress_committed = Instant::now();
    while !stop.is_cancelled() {
        let batch = match consumer.poll_batch(settings.batch_size, Duration::from_millis(100)) {
            Ok(batch) => batch,
            Err(error) => {
                warn!(%error, "poll failed");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let mut attempt = 0;
        loop {
            match runtime.block_on(apply_batch(&settings, &codec, &batch)) {
                Ok(next_offsets) => {
                    progress.extend(next_offsets);
                    // Group offsets only feed lag tools, so they are sent at most once per
                    // interval: each commit is a write on the broker.
                    if progress_committed.elapsed() >= GROUP_COMMIT_INTERVAL {
                        if let Err(error) =
                            consumer.commit_progress(&settings.kafka.topic, &progress)
                        {
                            warn!(%error, "group offset commit failed (checkpoints are in PostgreSQL)");
                        }
                        progress.clear();
                        progress_committed = Instant::now();
                    }
                    break;
                }
                Err(error) if !stop.is_cancelled() => {
                    attempt += 1;
                    error!(%error, attempt, "batch failed; retrying");
                    std::thread::sleep(Duration::from_millis(200 * attempt.min(10)));
                }
                Err(_) => return,
            }
        }
    }
    info!(projection = workflow_read_model::NAME, "projector stopped");
}

/// Applies a batch in one transaction and returns the new next offsets.
async fn apply_batch(
    settings: &RunnerSettings,
    codec: &EventCodec,
    batch: &[OwnedMessage],
) -> Result<HashMap<i32, i64>> {
    let topic = &settings.kafka.topic;
    let partitions: Vec<i32> = batch
        .iter()
        .map(|m| m.partition())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut transaction = settings.pool.begin().await?;
    let mut next = checkpoint::lock(
        &mut transaction,
        workflow_read_model::NAME,
        topic,
        &partitions,
    )
    .await?;
    let mut advanced = HashMap::new();
    for message in batch {
        let partition = message.partition();
        let offset = message.offset();
        if offset < next.get(&partition).copied().unwrap_or(0) {
            continue; // applied by an earlier batch (redelivery after a rebalance or crash)
        }
        match message.payload().map(|payload| codec.decode(payload)) {
            Some(Ok(envelope)) => {
                workflow_read_model::apply(
                    &mut transaction,
                    &envelope,
                    LogPlace { partition, offset },
                )
                .await?;
            }
            Some(Err(error)) => {
                error!(partition, offset, %error, "undecodable record skipped");
            }
            None => warn!(partition, offset, "record without a value skipped"),
        }
        next.insert(partition, offset + 1);
        advanced.insert(partition, offset + 1);
    }
    if !advanced.is_empty() {
        checkpoint::advance(
            &mut transaction,
            workflow_read_model::NAME,
            topic,
            &advanced,
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(advanced)
}
