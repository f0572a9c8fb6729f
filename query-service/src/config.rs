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
    /// Credentials, roles and rate limits.
    #[command(flatten)]
    pub access: flowline_access::AccessSettings,
    /// Graph view settings.
    #[command(flatten)]
    pub graph: flowline_graph::GraphSettings,
    /// GraphQL limits.
    #[command(flatten)]
    pub graphql: GraphqlLimits,
    /// WebSocket and audit limits.
    #[command(flatten)]
    pub limits: ReadLimits,
    /// How long one SQL statement may run.
    #[command(flatten)]
    pub statements: StatementLimits,
}

/// Default of [`StatementLimits::statement_timeout_ms`].
const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;

/// How long one read may take.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct StatementLimits {
    /// Longest a single SQL statement of the query service may run, in milliseconds
    /// (PostgreSQL's `statement_timeout` on every pooled connection); a read that hits it
    /// answers 503. 0 disables it.
    #[arg(
        long = "query-statement-timeout-ms",
        env = "QUERY_STATEMENT_TIMEOUT_MS",
        default_value_t = DEFAULT_STATEMENT_TIMEOUT_MS
    )]
    pub statement_timeout_ms: u64,
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self {
            statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
        }
    }
}

/// Default of [`GraphqlLimits::max_depth`].
const DEFAULT_MAX_DEPTH: usize = 12;
/// Default of [`GraphqlLimits::max_complexity`].
const DEFAULT_MAX_COMPLEXITY: usize = 50_000;
/// Default of [`GraphqlLimits::max_aliases`].
const DEFAULT_MAX_ALIASES: usize = 30;
/// Default of [`GraphqlLimits::max_fields`].
const DEFAULT_MAX_FIELDS: usize = 300;
/// Default of [`GraphqlLimits::max_answer_values`].
const DEFAULT_MAX_ANSWER_VALUES: usize = 200_000;
/// Default of [`GraphqlLimits::max_body_bytes`].
const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

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
    /// Highest complexity a GraphQL query may have, computed before it runs: every field
    /// costs 1, list fields multiply their selection by their size (`first`, `depth`, or
    /// an assumed 10 steps, dependencies or dependents per step), `asOf` adds the replay
    /// it causes (docs/adr/0019).
    #[arg(
        long = "graphql-max-complexity",
        env = "GRAPHQL_MAX_COMPLEXITY",
        default_value_t = DEFAULT_MAX_COMPLEXITY
    )]
    pub max_complexity: usize,
    /// Most aliased fields a GraphQL operation may have (fragments counted where spread).
    #[arg(
        long = "graphql-max-aliases",
        env = "GRAPHQL_MAX_ALIASES",
        default_value_t = DEFAULT_MAX_ALIASES
    )]
    pub max_aliases: usize,
    /// Most fields a GraphQL operation may select (fragments counted where spread).
    #[arg(
        long = "graphql-max-fields",
        env = "GRAPHQL_MAX_FIELDS",
        default_value_t = DEFAULT_MAX_FIELDS
    )]
    pub max_fields: usize,
    /// Most values one GraphQL answer may hold, counted while it runs: each list charges
    /// its real length times the fields selected on its items (steps, dependencies,
    /// dependents, walks, events, related runs).
    #[arg(
        long = "graphql-max-answer-values",
        env = "GRAPHQL_MAX_ANSWER_VALUES",
        default_value_t = DEFAULT_MAX_ANSWER_VALUES
    )]
    pub max_answer_values: usize,
    /// Largest `/graphql` request body, in bytes (413 above).
    #[arg(
        long = "graphql-max-body-bytes",
        env = "GRAPHQL_MAX_BODY_BYTES",
        default_value_t = DEFAULT_MAX_BODY_BYTES
    )]
    pub max_body_bytes: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_complexity: DEFAULT_MAX_COMPLEXITY,
            max_aliases: DEFAULT_MAX_ALIASES,
            max_fields: DEFAULT_MAX_FIELDS,
            max_answer_values: DEFAULT_MAX_ANSWER_VALUES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
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
