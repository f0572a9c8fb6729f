//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;

use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::DatabaseSettings;

/// Consumes the event log and builds the read models. Without a command it runs the
/// projections; `dlq` inspects and re-drives dead letters.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "projectors", version)]
pub struct Config {
    /// What to do instead of running the projections.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Credentials, roles and rate limits of the admin endpoint.
    #[command(flatten)]
    pub access: flowline_access::AccessSettings,
    /// Redis of the admin endpoint's rate limits.
    #[command(flatten)]
    pub redis: flowline_service_kit::redis_settings::RedisSettings,
    /// Address of the admin/metrics HTTP endpoint (port 0 picks a free port).
    #[arg(long, env = "PROJECTOR_ADMIN_ADDR", default_value = "127.0.0.1:8084")]
    pub admin_listen: SocketAddr,
    /// Prefix of each projection's consumer group (`<prefix>.<projection>.v<version>`).
    #[arg(long, env = "PROJECTOR_GROUP_PREFIX", default_value = "flowline")]
    pub group_prefix: String,
    /// Longest time the broker may hold a fetch when no record is waiting, in ms. Lower
    /// means fresher views and more requests (tansu answers a fetch only when this expires,
    /// and its fetches slow producers down, so keep it moderate there).
    #[arg(long, env = "PROJECTOR_FETCH_WAIT_MS", default_value_t = 10)]
    pub fetch_wait_ms: u32,
    /// Seconds the tables replaced by a rebuild are kept before they are dropped.
    #[arg(long, env = "REBUILD_GRACE_SECONDS", default_value_t = 300)]
    pub rebuild_grace_seconds: u64,
    /// Most records applied in one transaction.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Most records applied in one transaction by a rebuild (larger batches load faster;
    /// nobody reads the shadow tables yet).
    #[arg(long, env = "REBUILD_BATCH_SIZE", default_value_t = 10_000)]
    pub rebuild_batch_size: usize,
    /// Where a rebuild reads the history published before it started: `event-store` (the
    /// store's copy of every published record, by partition and offset; offsets it does
    /// not hold are read from the log) or `log` (the broker only). Records published
    /// after the start are always read from the log.
    #[arg(long, env = "REBUILD_HISTORY", value_enum, default_value_t = HistorySource::EventStore)]
    pub rebuild_history: HistorySource,
    /// `ce_source` template the command service publishes with (`CLOUDEVENTS_SOURCE`
    /// there): records a rebuild reads from the event store carry the same headers.
    #[arg(long, env = "CLOUDEVENTS_SOURCE", default_value = flowline_event_store::headers::cloudevents::DEFAULT_SOURCE)]
    pub cloudevents_source: String,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Graph view settings.
    #[command(flatten)]
    pub graph: flowline_graph::GraphSettings,
}

/// Where a rebuild reads the history published before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistorySource {
    /// The event store, with the log filling any offset it does not hold.
    EventStore,
    /// The log only.
    Log,
}

/// One-off operations.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Rebuilds a projection into shadow tables and swaps them in once caught up, while the
    /// live tables keep serving; resumes an interrupted rebuild of the same projection.
    Rebuild {
        /// `workflow_read_model`, `workflow_graph` or `usage` (a version suffix like `.v1` is optional).
        projection: String,
        /// Read the whole log (the default).
        #[arg(long, conflicts_with = "from")]
        from_beginning: bool,
        /// Read from the first record at or after this RFC 3339 time (Kafka offsets_for_times).
        #[arg(long)]
        from: Option<String>,
    },
    /// Dead letters: records a projection could not apply.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        action: DlqAction,
    },
}

/// Dead-letter operations.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqAction {
    /// Lists pending dead letters (with --all, re-driven ones too).
    List {
        /// Include re-driven dead letters.
        #[arg(long)]
        all: bool,
    },
    /// Shows one dead letter with its payload (base64) and headers, as JSON.
    Show {
        /// Its id.
        id: i64,
    },
    /// Applies dead letters again, after a fix: one by id, or every pending one in log order.
    Redrive {
        /// Its id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every pending dead letter.
        #[arg(long)]
        all: bool,
    },
}
