//! Settings, from flags or environment variables, with defaults that run locally.

use std::net::SocketAddr;

use flowline_service_kit::db::DatabaseSettings;

/// Serves workflow read models over REST and GraphQL.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-service", version)]
pub struct Config {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "QUERY_ADDR", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// PostgreSQL settings.
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Read-your-writes settings.
    #[command(flatten)]
    pub consistency: crate::consistency::ConsistencySettings,
    /// Read cache settings.
    #[command(flatten)]
    pub cache: crate::cache::CacheSettings,
    /// Kafka settings (the audit endpoints read the log directly).
    #[command(flatten)]
    pub kafka: flowline_event_log::KafkaSettings,
    /// Bearer token of the operators' audit endpoints (`/v1/audit/*`); unset disables them.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Graph view settings.
    #[command(flatten)]
    pub graph: flowline_graph::GraphSettings,
    /// GraphQL limits.
    #[command(flatten)]
    pub graphql: GraphqlLimits,
    /// WebSocket and audit limits.
    #[command(flatten)]
    pub limits: ReadLimits,
}

/// Default of [`GraphqlLimits::max_depth`].
const DEFAULT_MAX_DEPTH: usize = 12;
/// Default of [`GraphqlLimits::max_complexity`].
const DEFAULT_MAX_COMPLEXITY: usize = 20_000;

/// How big a GraphQL query may be before it is refused unexecuted.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct GraphqlLimits {
    /// Deepest selection nesting a GraphQL query may have.
    #[arg(
        long = "graphql-max-depth",
        env = "GRAPHQL_MAX_DEPTH",
        default_value_t = DEFAULT_MAX_DEPTH
    )]
    pub max_depth: usize,
    /// Highest complexity a GraphQL query may have: every field costs 1, list fields
    /// multiply their selection by their size (`first`, `depth`, or an assumed 10 steps /
    /// 20 events per workflow).
    #[arg(
        long = "graphql-max-complexity",
        env = "GRAPHQL_MAX_COMPLEXITY",
        default_value_t = DEFAULT_MAX_COMPLEXITY
    )]
    pub max_complexity: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_complexity: DEFAULT_MAX_COMPLEXITY,
        }
    }
}

/// Bounds on what one client may hold open: WebSocket connections and subscriptions, and
/// the audit endpoints' scans of the log.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ReadLimits {
    /// Open GraphQL WebSocket connections one tenant may hold; one more is closed with
    /// code 1013 (try again later).
    #[arg(
        long,
        env = "WS_MAX_CONNECTIONS_PER_TENANT",
        default_value_t = ReadLimits::DEFAULT.ws_max_connections_per_tenant
    )]
    pub ws_max_connections_per_tenant: usize,
    /// Subscriptions running at once on one WebSocket connection; one more is answered
    /// with an `error` message for its id (the connection stays open).
    #[arg(
        long,
        env = "WS_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = ReadLimits::DEFAULT.ws_max_subscriptions_per_connection
    )]
    pub ws_max_subscriptions_per_connection: usize,
    /// How long a new WebSocket connection may take to send `connection_init`, in
    /// milliseconds; then it is closed with code 4408.
    #[arg(
        long,
        env = "WS_INIT_TIMEOUT_MS",
        default_value_t = ReadLimits::DEFAULT.ws_init_timeout_ms
    )]
    pub ws_init_timeout_ms: u64,
    /// Largest WebSocket message (and frame) a client may send, in bytes; a larger one
    /// closes the connection with code 1009.
    #[arg(
        long,
        env = "WS_MAX_MESSAGE_BYTES",
        default_value_t = ReadLimits::DEFAULT.ws_max_message_bytes
    )]
    pub ws_max_message_bytes: usize,
    /// Scans of the event log the audit endpoints run at once; a request beyond them is
    /// answered 429 with `Retry-After`.
    #[arg(
        long,
        env = "AUDIT_MAX_CONCURRENT_SCANS",
        default_value_t = ReadLimits::DEFAULT.audit_max_concurrent_scans
    )]
    pub audit_max_concurrent_scans: usize,
}

impl ReadLimits {
    /// The defaults.
    pub const DEFAULT: Self = Self {
        ws_max_connections_per_tenant: 100,
        ws_max_subscriptions_per_connection: 20,
        ws_init_timeout_ms: 5_000,
        ws_max_message_bytes: 64 * 1024,
        audit_max_concurrent_scans: 2,
    };
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
