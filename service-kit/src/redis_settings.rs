//! Where a service's Redis is: one set of flags for every service that uses it (read and
//! idempotency caches, the live output of running steps). Correctness never depends on
//! Redis: each use says what it loses without it.

/// Redis connection and key prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of this deployment's Redis keys.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "flowline")]
    pub redis_key_prefix: String,
}
