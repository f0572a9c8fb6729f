//! The access settings every service shares: where token keys come from, which claims
//! carry tenant and roles, the platform tenant, and the rate limits.

use std::path::PathBuf;

use url::Url;

use crate::Role;
use crate::rate_limit::{Quota, WhenRedisDown};

/// Authentication, authorisation and rate-limit settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessSettings {
    /// JWKS file holding the keys that sign bearer tokens (HS256 `oct` keys of at least 32
    /// bytes, RS256 `RSA` keys, Ed25519 `OKP` keys); re-read when a token names an unknown
    /// `kid`. `scripts/run` writes a development one to `.dev/jwks.json`.
    #[arg(long, env = "AUTH_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL of an identity provider (instead of a file); cached, fetched again when a
    /// token names an unknown `kid` (at most every 30 s).
    #[arg(long, env = "AUTH_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<Url>,
    /// The soonest the key set is read again because a token named a key id it does not
    /// hold (key rotation), in seconds.
    #[arg(long, env = "AUTH_JWKS_REFRESH_SECONDS", default_value_t = 30)]
    pub jwks_refresh_seconds: u64,
    /// Required `iss` of tokens (unchecked when unset).
    #[arg(long, env = "AUTH_ISSUER")]
    pub issuer: Option<String>,
    /// Required `aud` of tokens (unchecked when unset).
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "AUTH_LEEWAY_SECONDS", default_value_t = 30)]
    pub leeway_seconds: u64,
    /// Claim naming the tenant (a dotted path reads nested objects).
    #[arg(long, env = "AUTH_TENANT_CLAIM", default_value = "tenant")]
    pub tenant_claim: String,
    /// Claim listing the roles (array or space-separated string; dotted path allowed,
    /// e.g. `realm_access.roles`). The highest of reader, submitter, operator, admin counts.
    #[arg(long, env = "AUTH_ROLES_CLAIM", default_value = "roles")]
    pub roles_claim: String,
    /// The tenant whose operators and admins act on the whole system: rebuilds, dead
    /// letters, lag, the executor's runs, the audit log of every tenant, and (admins, with
    /// `X-Tenant-Id`) any tenant.
    #[arg(long, env = "AUTH_PLATFORM_TENANT", default_value = "platform")]
    pub platform_tenant: String,
    /// Serve `/metrics` without credentials (for a scraper inside the network). Off by
    /// default: then it needs an operator of the platform tenant (metrics name tenants).
    #[arg(long, env = "AUTH_PUBLIC_METRICS", default_value_t = false, action = clap::ArgAction::Set)]
    pub public_metrics: bool,
    /// Requests per tenant, all its credentials together: `<requests>/<window>`
    /// (`6000/1m`); a burst of the whole quota is admitted, then one every window/requests.
    #[arg(long, env = "RATE_LIMIT_TENANT", default_value = "6000/1m")]
    pub rate_limit_tenant: Quota,
    /// Requests per reader credential (token subject or API key).
    #[arg(long, env = "RATE_LIMIT_READER", default_value = "1200/1m")]
    pub rate_limit_reader: Quota,
    /// Requests per submitter credential.
    #[arg(long, env = "RATE_LIMIT_SUBMITTER", default_value = "1200/1m")]
    pub rate_limit_submitter: Quota,
    /// Requests per operator credential.
    #[arg(long, env = "RATE_LIMIT_OPERATOR", default_value = "2400/1m")]
    pub rate_limit_operator: Quota,
    /// Requests per admin credential.
    #[arg(long, env = "RATE_LIMIT_ADMIN", default_value = "2400/1m")]
    pub rate_limit_admin: Quota,
    /// Origins (`https://app.example.com`, comma-separated) whose pages may call the HTTP
    /// APIs from a browser (CORS). Empty, the default: no cross-origin calls at all.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Origins (comma-separated) whose pages may open WebSockets besides the service's
    /// own; an upgrade from any other `Origin` is refused with 403 (clients that send no
    /// `Origin`, which browsers always do, are not concerned).
    #[arg(long, env = "WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,
    /// What a request gets while the rate limits' Redis does not answer within 250 ms:
    /// `admit` (served without a limit, logged and counted in
    /// `flowline_rate_limit_unavailable_total`) or `refuse` (503 with `Retry-After: 1`).
    #[arg(
        long,
        env = "RATE_LIMIT_WHEN_REDIS_DOWN",
        value_enum,
        default_value = "admit"
    )]
    pub when_redis_down: WhenRedisDown,
}

impl AccessSettings {
    /// The per-credential quota of `role`.
    pub fn credential_quota(&self, role: Role) -> Quota {
        match role {
            Role::Reader => self.rate_limit_reader,
            Role::Submitter => self.rate_limit_submitter,
            Role::Operator => self.rate_limit_operator,
            Role::Admin => self.rate_limit_admin,
        }
    }
}

impl Default for AccessSettings {
    /// The documented defaults, without reading the environment (for services built in
    /// process, as the tests do).
    fn default() -> Self {
        let quota = |text: &str| text.parse().expect("default quota");
        Self {
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 30,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            platform_tenant: "platform".into(),
            public_metrics: false,
            rate_limit_tenant: quota("6000/1m"),
            rate_limit_reader: quota("1200/1m"),
            rate_limit_submitter: quota("1200/1m"),
            rate_limit_operator: quota("2400/1m"),
            rate_limit_admin: quota("2400/1m"),
            when_redis_down: WhenRedisDown::Admit,
            cors_allowed_origins: Vec::new(),
            ws_allowed_origins: Vec::new(),
        }
    }
}
