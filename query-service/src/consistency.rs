//! Read-your-writes: a query that brings the consistency token of a command waits until
//! the read model has projected past it, up to a bound, and otherwise answers with a
//! retryable error rather than with state older than the client's own write.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use flowline_event_log::ConsistencyToken;
use flowline_service_kit::Problem;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::{Error, Result};

/// The request header carrying a token.
pub const HEADER: &str = "x-consistency-token";

/// How long polls of the checkpoints wait at first and at most: a fresh write is usually
/// projected within tens of milliseconds.
const FIRST_POLL: Duration = Duration::from_millis(5);
const LONGEST_POLL: Duration = Duration::from_millis(50);

/// Read-your-writes settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsistencySettings {
    /// Longest a query waits for the read model to reach a consistency token before it
    /// answers 503 (retryable), in milliseconds.
    #[arg(long, env = "CONSISTENCY_WAIT_MS", default_value_t = 5_000)]
    pub consistency_wait_ms: u64,
    /// The projection whose checkpoints tell how far the read model has read the log.
    #[arg(
        long,
        env = "READ_MODEL_PROJECTION",
        default_value = "workflow_read_model.v1"
    )]
    pub read_model_projection: String,
}

/// Knows how far the read model has read the log, and waits for it.
#[derive(Debug, Clone)]
pub struct ConsistencyGate {
    pool: PgPool,
    projection: String,
    bound: Duration,
}

impl ConsistencyGate {
    /// A gate over the checkpoints in `pool`.
    pub fn new(pool: PgPool, settings: &ConsistencySettings) -> Self {
        Self {
            pool,
            projection: settings.read_model_projection.clone(),
            bound: Duration::from_millis(settings.consistency_wait_ms),
        }
    }

    /// Per partition, the next offset the read model will read.
    pub async fn checkpoints(&self) -> Result<BTreeMap<i32, i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM projection_checkpoints WHERE projection = $1",
        )
        .bind(&self.projection)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Returns once the read model has passed `token` (with the checkpoints it saw), or
    /// fails with [`Error::NotYetConsistent`] after the bound.
    pub async fn wait_for(&self, token: &ConsistencyToken) -> Result<BTreeMap<i32, i64>> {
        let started = Instant::now();
        let mut pause = FIRST_POLL;
        loop {
            let checkpoints = self.checkpoints().await?;
            if token.is_passed_by(&checkpoints) {
                return Ok(checkpoints);
            }
            let waited = started.elapsed();
            if waited >= self.bound {
                return Err(Error::NotYetConsistent {
                    token: token.to_string(),
                    waited_ms: waited.as_millis() as u64,
                });
            }
            tokio::time::sleep(pause.min(self.bound - waited)).await;
            pause = (pause * 2).min(LONGEST_POLL);
        }
    }

    /// Waits for the token if there is one.
    pub async fn wait_for_any(&self, token: Option<&ConsistencyToken>) -> Result<()> {
        if let Some(token) = token {
            self.wait_for(token).await?;
        }
        Ok(())
    }
}

/// The token of a request's `X-Consistency-Token` header, if it has one.
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<ConsistencyToken>> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .map_err(|_| "not visible ASCII".to_owned())
        .and_then(|text| text.parse::<ConsistencyToken>().map_err(|e| e.to_string()));
    parsed.map(Some).map_err(|detail| {
        Error::Request(
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-header",
                "Invalid header",
                format!("X-Consistency-Token: {detail}"),
            )
            .with("header", "X-Consistency-Token"),
        )
    })
}

/// A token given as a GraphQL argument.
pub fn token_from_argument(text: &str) -> Result<ConsistencyToken> {
    text.parse().map_err(
        |e: flowline_event_log::InvalidToken| Error::InvalidParameter {
            parameter: "consistencyToken",
            message: e.to_string(),
        },
    )
}
