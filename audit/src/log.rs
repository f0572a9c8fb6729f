//! Reading the topic directly, without a consumer group's committed offsets: either every
//! partition from a start up to the high watermark seen when the scan began, or following
//! it. Blocking: run it on its own thread.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{Error, Result};

/// How long a scan waits for a record it knows exists before giving up.
const STALL_LIMIT: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record retained.
    Beginning,
    /// The first record whose log timestamp is at or after this time (`offsets_for_times`).
    Time(DateTime<Utc>),
    /// Only records written from now on.
    End,
}

/// Reads one topic.
#[derive(Debug, Clone)]
pub struct LogReader {
    brokers: String,
    topic: String,
}

impl LogReader {
    /// A reader of `topic` on `brokers`.
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
        }
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        Ok(flowline_event_log::consumer_config(&self.brokers, "flowline-audit").create()?)
    }

    /// Per partition, the offset `start` names: the first at or after its time, the end of
    /// the log; none for the beginning (each partition's low watermark).
    fn explicit_starts(&self, start: Start) -> Result<HashMap<i32, i64>> {
        Ok(match start {
            Start::Time(time) => flowline_event_log::offsets_at_time(
                &self.brokers,
                &self.topic,
                time.timestamp_millis(),
            )?,
            Start::End => flowline_event_log::high_watermarks(&self.brokers, &self.topic)?
                .into_iter()
                .collect(),
            Start::Beginning => HashMap::new(),
        })
    }

    /// Calls `each` on every record from `start` up to the high watermark each partition
    /// had when the scan began, partition order preserved, until `each` breaks.
    pub fn scan(
        &self,
        start: Start,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        let consumer = self.consumer()?;
        let highs = flowline_event_log::high_watermarks(&self.brokers, &self.topic)?;
        let starts = self.explicit_starts(start)?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        for (partition, high) in highs {
            let (low, _) = consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)?;
            let from = match start {
                Start::End => high,
                _ => starts.get(&partition).copied().unwrap_or(low).max(low),
            };
            if from < high {
                assignment.add_partition_offset(&self.topic, partition, Offset::Offset(from))?;
                remaining.insert(partition, high);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        consumer.assign(&assignment)?;
        let mut last_record = Instant::now();
        while !remaining.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last_record = Instant::now();
                    let partition = message.partition();
                    let Some(&high) = remaining.get(&partition) else {
                        continue;
                    };
                    if message.offset() >= high {
                        remaining.remove(&partition);
                        continue;
                    }
                    if message.offset() + 1 >= high {
                        remaining.remove(&partition);
                    }
                    if each(&message).is_break() {
                        return Ok(());
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None if last_record.elapsed() > STALL_LIMIT => {
                    let (&partition, &high) = remaining.iter().next().expect("not empty");
                    return Err(Error::Stalled {
                        topic: self.topic.clone(),
                        partition,
                        high,
                        waited_seconds: STALL_LIMIT.as_secs(),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Calls `each` on every record from `start` on, waiting for new ones, until `each`
    /// breaks.
    pub fn follow(
        &self,
        start: Start,
        mut each: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        let consumer = self.consumer()?;
        let partitions = flowline_event_log::topic_partitions(&self.brokers, &self.topic)?;
        let starts = self.explicit_starts(start)?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            let offset = starts
                .get(&partition)
                .map_or(Offset::Beginning, |&offset| Offset::Offset(offset));
            assignment.add_partition_offset(&self.topic, partition, offset)?;
        }
        consumer.assign(&assignment)?;
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) if each(&message).is_break() => return Ok(()),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(_)) | None => {}
            }
        }
    }
}
