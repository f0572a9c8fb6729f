//! The durable producer: idempotent, `acks=all`, and a result only once the broker has the
//! record.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::{Error, KafkaSettings, Result};

/// One record to append.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    /// The record key (the stream id).
    pub key: Vec<u8>,
    /// The partition, chosen by the caller (see [`crate::partition_for`]).
    pub partition: i32,
    /// The encoded value.
    pub payload: Vec<u8>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where the broker put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
}

/// An idempotent, `acks=all` producer bound to one topic.
#[derive(Clone)]
pub struct LogProducer {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for LogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl LogProducer {
    /// Connects a producer for `settings.topic`.
    pub fn new(settings: &KafkaSettings) -> Result<Self> {
        let producer: FutureProducer = crate::client_config(&settings.brokers)
            // Idempotence gives per-partition order with no duplicates from retries inside
            // one producer session; acks=all makes a delivery report mean "replicated".
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `records` in order and waits until the broker has acknowledged every one.
    /// Records for one partition keep their order; any failure fails the whole call,
    /// in which case some records may still have landed (the caller must be able to tell).
    pub async fn publish(&self, records: &[OutgoingRecord]) -> Result<Vec<Delivery>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut future_record = FutureRecord::to(&self.topic)
                .key(&record.key)
                .payload(&record.payload)
                .partition(record.partition)
                .headers(headers);
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
        }
        let mut deliveries = Vec::with_capacity(pending.len());
        for delivery in pending {
            match delivery.await {
                Ok(Ok(delivery)) => deliveries.push(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((error, _))) => return Err(error.into()),
                Err(_) => return Err(Error::NotDelivered("producer dropped".into())),
            }
        }
        Ok(deliveries)
    }

    /// Waits for queued records, so a clean shutdown loses nothing in flight.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }
}
