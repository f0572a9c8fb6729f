//! Read-your-writes: a query that brings the consistency token of a command waits until
//! the read model has projected past it, up to a bound, and otherwise answers with a
//! retryable error rather than with state older than the client's own write.
//!
//! Waiting requests share one view of the checkpoints (a `tokio::sync::watch` channel)
//! instead of each polling the database: one task per process raises it from the change
//! feed (a notification of offset `o` on partition `p` is committed with a checkpoint past
//! `o`, so no query is needed) and, only while somebody waits, reads the checkpoints once
//! per poll for all of them (notifications can be lost, and records that change no
//! workflow announce nothing). However many requests wait, the database sees at most one
//! checkpoint query per poll interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use flowline_event_log::ConsistencyToken;
use flowline_service_kit::Problem;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::changes::{Change, ChangeFeed, Changes};
use crate::{Error, Result};

/// The request header carrying a token.
pub const HEADER: &str = "x-consistency-token";

/// How long the shared poll of the checkpoints waits at first and at most while requests
/// wait: a fresh write is usually projected within tens of milliseconds, and the change
/// feed usually wakes waiters before the poll does.
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

/// What the waiting requests and the watching task share.
#[derive(Debug)]
struct Shared {
    pool: PgPool,
    projection: String,
    /// Per partition, the next offset the read model is known to read (a lower bound).
    known: watch::Sender<BTreeMap<i32, i64>>,
    /// Requests waiting right now.
    waiting: AtomicUsize,
    /// A first request started waiting: poll now.
    arrived: Notify,
    /// Checkpoint queries made for waiting requests (`/metrics`).
    polls: AtomicU64,
}

/// Knows how far the read model has read the log, and waits for it.
#[derive(Debug, Clone)]
pub struct ConsistencyGate {
    shared: Arc<Shared>,
    bound: Duration,
}

/// Stops the task watching the checkpoints when dropped.
#[derive(Debug)]
pub struct Watching(JoinHandle<()>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a request as waiting for as long as it lives.
struct Waiter<'a>(&'a Shared);

impl<'a> Waiter<'a> {
    fn register(shared: &'a Shared) -> Self {
        if shared.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            shared.arrived.notify_one();
        }
        Self(shared)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Raises the known checkpoints to `seen` where it is ahead; wakes waiters if so.
    fn raise(&self, seen: impl IntoIterator<Item = (i32, i64)>) {
        let seen: Vec<(i32, i64)> = seen.into_iter().collect();
        self.known.send_if_modified(|known| {
            let mut raised = false;
            for (partition, next) in &seen {
                let slot = known.entry(*partition).or_insert(-1);
                if next > slot {
                    *slot = *next;
                    raised = true;
                }
            }
            raised
        });
    }

    async fn read_checkpoints(&self) -> Result<BTreeMap<i32, i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM projection_checkpoints WHERE projection = $1",
        )
        .bind(&self.projection)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn poll(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        match self.read_checkpoints().await {
            Ok(checkpoints) => self.raise(checkpoints),
            Err(error) => tracing::warn!(%error, "checkpoint poll failed; polling again"),
        }
    }
}

/// The watching task: raises the known checkpoints from the feed, and polls them for
/// everyone while anyone waits.
async fn watch_checkpoints(shared: Arc<Shared>, mut changes: Changes) {
    let mut pause = FIRST_POLL;
    let mut poll_now = false;
    loop {
        let waiting = shared.waiting.load(Ordering::Acquire) > 0;
        if waiting && poll_now {
            shared.poll().await;
            poll_now = false;
        }
        if !waiting {
            pause = FIRST_POLL;
        }
        tokio::select! {
            change = changes.next() => match change {
                None => return,
                Some(Change::Workflow(change)) => {
                    shared.raise([(change.log_partition, change.log_offset + 1)]);
                }
                Some(Change::Resync) => poll_now = true,
            },
            () = shared.arrived.notified(), if !waiting => {
                poll_now = true;
            }
            () = tokio::time::sleep(pause), if waiting => {
                poll_now = true;
                pause = (pause * 2).min(LONGEST_POLL);
            }
        }
    }
}

impl ConsistencyGate {
    /// A gate over the checkpoints in `pool`, woken by `feed`; it watches until the
    /// returned [`Watching`] is dropped.
    pub fn start(
        pool: PgPool,
        settings: &ConsistencySettings,
        feed: &ChangeFeed,
    ) -> (Self, Watching) {
        let shared = Arc::new(Shared {
            pool,
            projection: settings.read_model_projection.clone(),
            known: watch::Sender::new(BTreeMap::new()),
            waiting: AtomicUsize::new(0),
            arrived: Notify::new(),
            polls: AtomicU64::new(0),
        });
        let task = tokio::spawn(watch_checkpoints(shared.clone(), feed.subscribe()));
        let gate = Self {
            shared,
            bound: Duration::from_millis(settings.consistency_wait_ms),
        };
        (gate, Watching(task))
    }

    /// Per partition, the next offset the read model will read (read now).
    pub async fn checkpoints(&self) -> Result<BTreeMap<i32, i64>> {
        let checkpoints = self.shared.read_checkpoints().await?;
        self.shared.raise(checkpoints.clone());
        Ok(checkpoints)
    }

    /// Checkpoint queries made on behalf of waiting requests so far.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::Relaxed)
    }

    /// Returns once the read model has passed `token` (with checkpoints it had reached by
    /// then: a lower bound, which is what a cache entry may claim), or fails with
    /// [`Error::NotYetConsistent`] after the bound.
    pub async fn wait_for(&self, token: &ConsistencyToken) -> Result<BTreeMap<i32, i64>> {
        let started = Instant::now();
        let mut known = self.shared.known.subscribe();
        {
            let now = known.borrow_and_update();
            if token.is_passed_by(&now) {
                return Ok(now.clone());
            }
        }
        let _waiter = Waiter::register(&self.shared);
        let deadline = started + self.bound;
        loop {
            tokio::select! {
                changed = known.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = known.borrow_and_update();
                    if token.is_passed_by(&now) {
                        return Ok(now.clone());
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Err(Error::NotYetConsistent {
            token: token.to_string(),
            waited_ms: started.elapsed().as_millis() as u64,
        })
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
        .and_then(|text| {
            text.parse::<ConsistencyToken>()
                .map_err(|e| crate::error::bounded(e.to_string()))
        });
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
            message: crate::error::bounded(e.to_string()),
        },
    )
}
