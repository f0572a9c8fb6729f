//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;
use std::time::Duration;

use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::DatabaseSettings;
use flowline_service_kit::redis_settings::RedisSettings;

/// Accepts workflow commands over HTTP and appends their events to the log.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "command-service", version)]
pub struct Config {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "COMMAND_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (larger bodies get 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long a request waits for its event to be confirmed on the log before it answers
    /// 503 (the command stays stored and is published later).
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 10_000)]
    pub publish_timeout_ms: u64,
    /// Take a snapshot of a workflow every this many events (0 = never).
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: u64,
    /// Redis holding the first answers to `Idempotency-Key` requests (a cache: correctness
    /// does not depend on it).
    #[command(flatten)]
    pub redis: RedisSettings,
    /// How long a first answer stays cached, in seconds.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECONDS", default_value_t = 24 * 3600)]
    pub idempotency_ttl_seconds: u64,
    /// `ce_source` (CloudEvents source URI) of every published record; `{tenant}` is
    /// replaced by the event's tenant.
    #[arg(long, env = "CLOUDEVENTS_SOURCE", default_value = flowline_event_store::headers::cloudevents::DEFAULT_SOURCE)]
    pub cloudevents_source: String,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// What a command may make the log and a stream hold.
    #[command(flatten)]
    pub limits: CommandLimits,
    /// Credentials, roles and rate limits.
    #[command(flatten)]
    pub access: flowline_access::AccessSettings,
}

/// Bounds of what one command may add (see ADR 0017).
#[derive(Debug, Clone, clap::Args)]
pub struct CommandLimits {
    /// Largest record one event may make on the log, in bytes: Avro payload, key and
    /// headers, as the producer counts them. Keep it at most the producer's
    /// `message.max.bytes` (librdkafka's default is 1000000) and the topic's
    /// `max.message.bytes`; a command whose event is larger is refused with 413.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Most events one run's stream holds. Callers may grow a stream to half of it (a
    /// submit whose steps could write more, and any later command but cancel, is refused);
    /// the executor's records of one round of attempts fit the other half.
    #[arg(long, env = "MAX_STREAM_EVENTS", default_value_t = flowline_domain::accepted::DEFAULT_MAX_STREAM_EVENTS)]
    pub max_stream_events: u64,
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1_000_000;

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_stream_events: flowline_domain::accepted::DEFAULT_MAX_STREAM_EVENTS,
        }
    }
}

impl Config {
    /// The publish wait as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
