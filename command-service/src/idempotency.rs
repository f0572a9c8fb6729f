//! `Idempotency-Key`: the first answer to a keyed request is cached in Redis for a while,
//! so a retry gets the same answer without touching the store. Redis is only a cache: the
//! key also fixes the command id, which PostgreSQL appends once per tenant, so a retry
//! after the cache expired, was flushed or Redis was down still applies nothing twice.

use axum::http::{HeaderMap, StatusCode};
use flowline_service_kit::Problem;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;
use uuid::Uuid;

/// The header.
pub const HEADER: &str = "idempotency-key";
/// Namespace of command ids derived from idempotency keys (UUIDv5).
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_5c0e_2b8d_4f7a_9c3e_1d2b_7e4f_a001);

/// A keyed request: its command id and fingerprint.
#[derive(Debug, Clone)]
pub struct Keyed {
    /// The key as sent.
    pub key: String,
    /// Command id derived from tenant and key.
    pub command_id: Uuid,
    /// Hash of method, path and body.
    pub fingerprint: String,
}

/// Reads the `Idempotency-Key` header, if any.
pub fn keyed(
    headers: &HeaderMap,
    tenant: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Option<Keyed>, Problem> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-header",
            "Invalid header",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
        .with("header", "Idempotency-Key"));
    }
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update(b" ");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    let fingerprint = hash
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(Some(Keyed {
        key: key.to_owned(),
        command_id: Uuid::new_v5(&COMMAND_NAMESPACE, format!("{tenant}\n{key}").as_bytes()),
        fingerprint,
    }))
}

/// A cached first answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// Fingerprint of the request answered.
    pub fingerprint: String,
    /// HTTP status sent.
    pub status: u16,
    /// JSON body sent.
    pub body: serde_json::Value,
}

/// The Redis cache of first answers.
#[derive(Clone)]
pub struct AnswerCache {
    connection: Option<ConnectionManager>,
    ttl_seconds: u64,
    prefix: String,
}

impl AnswerCache {
    /// Connects to Redis; without it the service still works, just without the cache.
    pub async fn connect(url: &str, ttl_seconds: u64, prefix: &str) -> Self {
        let connection = match redis::Client::open(url) {
            Ok(client) => match ConnectionManager::new(client).await {
                Ok(connection) => Some(connection),
                Err(error) => {
                    warn!(%error, "Redis unavailable; idempotent replays come from PostgreSQL");
                    None
                }
            },
            Err(error) => {
                warn!(%error, "invalid REDIS_URL; idempotency cache disabled");
                None
            }
        };
        Self {
            connection,
            ttl_seconds,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, tenant: &str, key: &str) -> String {
        format!("{}:idempotency:{tenant}:{key}", self.prefix)
    }

    /// The first answer to `key`, if cached.
    pub async fn get(&self, tenant: &str, key: &str) -> Option<CachedAnswer> {
        let mut connection = self.connection.clone()?;
        let cached: Option<String> = connection
            .get(self.key(tenant, key))
            .await
            .inspect_err(|error| warn!(%error, "idempotency cache read failed"))
            .ok()?;
        serde_json::from_str(&cached?).ok()
    }

    /// Caches the first answer to `key`.
    pub async fn put(&self, tenant: &str, key: &str, answer: &CachedAnswer) {
        let Some(mut connection) = self.connection.clone() else {
            return;
        };
        let Ok(text) = serde_json::to_string(answer) else {
            return;
        };
        let stored: redis::RedisResult<()> = connection
            .set_ex(self.key(tenant, key), text, self.ttl_seconds)
            .await;
        if let Err(error) = stored {
            warn!(%error, "idempotency cache write failed");
        }
    }
}
