//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::DatabaseSettings;
use flowline_service_kit::live::RedisSettings;

use crate::runners::http::HttpSettings;
use crate::runners::llm::LlmSettings;
use crate::runners::mcp_tool::McpSettings;

/// Runs the steps of every workflow run: reads the published log from the event store,
/// decides each run's next transitions, runs step attempts and records their outcomes.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "executor", version)]
pub struct Config {
    /// Address of the admin endpoint (`/admin/runs`, `/metrics`, `/openapi.json`; port 0
    /// picks a free port).
    #[arg(long, env = "EXECUTOR_ADMIN_ADDR", default_value = "127.0.0.1:8085")]
    pub admin_listen: SocketAddr,
    /// Most step attempts running at once in this process.
    #[arg(long, env = "EXECUTOR_MAX_CONCURRENT_ATTEMPTS", default_value_t = 64)]
    pub max_concurrent_attempts: usize,
    /// Most step attempts of one tenant running at once in this process; free slots go
    /// round-robin across the tenants that wait, so one tenant's backlog does not starve
    /// another's.
    #[arg(long, env = "EXECUTOR_MAX_ATTEMPTS_PER_TENANT", default_value_t = 16)]
    pub max_attempts_per_tenant: usize,
    /// How long a partition lease lasts without renewal, in milliseconds: a killed
    /// executor's runs continue on another one within this time.
    #[arg(long, env = "EXECUTOR_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,
    /// Step outputs larger than this (bytes of JSON) are stored in the `step_payloads`
    /// table by content hash, and their event carries the reference.
    #[arg(long, env = "STEP_OUTPUT_INLINE_BYTES", default_value_t = 64 * 1024)]
    pub output_inline_bytes: usize,
    /// The price table every model call is priced with when it is made, in the format of
    /// `pricing/prices.toml` (its header gives the format and the prices' source); unset,
    /// that file as it was when the executor was built.
    #[arg(long, env = "PRICE_TABLE_FILE")]
    pub price_table: Option<PathBuf>,
    /// `http` step settings.
    #[command(flatten)]
    pub http: HttpSettings,
    /// `mcp_tool` step settings.
    #[command(flatten)]
    pub mcp: McpSettings,
    /// `llm` step settings.
    #[command(flatten)]
    pub llm: LlmSettings,
    /// Redis carrying the live output of running steps (streamed model text, tool
    /// progress); without it steps run and only the live view is missing.
    #[command(flatten)]
    pub redis: RedisSettings,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Kafka settings (the topic's partitions are the unit of work sharing).
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Credentials, roles and rate limits of the admin endpoint.
    #[command(flatten)]
    pub access: flowline_access::AccessSettings,
}

impl Config {
    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(300))
    }
}
