//! API keys for service-to-service calls, kept in PostgreSQL.
//!
//! A key reads `flk_<id>_<secret>`: the id is public (it names the key in lists, logs and
//! rate limits), the secret is 256 random bits shown once at creation. Only the SHA-256 of
//! the secret is stored — a fast hash is enough for a secret with that much entropy, and
//! it keeps every verification to one primary-key read. Nothing is cached, so a revoked
//! key is refused by the next request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::Role;

/// What every key starts with (so scanners and people recognise one).
pub const KEY_PREFIX: &str = "flk_";
const ID_LENGTH: usize = 12;
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// How stale `last_used_at` may be: a busy key is not written on every request.
const LAST_USED_GRANULARITY_SECONDS: i64 = 60;

/// A key as lists show it (never its secret).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    /// Public id (the part after `flk_`).
    pub id: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it is for.
    pub name: String,
    /// The role it acts with.
    #[schema(value_type = Role)]
    pub role: String,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last successful use (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key just made: the only time its full text exists outside the caller.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key to send as `Authorization: Bearer <key>`; not shown again.
    pub key: String,
    /// What was stored.
    #[serde(flatten)]
    pub stored: ApiKey,
}

/// What a verified key says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// Public id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its role.
    pub role: Role,
}

/// Why a key was refused or could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not of the `flk_<id>_<secret>` form, unknown, wrong secret, revoked or expired:
    /// one answer for all, so a guess learns nothing.
    #[error("the API key is not valid")]
    Refused,
    /// The database failed.
    #[error("API key store: {0}")]
    Database(#[from] sqlx::Error),
}

/// The key store.
#[derive(Clone)]
pub struct ApiKeyStore {
    pool: PgPool,
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// `(id, secret)` of a key's text.
fn split(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (id.len() == ID_LENGTH && !secret.is_empty() && secret.len() <= 64).then_some((id, secret))
}

/// Whether `token` is an API key rather than a JWT.
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

impl ApiKeyStore {
    /// A store on `pool` (the `api_keys` table of the shared migrations).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Makes a key for `tenant` with `role`.
    pub async fn create(
        &self,
        tenant: &str,
        name: &str,
        role: Role,
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedKey, KeyError> {
        // The thread's generator is not `Send`: done with it before the first await.
        let (id, secret) = {
            let mut rng = rand::rng();
            let id: String = (0..ID_LENGTH)
                .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
                .collect();
            (id, URL_SAFE_NO_PAD.encode(rng.random::<[u8; 32]>()))
        };
        let stored = sqlx::query_as::<_, ApiKey>(
            "INSERT INTO api_keys (id, tenant, name, role, secret_sha256, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id, tenant, name, role, created_by, created_at, expires_at,
                       revoked_at, last_used_at",
        )
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(role.as_str())
        .bind(digest(&secret))
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?;
        Ok(CreatedKey {
            key: format!("{KEY_PREFIX}{id}_{secret}"),
            stored,
        })
    }

    /// The keys of `tenant`, newest first.
    pub async fn list(&self, tenant: &str) -> Result<Vec<ApiKey>, KeyError> {
        Ok(sqlx::query_as::<_, ApiKey>(
            "SELECT id, tenant, name, role, created_by, created_at, expires_at, revoked_at,
                    last_used_at
             FROM api_keys WHERE tenant = $1 ORDER BY created_at DESC, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes key `id` of `tenant`; `false` when the tenant has no such key. Revoking
    /// twice keeps the first time.
    pub async fn revoke(&self, tenant: &str, id: &str) -> Result<bool, KeyError> {
        let found = sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(found == 1)
    }

    /// Checks `key`, recording its use.
    pub async fn verify(&self, key: &str) -> Result<KeyIdentity, KeyError> {
        let (id, secret) = split(key).ok_or(KeyError::Refused)?;
        let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT tenant, role, secret_sha256 FROM api_keys
             WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        // Hash even for an unknown id, so both paths take the same time.
        let given = digest(secret);
        let Some((tenant, role, stored)) = row else {
            return Err(KeyError::Refused);
        };
        if !bool::from(given.ct_eq(&stored)) {
            return Err(KeyError::Refused);
        }
        let role = role.parse::<Role>().map_err(|_| KeyError::Refused)?;
        self.record_use(id);
        Ok(KeyIdentity {
            id: id.to_owned(),
            tenant,
            role,
        })
    }

    /// Notes the use off the request's path; a lost update costs a stale minute.
    fn record_use(&self, id: &str) {
        let pool = self.pool.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let result = sqlx::query(
                "UPDATE api_keys SET last_used_at = now()
                 WHERE id = $1 AND (last_used_at IS NULL
                                    OR last_used_at < now() - make_interval(secs => $2))",
            )
            .bind(&id)
            .bind(LAST_USED_GRANULARITY_SECONDS as f64)
            .execute(&pool)
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, key = %id, "recording an API key's use failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_splits_into_its_public_id_and_secret() {
        assert_eq!(
            split("flk_abcdefghjkmn_s3cr_et-x"),
            Some(("abcdefghjkmn", "s3cr_et-x"))
        );
        assert_eq!(split("flk_short_secret"), None);
        assert_eq!(split("eyJhbGciOi.x.y"), None);
        assert_eq!(split("flk_abcdefghjkmn_"), None);
    }
}
