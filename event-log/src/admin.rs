//! Topic creation and metadata.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::{Error, KafkaSettings, Result};

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// How many partitions `topic` has, from the broker's metadata.
pub fn topic_partitions(brokers: &str, topic: &str) -> Result<i32> {
    let consumer: BaseConsumer = crate::client_config(brokers).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if partitions == 0 {
        return Err(Error::UnknownTopic(topic.to_owned()));
    }
    Ok(partitions)
}

/// Whether the brokers answer a metadata request for `topic` within `timeout`, and hold
/// it (a readiness probe: a fresh client each time, so nothing cached answers for a broker
/// that is gone; one topic only, since a cluster's full metadata can be large).
pub async fn reachable(brokers: &str, topic: &str, timeout: Duration) -> Result<()> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let consumer: BaseConsumer = crate::client_config(&brokers).create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        if !metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        {
            return Err(Error::UnknownTopic(topic));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|join| {
        Err(Error::NotDelivered(format!(
            "metadata probe failed: {join}"
        )))
    })
}

/// Creates the topic if it is missing (brokers such as tansu do not auto-create), then
/// waits until metadata shows its partitions: producing before that was seen to put
/// every record of a new topic on one partition.
pub async fn ensure_topic(settings: &KafkaSettings) -> Result<i32> {
    if let Ok(partitions) = topic_partitions(&settings.brokers, &settings.topic) {
        return Ok(partitions);
    }
    let admin: AdminClient<DefaultClientContext> =
        crate::client_config(&settings.brokers).create()?;
    let topic = NewTopic::new(
        &settings.topic,
        settings.partitions,
        TopicReplication::Fixed(1),
    );
    let results = admin.create_topics([&topic], &AdminOptions::new()).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(rdkafka::error::KafkaError::AdminOp(code).into()),
        }
    }
    let started = Instant::now();
    let waited = Duration::from_secs(30);
    loop {
        match topic_partitions(&settings.brokers, &settings.topic) {
            Ok(n) if n >= settings.partitions => return Ok(n),
            _ if started.elapsed() > waited => {
                return Err(Error::TopicNotReady {
                    topic: settings.topic.clone(),
                    expected: settings.partitions,
                    waited,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The high watermark (next offset to be written) of every partition of `topic`. Blocking.
pub fn high_watermarks(brokers: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
    let consumer: BaseConsumer = crate::client_config(brokers).create()?;
    let partitions = topic_partitions(brokers, topic)?;
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
            Ok((partition, high))
        })
        .collect()
}

/// The low and high watermarks of `partitions` of `topic`, read by a client of its own
/// (a consumer that is reading the topic was seen to crash librdkafka's metadata cache when
/// asked, against tansu). Blocking.
pub fn watermarks(
    brokers: &str,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> Result<HashMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = crate::client_config(brokers).create()?;
    partitions
        .into_iter()
        .map(|partition| {
            let marks = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
            Ok((partition, marks))
        })
        .collect()
}

/// For every partition of `topic`, the offset of the first record at or after `time_ms`
/// (milliseconds since the epoch), or the high watermark when there is none. Blocking.
pub fn offsets_at_time(brokers: &str, topic: &str, time_ms: i64) -> Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = crate::client_config(brokers)
        .set("group.id", "flowline-offsets-at-time")
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let highs: HashMap<i32, i64> = high_watermarks(brokers, topic)?.into_iter().collect();
    let mut query = TopicPartitionList::new();
    for partition in highs.keys() {
        query.add_partition_offset(topic, *partition, Offset::Offset(time_ms))?;
    }
    let found = consumer.offsets_for_times(query, METADATA_TIMEOUT)?;
    Ok(found
        .elements()
        .iter()
        .map(|element| {
            let high = highs.get(&element.partition()).copied().unwrap_or(0);
            let offset = match element.offset() {
                Offset::Offset(offset) => offset.min(high),
                _ => high,
            };
            (element.partition(), offset)
        })
        .collect())
}
