//! Step outputs too large for their event: kept in `step_payloads` by content hash, the
//! event carries `sha256:<hex>`. Written before the event that refers to them, so a
//! reference on the log always resolves.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The payload table.
#[derive(Debug, Clone)]
pub struct Payloads {
    pool: PgPool,
    inline_bytes: usize,
}

impl Payloads {
    /// Outputs up to `inline_bytes` of JSON travel on their event.
    pub fn new(pool: PgPool, inline_bytes: usize) -> Self {
        Self { pool, inline_bytes }
    }

    /// What a `StepSucceeded` event carries for `output`: the output itself, or `null` and
    /// the reference of the stored copy.
    pub async fn store(
        &self,
        tenant: &str,
        output: Value,
    ) -> sqlx::Result<(Value, Option<String>)> {
        let text = output.to_string();
        if text.len() <= self.inline_bytes {
            return Ok((output, None));
        }
        let reference = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        sqlx::query(
            "INSERT INTO step_payloads (tenant, ref, body, size_bytes) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, ref) DO NOTHING",
        )
        .bind(tenant)
        .bind(&reference)
        .bind(&output)
        .bind(text.len() as i32)
        .execute(&self.pool)
        .await?;
        Ok((Value::Null, Some(reference)))
    }

    /// The stored output a reference names.
    pub async fn load(&self, tenant: &str, reference: &str) -> sqlx::Result<Option<Value>> {
        sqlx::query_scalar("SELECT body FROM step_payloads WHERE tenant = $1 AND ref = $2")
            .bind(tenant)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
    }
}
