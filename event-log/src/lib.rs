//! The Kafka-protocol edge of the engine: producing records durably, creating topics,
//! consuming from checkpoints a projection owns, and reading a partition's tail.
//!
//! Everything speaks the Kafka protocol through rdkafka only, so the same code runs against
//! the tansu broker used here and against a real Kafka cluster. Nothing here relies on
//! Kafka transactions (tansu 0.6 rejects `EndTxn`).

mod admin;
pub mod client;
mod consumer;
mod partitioner;
mod position;
mod producer;
mod record;

pub use admin::{
    ensure_topic, high_watermarks, offsets_at_time, reachable, topic_partitions, watermarks,
};
pub use client::client_config;
pub use consumer::{PartitionConsumer, consumer_config, read_partition_tails};
pub use partitioner::{murmur2, partition_for};
pub use position::{ConsistencyToken, InvalidToken};
pub use producer::{Delivery, LogProducer, OutgoingRecord};
pub use record::LogRecord;

/// Connection settings shared by every client of the log (flattened into each binary's
/// command line, so every `--help` documents them the same way). Any other librdkafka
/// property (TLS, SASL, …) passes through from `KAFKA_PROPERTY_<NAME>` variables or the
/// file named by `KAFKA_CONFIG_FILE` (see [`client`]).
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Topic holding the workflow event streams.
    #[arg(
        long = "kafka-topic",
        env = "KAFKA_TOPIC",
        default_value = "workflow-events"
    )]
    pub topic: String,
    /// Partitions to create the topic with when it does not exist yet.
    #[arg(
        long = "kafka-partitions",
        env = "KAFKA_PARTITIONS",
        default_value_t = 6
    )]
    pub partitions: i32,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client library reported an error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic does not exist (or has no partitions) on the broker.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// Topic metadata did not show every partition in time.
    #[error("topic {topic} did not show {expected} partitions within {waited:?}")]
    TopicNotReady {
        /// The topic.
        topic: String,
        /// Partitions asked for.
        expected: i32,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// A record was not confirmed by the broker.
    #[error("record not delivered: {0}")]
    NotDelivered(String),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
