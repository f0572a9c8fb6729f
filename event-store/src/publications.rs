//! Waiting for "my event is on the log": the relay announces each published batch with
//! `NOTIFY`, and every writer instance wakes the requests waiting for those positions. It
//! announces parked events the same way, so their requests get a definite answer too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::parked::{PARKED_CHANNEL, PublicationStatus, parse_parked};
use crate::store::EventStore;
use crate::{Error, Result};

/// Channel the relay announces published positions on (payload: see [`parse_published`]).
pub const PUBLISHED_CHANNEL: &str = "event_store_published";
/// How often a waiter re-reads its row, in case a notification was missed (the listener
/// reconnected, or the batch was published before the waiter registered).
const RECHECK: Duration = Duration::from_millis(250);

/// Where an event landed on the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LogPosition {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// The waiters of one writer instance.
#[derive(Debug)]
pub struct Publications {
    waiters: Mutex<HashMap<i64, Vec<oneshot::Sender<Option<LogPosition>>>>>,
    store: EventStore,
}

/// Encodes a published batch as a NOTIFY payload: `position:partition:offset,…`.
pub(crate) fn encode_payload(published: &[(i64, LogPosition)]) -> String {
    published
        .iter()
        .map(|(position, log)| format!("{position}:{}:{}", log.partition, log.offset))
        .collect::<Vec<_>>()
        .join(",")
}

/// The store positions and log places a [`PUBLISHED_CHANNEL`] notification announces.
pub fn parse_published(payload: &str) -> impl Iterator<Item = (i64, LogPosition)> + '_ {
    payload.split(',').filter_map(|entry| {
        let mut parts = entry.split(':');
        let position = parts.next()?.parse().ok()?;
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        Some((position, LogPosition { partition, offset }))
    })
}

impl Publications {
    /// Starts listening for published batches until `shutdown`.
    pub async fn start(pool: PgPool, shutdown: CancellationToken) -> Result<Arc<Self>> {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener
            .listen_all([PUBLISHED_CHANNEL, PARKED_CHANNEL])
            .await?;
        let publications = Arc::new(Self {
            waiters: Mutex::new(HashMap::new()),
            store: EventStore::new(pool),
        });
        let dispatcher = Arc::clone(&publications);
        tokio::spawn(async move {
            loop {
                let notification = tokio::select! {
                    () = shutdown.cancelled() => return,
                    notification = listener.recv() => notification,
                };
                match notification {
                    Ok(notification) if notification.channel() == PARKED_CHANNEL => {
                        dispatcher.dispatch_parked(notification.payload());
                    }
                    Ok(notification) => dispatcher.dispatch(notification.payload()),
                    Err(error) => {
                        warn!(%error, "publication listener lost; waiters fall back to polling");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(publications)
    }

    fn dispatch(&self, payload: &str) {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        for (position, log) in parse_published(payload) {
            for waiter in waiters.remove(&position).unwrap_or_default() {
                let _ = waiter.send(Some(log));
            }
        }
    }

    /// Wakes the waiters of parked positions (`None`: read why from the store).
    fn dispatch_parked(&self, payload: &str) {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        for position in parse_parked(payload) {
            for waiter in waiters.remove(&position).unwrap_or_default() {
                let _ = waiter.send(None);
            }
        }
    }

    /// Waits until the event at store `position` is on the log, for at most `timeout`.
    /// A parked event is [`Error::PublicationParked`] as soon as the relay parks it.
    pub async fn wait(&self, position: i64, timeout: Duration) -> Result<LogPosition> {
        let (sender, receiver) = oneshot::channel();
        let mut receiver = Some(receiver);
        self.waiters
            .lock()
            .expect("waiters lock")
            .entry(position)
            .or_default()
            .push(sender);
        let outcome = tokio::time::timeout(timeout, async {
            let mut first = true;
            loop {
                // The notification normally comes first; the row is re-read only when it is
                // late (missed while the listener reconnected, or sent before we registered).
                if !std::mem::take(&mut first) {
                    match self.store.publication(position).await? {
                        PublicationStatus::Published(log) => return Ok(log),
                        PublicationStatus::Parked(parked) => {
                            return Err(Error::PublicationParked(parked));
                        }
                        PublicationStatus::Pending => {}
                    }
                }
                let Some(pending) = receiver.as_mut() else {
                    tokio::time::sleep(RECHECK).await;
                    continue;
                };
                tokio::select! {
                    log = pending => match log {
                        Ok(Some(log)) => return Ok(log),
                        // Parked: the store says why (read at the top of the loop).
                        Ok(None) | Err(_) => receiver = None,
                    },
                    () = tokio::time::sleep(RECHECK) => {}
                }
            }
        })
        .await;
        if outcome.is_err() {
            self.waiters.lock().expect("waiters lock").remove(&position);
        }
        outcome.unwrap_or(Err(Error::PublicationPending(position)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let batch = vec![
            (
                7,
                LogPosition {
                    partition: 0,
                    offset: 12,
                },
            ),
            (
                9,
                LogPosition {
                    partition: 2,
                    offset: 0,
                },
            ),
        ];
        assert_eq!(
            parse_published(&encode_payload(&batch)).collect::<Vec<_>>(),
            batch
        );
    }
}
