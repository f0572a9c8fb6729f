//! Live step output: what a running step produces before its outcome is an event — the
//! text of a streaming model call as it arrives, an MCP tool's progress — carried on one
//! Redis stream per step, outside the log.
//!
//! The log records the outcome once (the final output and usage on the step's event);
//! putting every token on it would make a run's history as long as its output in tokens.
//! A Redis stream rather than pub/sub, so a subscriber that arrives after the first tokens
//! reads them from the start, in order, and then waits for more. Streams are capped in
//! length and expire, so they cost bounded memory; losing one (Redis restarted) loses only
//! the live view, never an outcome.

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::redis_settings::RedisSettings;

/// Entries kept per step stream; older ones are trimmed (approximately, as Redis trims).
pub const MAX_ENTRIES_PER_STEP: usize = 10_000;

/// How long a step's stream outlives its last entry.
pub const STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// The stream field holding an entry's JSON.
const FIELD: &str = "e";

/// One piece of a step's live output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEntry {
    /// Text a model produced, in order.
    Token {
        /// The attempt that produced it.
        attempt: u32,
        /// The text.
        text: String,
    },
    /// Progress a tool reported.
    Progress {
        /// The attempt.
        attempt: u32,
        /// How far it is.
        progress: f64,
        /// Out of how much, when known.
        total: Option<f64>,
        /// What it is doing.
        message: Option<String>,
    },
    /// The attempt's runner returned: nothing more of this attempt follows. Written before
    /// the attempt's outcome is appended, so a reader that sees the step's outcome knows
    /// to wait only a moment for this marker and thereby for every entry before it.
    Finished {
        /// The attempt.
        attempt: u32,
    },
}

/// The stream of one step of one run: `{prefix}:live:{tenant}:{workflow}:{step}`. The
/// tenant is part of the key, so a reader that only ever builds keys for its caller's
/// tenant cannot reach another tenant's output.
pub fn stream_key(prefix: &str, tenant: &str, workflow_id: Uuid, step_id: &str) -> String {
    format!("{prefix}:live:{tenant}:{workflow_id}:{step_id}")
}

/// Appends entries to step streams.
#[derive(Clone)]
pub struct LivePublisher {
    connection: ConnectionManager,
}

impl std::fmt::Debug for LivePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePublisher").finish_non_exhaustive()
    }
}

impl LivePublisher {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            connection: ConnectionManager::new(client).await?,
        })
    }

    /// Appends `entries` to the stream at `key`, in order, in one round trip, and renews
    /// its expiry.
    pub async fn publish(&self, key: &str, entries: &[LiveEntry]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for entry in entries {
            let json = serde_json::to_string(entry).expect("live entries serialise");
            pipe.cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_ENTRIES_PER_STEP)
                .arg("*")
                .arg(FIELD)
                .arg(json)
                .ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(key)
            .arg(STREAM_TTL.as_millis() as u64)
            .ignore();
        let mut connection = self.connection.clone();
        pipe.query_async(&mut connection).await
    }
}

/// Reads one step stream from a position on, waiting for entries that are not there yet.
///
/// Each reader holds a connection of its own: a blocking read on a shared, multiplexed
/// connection would hold up every other command queued behind it.
pub struct LiveReader {
    connection: MultiplexedConnection,
    key: String,
    after: String,
}

impl LiveReader {
    /// A reader of the stream at `key` from its first entry.
    pub async fn open(url: &str, key: String) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            connection: client.get_multiplexed_async_connection().await?,
            key,
            after: "0".into(),
        })
    }

    /// The entries after the last one read, waiting up to `wait` for the first (an empty
    /// answer: none came). At most `count` at a time; unreadable entries are skipped.
    pub async fn next_batch(
        &mut self,
        wait: Duration,
        count: usize,
    ) -> RedisResult<Vec<LiveEntry>> {
        let options = StreamReadOptions::default()
            .count(count)
            .block(wait.as_millis().max(1) as usize);
        let reply: Option<StreamReadReply> = self
            .connection
            .xread_options(&[&self.key], &[&self.after], &options)
            .await?;
        Ok(self.take(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids)))
    }

    /// The entries after the last one read that are there now, without waiting.
    pub async fn drain(&mut self, count: usize) -> RedisResult<Vec<LiveEntry>> {
        let start = format!("({}", self.after);
        let reply: StreamRangeReply = self
            .connection
            .xrange_count(&self.key, start, "+", count)
            .await?;
        Ok(self.take(reply.ids))
    }

    fn take(&mut self, ids: impl IntoIterator<Item = redis::streams::StreamId>) -> Vec<LiveEntry> {
        let mut entries = Vec::new();
        for id in ids {
            let entry = id
                .get::<String>(FIELD)
                .and_then(|json| serde_json::from_str(&json).ok());
            self.after = id.id;
            entries.extend(entry);
        }
        entries
    }
}
