//! The read model's change feed on the reading side: one task per process `LISTEN`s on
//! [`flowline_domain::change::CHANNEL`] (the projection `NOTIFY`s when a batch commits) and
//! fans the changes out to any number of in-process readers.
//!
//! NOTIFY is fire-and-forget: whatever happens while the listening connection is down is
//! lost, and a reader that falls behind the broadcast buffer loses messages too. Both
//! surface as [`Change::Resync`], meaning "you may have missed changes: re-read what you
//! watch from the database". A reader that subscribes *before* reading its starting state
//! therefore never misses a committed change.
//!
//! Subscriptions read only one tenant's data, so they subscribe to that tenant's changes
//! ([`ChangeFeed::subscribe_tenant`]): a change is routed in memory to the readers of its
//! tenant, and the readers of other tenants are neither woken nor made to query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// The same for a reader of one tenant's changes (one buffer per tenant being watched).
const TENANT_BUFFER: usize = 1024;
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
    fanout: Fanout,
}

/// Where changes go: every reader of all changes, and the readers of the change's tenant.
#[derive(Debug, Clone)]
struct Fanout {
    all: broadcast::Sender<Change>,
    /// One channel per tenant that has (or recently had) readers.
    tenants: Arc<Mutex<HashMap<String, broadcast::Sender<Change>>>>,
    /// Database reads readers made because of what they heard (`/metrics`).
    rereads: Arc<AtomicU64>,
}

impl Fanout {
    fn send(&self, change: Change) {
        let mut tenants = self.tenants.lock().expect("tenant channels");
        // Channels whose last reader is gone are dropped as changes pass.
        tenants.retain(|_, sender| sender.receiver_count() > 0);
        match &change {
            Change::Workflow(workflow) => {
                if let Some(sender) = tenants.get(&workflow.tenant) {
                    let _ = sender.send(change.clone());
                }
            }
            Change::Resync => {
                for sender in tenants.values() {
                    let _ = sender.send(Change::Resync);
                }
            }
        }
        drop(tenants);
        let _ = self.all.send(change);
    }

    fn subscribe_tenant(&self, tenant: &str) -> broadcast::Receiver<Change> {
        let mut tenants = self.tenants.lock().expect("tenant channels");
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| broadcast::channel(TENANT_BUFFER).0)
            .subscribe()
    }
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
        let fanout = Fanout {
            all: broadcast::channel(BUFFER).0,
            tenants: Arc::default(),
            rereads: Arc::default(),
        };
        let stop = CancellationToken::new();
        let feed = fanout.clone();
        let task = health.supervise("change feed", stop.clone(), move || {
            listen(pool.clone(), feed.clone())
        });
        (Self { fanout }, Listening(task, stop))
    }

    /// A new reader; it hears every change committed from now on.
    pub fn subscribe(&self) -> Changes {
        self.reader(self.fanout.all.subscribe())
    }

    fn reader(&self, receiver: broadcast::Receiver<Change>) -> Changes {
        Changes {
            receiver,
            rereads: self.fanout.rereads.clone(),
        }
    }

    /// Database reads its readers made so far ([`Changes::count_read`]).
    pub fn reads(&self) -> u64 {
        self.fanout.rereads.load(Ordering::Relaxed)
    }

    /// A new reader of `tenant`'s changes (and of every [`Change::Resync`]) committed from
    /// now on.
    pub fn subscribe_tenant(&self, tenant: &str) -> Changes {
        self.reader(self.fanout.subscribe_tenant(tenant))
    }
}

/// One reader of the feed.
#[derive(Debug)]
pub struct Changes {
    receiver: broadcast::Receiver<Change>,
    rereads: Arc<AtomicU64>,
}

impl Changes {
    /// Counts one database read this reader makes (its start, or after a change).
    pub fn count_read(&self) {
        self.rereads.fetch_add(1, Ordering::Relaxed);
    }

    /// The next change; `None` once the feed is gone (the service is stopping).
    pub async fn next(&mut self) -> Option<Change> {
        match self.receiver.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "change reader lagged; it re-reads");
                Some(Change::Resync)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

async fn listen(pool: PgPool, sender: Fanout) {
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
    sender: &Fanout,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([CHANNEL, TABLES_REPLACED_CHANNEL])
        .await?;
    sender.send(Change::Resync);
    loop {
        let Some(notification) = listener.try_recv().await? else {
            // The connection was lost; the listener reconnected and listens again.
            tracing::warn!("change feed reconnected; readers re-read");
            sender.send(Change::Resync);
            continue;
        };
        if notification.channel() == TABLES_REPLACED_CHANNEL {
            tracing::info!(
                projection = notification.payload(),
                "tables replaced; readers re-read"
            );
            sender.send(Change::Resync);
            continue;
        }
        match serde_json::from_str::<WorkflowChange>(notification.payload()) {
            Ok(change) => {
                sender.send(Change::Workflow(change));
            }
            Err(error) => {
                tracing::warn!(%error, payload = notification.payload(), "unreadable change notification");
                sender.send(Change::Resync);
            }
        }
    }
}
