//! The executor's end of the live output channel (`flowline_service_kit::live`): runners
//! hand text and progress to a [`LiveSink`] without waiting, and one background task
//! publishes them to Redis in order, batched per step.
//!
//! The live view is best effort by design: when Redis is down or slow, entries are dropped
//! and counted rather than slowing an attempt; the step's outcome is on the log either way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowline_service_kit::live::{LiveEntry, LivePublisher, RedisSettings, stream_key};
use tokio::sync::mpsc;
use tracing::warn;
use uuid::Uuid;

/// Entries waiting to be published before new ones are dropped.
const QUEUE: usize = 16_384;

/// Most entries published in one round trip.
const BATCH: usize = 512;

type Queued = (Arc<str>, LiveEntry);

/// Hands out sinks and owns the publishing task.
#[derive(Debug, Clone)]
pub struct LiveHub {
    sender: Option<mpsc::Sender<Queued>>,
    prefix: String,
    dropped: Arc<AtomicU64>,
}

impl LiveHub {
    /// Connects to Redis and starts publishing; without Redis the hub drops everything
    /// (with a warning), and steps run as before.
    pub async fn connect(settings: &RedisSettings) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let sender = match LivePublisher::connect(&settings.redis_url).await {
            Ok(publisher) => {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(publish(publisher, receiver, Arc::clone(&dropped)));
                Some(sender)
            }
            Err(error) => {
                warn!(%error, "Redis unreachable: live step output is off");
                None
            }
        };
        Self {
            sender,
            prefix: settings.redis_key_prefix.clone(),
            dropped,
        }
    }

    /// A hub that publishes nothing.
    pub fn disabled() -> Self {
        Self {
            sender: None,
            prefix: String::new(),
            dropped: Arc::default(),
        }
    }

    /// The sink of one attempt.
    pub fn sink(&self, tenant: &str, workflow_id: Uuid, step_id: &str, attempt: u32) -> LiveSink {
        LiveSink {
            key: stream_key(&self.prefix, tenant, workflow_id, step_id).into(),
            attempt,
            sender: self.sender.clone(),
            dropped: Arc::clone(&self.dropped),
        }
    }

    /// Entries dropped so far (queue full or Redis failing).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Where one attempt's live output goes. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct LiveSink {
    key: Arc<str>,
    attempt: u32,
    sender: Option<mpsc::Sender<Queued>>,
    dropped: Arc<AtomicU64>,
}

impl LiveSink {
    /// A sink that drops everything (tests of runners, steps without a live view).
    pub fn disabled() -> Self {
        Self {
            key: "".into(),
            attempt: 0,
            sender: None,
            dropped: Arc::default(),
        }
    }

    /// A piece of streamed model output.
    pub fn token(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.send(LiveEntry::Token {
            attempt: self.attempt,
            text: text.to_owned(),
        });
    }

    /// A tool's progress.
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        self.send(LiveEntry::Progress {
            attempt: self.attempt,
            progress,
            total,
            message,
        });
    }

    fn send(&self, entry: LiveEntry) {
        let Some(sender) = &self.sender else { return };
        if sender.try_send((Arc::clone(&self.key), entry)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn publish(
    publisher: LivePublisher,
    mut receiver: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // Per key, in arrival order: entries of one step never overtake each other.
        let mut order: Vec<Arc<str>> = Vec::new();
        let mut by_key: HashMap<Arc<str>, Vec<LiveEntry>> = HashMap::new();
        for (key, entry) in batch.drain(..) {
            by_key
                .entry(Arc::clone(&key))
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(entry);
        }
        for key in order {
            let entries = by_key.remove(&key).unwrap_or_default();
            if let Err(error) = publisher.publish(&key, &entries).await {
                dropped.fetch_add(entries.len() as u64, Ordering::Relaxed);
                warn!(%error, "live step output not published");
            }
        }
    }
}
