//! Consumers positioned by their owner: the projection decides which partitions it reads
//! (see the projectors' leases) and from which offsets (its own checkpoints), so nothing
//! depends on the broker's group coordination or committed offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use tracing::warn;

use crate::{LogRecord, Result};

/// Base settings for every consumer of the log.
pub fn consumer_config(brokers: &str, group_id: &str) -> ClientConfig {
    let mut config = crate::client_config(brokers);
    config
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
        // earlier; a short wait keeps latency low (Kafka answers as soon as fetch.min.bytes
        // is there). Long-running consumers set their own (PROJECTOR_FETCH_WAIT_MS).
        .set("fetch.wait.max.ms", "10");
    config
}

/// A consumer reading exactly the partitions, from exactly the offsets, it is told.
/// It blocks: run it on its own thread.
pub struct PartitionConsumer {
    consumer: BaseConsumer,
    topic: String,
}

impl PartitionConsumer {
    /// A consumer of `topic` with no partitions yet. The group id in `config` is used only
    /// to publish progress for lag tools.
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Self> {
        Ok(Self {
            consumer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Reads these partitions from these next offsets (`None`: from the beginning), and no
    /// others.
    pub fn assign(&self, positions: &HashMap<i32, Option<i64>>) -> Result<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in positions {
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            list.add_partition_offset(&self.topic, partition, offset)?;
        }
        self.consumer.assign(&list)?;
        Ok(())
    }

    /// The first offset the log still holds in `partition` and the next offset it will
    /// write (low and high watermarks).
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        Ok(self
            .consumer
            .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))?)
    }

    /// [`PartitionConsumer::poll_batch`], as [`LogRecord`]s.
    pub fn poll_records(&self, max: usize, wait: Duration) -> Result<Vec<LogRecord>> {
        Ok(self
            .poll_batch(max, wait)?
            .into_iter()
            .map(LogRecord::from)
            .collect())
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

    /// Publishes how far the projection got under its group id, so lag tools see progress.
    /// Correctness never depends on it: positions come from the owner's checkpoints.
    pub fn commit_progress(&self, next_offsets: &HashMap<i32, i64>) -> KafkaResult<()> {
        let mut list = TopicPartitionList::new();
        for (&partition, &next) in next_offsets {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
        }
        self.consumer
            .commit(&list, rdkafka::consumer::CommitMode::Async)
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
