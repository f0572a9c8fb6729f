//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;

use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::DatabaseSettings;

/// Consumes the event log and builds the read models.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projectors", version)]
pub struct Config {
    /// Address of the admin/metrics HTTP endpoint (port 0 picks a free port).
    #[arg(long, env = "PROJECTOR_ADMIN_ADDR", default_value = "127.0.0.1:8084")]
    pub admin_listen: SocketAddr,
    /// Prefix of each projection's consumer group (`<prefix>.<projection>.v<version>`).
    #[arg(long, env = "PROJECTOR_GROUP_PREFIX", default_value = "flowline")]
    pub group_prefix: String,
    /// Most records applied in one transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaSettings,
}
