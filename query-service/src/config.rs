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
