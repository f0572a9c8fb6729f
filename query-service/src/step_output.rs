//! The `stepOutput` subscription: what a step produces while it runs — a model's text as it
//! streams, a tool's progress — read from the step's live channel (a Redis stream the
//! executor writes, [`flowline_service_kit::live`]), then the step's completion as the read
//! model has it (status, output, error, usage), after which the subscription ends.
//!
//! The live channel is outside the log: a subscriber that arrives late still reads the
//! step's output from its first token (the stream keeps it), and losing Redis loses only
//! the live part, never the completion, which comes from the committed read model. The
//! executor writes a `finished` marker for each attempt before recording its outcome; once
//! the read model shows the step finished, the subscription waits for the last attempt's
//! marker (at most [`MARKER_GRACE`]) so that every token arrives before the completion.

use std::time::Duration;

use async_graphql::{Enum, ErrorExtensions, SimpleObject};
use flowline_domain::StepKind;
use flowline_service_kit::live::{LiveEntry, LiveReader, RedisSettings, stream_key};
use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;
use uuid::Uuid;

use crate::changes::{Change, Changes};
use crate::read_model::{ReadModel, StepErrorView, StepView, UsageView};
use crate::{Error, Result};

/// How long a finished step's last `finished` marker is waited for (an attempt that was
/// cancelled, or whose marker Redis lost, has none).
pub const MARKER_GRACE: Duration = Duration::from_secs(2);

/// How long one read of the live channel waits for entries while the step runs: also how
/// soon a change of the step's status is acted on.
const LIVE_WAIT: Duration = Duration::from_millis(250);

/// Live entries read per round trip.
const LIVE_BATCH: usize = 256;

/// Items waiting for a slow client before reading the live channel pauses.
const BUFFER: usize = 256;

/// Where the live channel is (GraphQL context data).
#[derive(Debug, Clone)]
pub struct LiveChannel(pub RedisSettings);

/// What a `stepOutput` item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum StepOutputKind {
    /// Text a model produced (`text`), in order.
    Token,
    /// Progress a tool reported (`progress`, `total`, `message`).
    Progress,
    /// An attempt's runner returned (a retry's output follows, under its own `attempt`).
    AttemptFinished,
    /// The step finished: `status`, and `output`, `error` and `usage` as recorded. Last.
    Completed,
}

/// One item of a step's live output.
#[derive(Debug, Clone, SimpleObject)]
pub struct StepOutputEvent {
    /// What it is.
    pub kind: StepOutputKind,
    /// The attempt it belongs to (null for `COMPLETED`).
    pub attempt: Option<i32>,
    /// `TOKEN`: the text.
    pub text: Option<String>,
    /// `PROGRESS`: how far.
    pub progress: Option<f64>,
    /// `PROGRESS`: out of how much, when known.
    pub total: Option<f64>,
    /// `PROGRESS`: what the tool is doing.
    pub message: Option<String>,
    /// `COMPLETED`: the step's status (`succeeded`, `failed`, `skipped`, `cancelled`).
    pub status: Option<String>,
    /// `COMPLETED`: its output (null when kept by reference: see `outputRef`).
    pub output: Option<async_graphql::Json<serde_json::Value>>,
    /// `COMPLETED`: the payload reference of an output too large for its event.
    pub output_ref: Option<String>,
    /// `COMPLETED`: why it failed.
    pub error: Option<StepErrorView>,
    /// `COMPLETED`: what its model calls used and cost.
    pub usage: Option<UsageView>,
}

impl StepOutputEvent {
    fn empty(kind: StepOutputKind, attempt: Option<u32>) -> Self {
        Self {
            kind,
            attempt: attempt.map(|a| a as i32),
            text: None,
            progress: None,
            total: None,
            message: None,
            status: None,
            output: None,
            output_ref: None,
            error: None,
            usage: None,
        }
    }

    fn live(entry: LiveEntry) -> Self {
        match entry {
            LiveEntry::Token { attempt, text } => Self {
                text: Some(text),
                ..Self::empty(StepOutputKind::Token, Some(attempt))
            },
            LiveEntry::Progress {
                attempt,
                progress,
                total,
                message,
            } => Self {
                progress: Some(progress),
                total,
                message,
                ..Self::empty(StepOutputKind::Progress, Some(attempt))
            },
            LiveEntry::Finished { attempt } => {
                Self::empty(StepOutputKind::AttemptFinished, Some(attempt))
            }
        }
    }

    fn completed(step: StepView) -> Self {
        Self {
            status: Some(step.status),
            output: step.output,
            output_ref: step.output_ref,
            error: step.error,
            usage: step.usage,
            ..Self::empty(StepOutputKind::Completed, None)
        }
    }
}

/// What one `stepOutput` subscription follows.
pub(crate) struct StepOutputFollower {
    pub read_model: ReadModel,
    pub changes: Changes,
    pub live: LiveChannel,
    pub tenant: String,
    pub workflow_id: Uuid,
    pub step_id: String,
}

/// Where the followed step is.
enum Progress {
    /// Its run is not in the read model (yet).
    Absent,
    /// It may still produce output.
    Unfinished,
    /// It finished: its completion goes out once its last attempt's output is through.
    Finished(Box<Finishing>),
}

/// A finished step, and what is still awaited before its completion is sent.
struct Finishing {
    step: StepView,
    /// The attempt whose `finished` marker is awaited (none: nothing streamed).
    marker: Option<u32>,
    deadline: Instant,
}

impl StepOutputFollower {
    /// The subscription's items. The work runs in a task of its own that ends when the
    /// client goes away, the step completes, or the service stops.
    pub(crate) fn stream(self) -> impl Stream<Item = async_graphql::Result<StepOutputEvent>> {
        let (sender, receiver) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            let closed = sender.clone();
            tokio::select! {
                () = closed.closed() => {}
                () = self.follow(&sender) => {}
            }
        });
        futures::stream::unfold(receiver, |mut receiver| async move {
            let item = receiver.recv().await?;
            Some((item.map_err(|error| error.extend()), receiver))
        })
    }

    async fn follow(mut self, sender: &mpsc::Sender<Result<StepOutputEvent>>) {
        let key = stream_key(
            &self.live.0.redis_key_prefix,
            &self.tenant,
            self.workflow_id,
            &self.step_id,
        );
        let mut reader = match LiveReader::open(&self.live.0.redis_url, key).await {
            Ok(reader) => Some(reader),
            Err(error) => {
                warn!(%error, "live step output unavailable; only the completion is sent");
                None
            }
        };
        // The highest attempt whose `finished` marker was read (it may come before the
        // read model shows the outcome, usually does).
        let mut marked = 0;
        let mut progress = Progress::Absent;
        let mut stale = true;
        loop {
            if stale && !matches!(progress, Progress::Finished(_)) {
                stale = false;
                progress = match self.progress().await {
                    Ok(progress) => progress,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
            }
            if let Progress::Finished(done) = &progress
                && (done.marker.is_none_or(|attempt| attempt <= marked)
                    || reader.is_none()
                    || Instant::now() >= done.deadline)
            {
                // Whatever arrived up to now goes out before the completion.
                if let Some(reader) = reader.as_mut()
                    && !forward_rest(reader, sender).await
                {
                    return;
                }
                let Progress::Finished(done) = progress else {
                    unreachable!("matched above")
                };
                let _ = sender.send(Ok(StepOutputEvent::completed(done.step))).await;
                return;
            }
            match reader.as_mut() {
                // Nothing can be live before the run is projected: wait for it to be.
                Some(live) if !matches!(progress, Progress::Absent) => {
                    let wait = match progress {
                        Progress::Finished(_) => Duration::from_millis(50),
                        _ => LIVE_WAIT,
                    };
                    match live.next_batch(wait, LIVE_BATCH).await {
                        Ok(entries) => {
                            for entry in &entries {
                                if let LiveEntry::Finished { attempt } = entry {
                                    marked = marked.max(*attempt);
                                }
                            }
                            if !forward(entries, sender).await {
                                return;
                            }
                        }
                        Err(error) => {
                            warn!(%error, "live step output lost; only the completion is sent");
                            reader = None;
                        }
                    }
                    // Changes that arrived meanwhile, without waiting for more.
                    while let Some(change) = self.changes.next().now_or_never() {
                        match change {
                            Some(change) => stale |= self.concerns(&change),
                            None => return,
                        }
                    }
                }
                _ => match self.changes.next().await {
                    Some(change) => stale |= self.concerns(&change),
                    None => return,
                },
            }
        }
    }

    fn concerns(&self, change: &Change) -> bool {
        match change {
            Change::Workflow(change) => {
                change.workflow_id == self.workflow_id && change.tenant == self.tenant
            }
            Change::Resync => true,
        }
    }

    /// Where the step is, as the read model has it; an error when the run has no such
    /// step.
    async fn progress(&mut self) -> Result<Progress> {
        self.changes.count_read();
        let Some(workflow) = self
            .read_model
            .workflow(&self.tenant, self.workflow_id)
            .await?
        else {
            return Ok(Progress::Absent);
        };
        let Some(step) = workflow.steps.into_iter().find(|s| s.id == self.step_id) else {
            return Err(Error::UnknownStep(self.step_id.clone()));
        };
        let finished = flowline_domain::StepStatus::parse(&step.status)
            .is_some_and(|status| status.is_finished());
        if !finished {
            return Ok(Progress::Unfinished);
        }
        let streams = StepKind::parse(&step.kind).is_some_and(StepKind::streams_live_output);
        let marker = (streams && step.attempt_count > 0).then_some(step.attempt_count as u32);
        Ok(Progress::Finished(Box::new(Finishing {
            step,
            marker,
            deadline: Instant::now() + MARKER_GRACE,
        })))
    }
}

/// Sends every entry left on the stream; `false` when the client went away.
async fn forward_rest(
    reader: &mut LiveReader,
    sender: &mpsc::Sender<Result<StepOutputEvent>>,
) -> bool {
    loop {
        match reader.drain(LIVE_BATCH).await {
            // (Unreadable entries are skipped, so only an empty answer says the end.)
            Ok(entries) if entries.is_empty() => return true,
            Ok(entries) => {
                if !forward(entries, sender).await {
                    return false;
                }
            }
            Err(error) => {
                warn!(%error, "live step output not drained");
                return true;
            }
        }
    }
}

/// Sends `entries` in order; `false` when the client went away.
async fn forward(entries: Vec<LiveEntry>, sender: &mpsc::Sender<Result<StepOutputEvent>>) -> bool {
    for entry in entries {
        if sender.send(Ok(StepOutputEvent::live(entry))).await.is_err() {
            return false;
        }
    }
    true
}
