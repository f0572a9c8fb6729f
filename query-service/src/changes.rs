//! The read model's change feed on the reading side: one task per process `LISTEN`s on
//! [`flowline_domain::change::CHANNEL`] (the projection `NOTIFY`s when a batch commits) and
//! fans the changes out to any number of in-process readers.
//!
//! NOTIFY is fire-and-forget: whatever happens while the listening connection is down is
//! lost, and a reader that falls behind the broadcast buffer loses messages too. Both
//! surface as [`Change::Resync`], meaning "you may have missed changes: re-read what you
//! watch from the database". A reader that subscribes *before* reading its starting state
//! therefore never misses a committed change.

use std::time::Duration;

use flowline_domain::WorkflowChange;
use flowline_domain::change::{CHANNEL, TABLES_REPLACED_CHANNEL};
use flowline_service_kit::health::Health;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How many changes a slow reader may fall behind before it is told to resync.
const BUFFER: usize = 4096;
/// Wait before listening again after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// What a reader hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A committed change of one workflow.
    Workflow(WorkflowChange),
    /// Changes may have been missed (the listener reconnected, or this reader lagged):
    /// re-read from the database.
    Resync,
}

/// The feed: cheap to clone, [`ChangeFeed::subscribe`] for a reader.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    sender: broadcast::Sender<Change>,
}

/// Stops the listening task when dropped.
#[derive(Debug)]
pub struct Listening(JoinHandle<()>, CancellationToken);

impl Drop for Listening {
    fn drop(&mut self) {
        self.1.cancel();
        self.0.abort();
    }
}

impl ChangeFeed {
    /// Starts listening with a connection of `pool` (held for as long as it listens), as a
    /// task `health` supervises: one that panics is started again (its readers resync).
    pub fn start(pool: PgPool, health: &Health) -> (Self, Listening) {
        let (sender, _) = broadcast::channel(BUFFER);
        let stop = CancellationToken::new();
        let feed = sender.clone();
        let task = health.supervise("change feed", stop.clone(), move || {
            listen(pool.clone(), feed.clone())
        });
        (Self { sender }, Listening(task, stop))
    }

    /// A new reader; it hears every change committed from now on.
    pub fn subscribe(&self) -> Changes {
        Changes(self.sender.subscribe())
    }
}

/// One reader of the feed.
#[derive(Debug)]
pub struct Changes(broadcast::Receiver<Change>);

impl Changes {
    /// The next change; `None` once the feed is gone (the service is stopping).
    pub async fn next(&mut self) -> Option<Change> {
        match self.0.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "change reader lagged; it re-reads");
                Some(Change::Resync)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

async fn listen(pool: PgPool, sender: broadcast::Sender<Change>) {
    loop {
        match listen_until_failed(&pool, &sender).await {
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => tracing::warn!(%error, "change feed failed; listening again"),
            Ok(never) => match never {},
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Listens until the connection fails for good. Readers are told to resync whenever the
/// `LISTEN` is (again) in place, not before: a re-read before it could miss a change
/// committed in between.
async fn listen_until_failed(
    pool: &PgPool,
    sender: &broadcast::Sender<Change>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([CHANNEL, TABLES_REPLACED_CHANNEL])
        .await?;
    let _ = sender.send(Change::Resync);
    loop {
        let Some(notification) = listener.try_recv().await? else {
            // The connection was lost; the listener reconnected and listens again.
            tracing::warn!("change feed reconnected; readers re-read");
            let _ = sender.send(Change::Resync);
            continue;
        };
        if notification.channel() == TABLES_REPLACED_CHANNEL {
            tracing::info!(
                projection = notification.payload(),
                "tables replaced; readers re-read"
            );
            let _ = sender.send(Change::Resync);
            continue;
        }
        match serde_json::from_str::<WorkflowChange>(notification.payload()) {
            Ok(change) => {
                let _ = sender.send(Change::Workflow(change));
            }
            Err(error) => {
                tracing::warn!(%error, payload = notification.payload(), "unreadable change notification");
                let _ = sender.send(Change::Resync);
            }
        }
    }
}
