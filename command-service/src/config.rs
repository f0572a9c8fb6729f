//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;
use std::time::Duration;

use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::DatabaseSettings;

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
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaSettings,
}

impl Config {
    /// The publish wait as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}
