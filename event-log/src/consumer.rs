//! Consumers that start where their owner's checkpoint says, not where the group's
//! committed offsets say.
//!
//! A projection stores the next offset of each partition in its own database, in the same
//! transaction as its rows. On every assignment the consumer asks the projection for those
//! offsets and assigns the partitions there; group offsets are committed only as a
//! courtesy for lag monitoring.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message};
use tracing::{info, warn};

use crate::Result;

/// Base settings for every consumer of the log.
pub fn consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Set explicitly: no transactions are used, and some brokers (tansu on PostgreSQL
        // storage) fail ListOffsets under librdkafka's read_committed default.
        .set("isolation.level", "read_uncommitted")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.partition.eof", "false")
        // tansu answers a fetch only when its max wait expires, even when records arrive
        // earlier; a short wait keeps submit→visible latency low (Kafka answers as soon as
        // fetch.min.bytes is there, so this costs nothing on a real cluster but requests).
        .set("fetch.wait.max.ms", "10");
    config
}

/// Where a consumer's owner has checkpointed each partition.
pub trait CheckpointSource: Send + Sync + 'static {
    /// The next offset to read for each of `partitions` of `topic`; a partition missing from
    /// the answer starts at the beginning. Called on the consumer's thread; may block.
    fn next_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Assigns partitions at the owner's checkpoints on every rebalance.
pub struct CheckpointContext<S> {
    source: S,
}

impl<S: CheckpointSource> ClientContext for CheckpointContext<S> {}

impl<S: CheckpointSource> ConsumerContext for CheckpointContext<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        assignment: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
                for element in assignment.elements() {
                    by_topic
                        .entry(element.topic().to_owned())
                        .or_default()
                        .push(element.partition());
                }
                let mut positioned = TopicPartitionList::new();
                for (topic, partitions) in by_topic {
                    let offsets = match self.source.next_offsets(&topic, &partitions) {
                        Ok(offsets) => offsets,
                        Err(error) => {
                            // Without checkpoints we must not guess; an empty assignment makes
                            // the group rebalance again later instead of reprocessing.
                            warn!(%topic, %error, "cannot read checkpoints; not taking partitions");
                            continue;
                        }
                    };
                    for partition in partitions {
                        let offset = offsets
                            .get(&partition)
                            .map_or(Offset::Beginning, |&next| Offset::Offset(next));
                        if let Err(error) =
                            positioned.add_partition_offset(&topic, partition, offset)
                        {
                            warn!(%topic, partition, %error, "cannot position partition");
                        }
                    }
                }
                info!(assignment = ?positioned, "partitions assigned at checkpoints");
                if let Err(error) = consumer.assign(&positioned) {
                    warn!(%error, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!("partitions revoked");
                if let Err(error) = consumer.unassign() {
                    warn!(%error, "unassign failed");
                }
            }
            other => {
                warn!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// A group consumer positioned by a [`CheckpointSource`]. It blocks: run it on its own thread.
pub struct CheckpointedConsumer<S: CheckpointSource> {
    consumer: BaseConsumer<CheckpointContext<S>>,
}

impl<S: CheckpointSource> CheckpointedConsumer<S> {
    /// Creates the consumer and joins the group on `topic`.
    pub fn subscribe(config: &ClientConfig, topic: &str, source: S) -> Result<Self> {
        let consumer: BaseConsumer<CheckpointContext<S>> =
            config.create_with_context(CheckpointContext { source })?;
        consumer.subscribe(&[topic])?;
        Ok(Self { consumer })
    }

    /// Waits up to `wait` for a first record, then takes whatever else is ready, up to `max`.
    pub fn poll_batch(&self, max: usize, wait: Duration) -> Result<Vec<OwnedMessage>> {
        let mut batch = Vec::new();
        let deadline = Instant::now() + wait;
        while batch.len() < max {
            let timeout = if batch.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(error)) => {
                    if batch.is_empty() {
                        return Err(error.into());
                    }
                    warn!(%error, "consumer error after a partial batch");
                    break;
                }
                None => break,
            }
            if batch.is_empty() && Instant::now() >= deadline {
                break;
            }
        }
        Ok(batch)
    }

    /// Tells the group how far this member got, so lag tools see progress. Correctness
    /// never depends on it: restarts position from the owner's checkpoints.
    pub fn commit_progress(
        &self,
        topic: &str,
        next_offsets: &HashMap<i32, i64>,
    ) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in next_offsets {
            list.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        self.consumer
            .commit(&list, rdkafka::consumer::CommitMode::Async)
    }

    /// Partitions currently assigned to this member.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Low and high watermark of a partition (the high one is the next offset to be written).
    pub fn watermarks(&self, topic: &str, partition: i32) -> KafkaResult<(i64, i64)> {
        self.consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
    }
}

/// The last `window` records of every partition of `topic` (fewer where a partition holds
/// fewer), read without a consumer group. Blocking.
pub fn read_partition_tails(
    brokers: &str,
    topic: &str,
    window: i64,
) -> Result<Vec<(i32, Vec<OwnedMessage>)>> {
    let consumer: BaseConsumer = consumer_config(brokers, "flowline-tail-reader").create()?;
    let partitions = crate::topic_partitions(brokers, topic)?;
    let mut tails = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        let start = (high - window).max(low);
        let mut records = Vec::new();
        if high > start {
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
            consumer.assign(&assignment)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while (records.len() as i64) < high - start && Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(message)) if message.offset() < high => records.push(message.detach()),
                    Some(Ok(_)) => break,
                    Some(Err(error)) => return Err(error.into()),
                    None => {}
                }
            }
            if (records.len() as i64) < high - start {
                return Err(crate::Error::NotDelivered(format!(
                    "could not read the tail of {topic}/{partition}"
                )));
            }
        }
        tails.push((partition, records));
    }
    Ok(tails)
}
