//! The executor's end of the live output channel (`flowline_service_kit::live`): runners
//! hand text and progress to a [`LiveSink`] without waiting, and one background task
//! publishes them to Redis in order, batched per step.
//!
//! The live view is best effort by design: when Redis is down or slow, entries are dropped
//! and counted rather than slowing an attempt; the step's outcome is on the log either way.

use std::collections::HashMap;
use std::sync::Arc;

use flowline_service_kit::live::{LiveEntry, LivePublisher, RedisSettings, stream_key};
use tokio::sync::mpsc;
use tracing::warn;
use uuid::Uuid;

use crate::metrics::Metrics;

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
    metrics: Arc<Metrics>,
}

impl LiveHub {
    /// Connects to Redis and starts publishing; without Redis the hub drops everything
    /// (with a warning), and steps run as before. Dropped entries are counted in `metrics`.
    pub async fn connect(settings: &RedisSettings, metrics: Arc<Metrics>) -> Self {
        let sender = match LivePublisher::connect(&settings.redis_url).await {
            Ok(publisher) => {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(publish(publisher, receiver, Arc::clone(&metrics)));
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
            metrics,
        }
    }

    /// A hub that publishes nothing.
    pub fn disabled() -> Self {
        Self {
            sender: None,
            prefix: String::new(),
            metrics: Arc::default(),
        }
    }

    /// The sink of one attempt.
    pub fn sink(&self, tenant: &str, workflow_id: Uuid, step_id: &str, attempt: u32) -> LiveSink {
        LiveSink {
            key: stream_key(&self.prefix, tenant, workflow_id, step_id).into(),
            attempt,
            sender: self.sender.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Where one attempt's live output goes. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct LiveSink {
    key: Arc<str>,
    attempt: u32,
    sender: Option<mpsc::Sender<Queued>>,
    metrics: Arc<Metrics>,
}

impl LiveSink {
    /// A sink that drops everything (tests of runners, steps without a live view).
    pub fn disabled() -> Self {
        Self {
            key: "".into(),
            attempt: 0,
            sender: None,
            metrics: Arc::default(),
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

    /// The attempt's runner returned: marks the end of its live output.
    pub fn finished(&self) {
        self.send(LiveEntry::Finished {
            attempt: self.attempt,
        });
    }

    fn send(&self, entry: LiveEntry) {
        let Some(sender) = &self.sender else { return };
        if sender.try_send((Arc::clone(&self.key), entry)).is_err() {
            Metrics::count(&self.metrics.live_entries_dropped);
        }
    }
}

async fn publish(
    publisher: LivePublisher,
    mut receiver: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
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
                metrics
                    .live_entries_dropped
                    .fetch_add(entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
                warn!(%error, "live step output not published");
            }
        }
    }
}
