//! Executing one command: load the stream, decide, append at the next version, and wait
//! until the event is on the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flowline_domain::{
    Aggregate, EventEnvelope, EventMetadata, Versioned, Workflow, WorkflowCommand,
};
use flowline_event_store::{EventStore, LogPosition, Publications};
use rand::Rng;
use uuid::Uuid;

use crate::{Error, Result};

/// Who asks, under which conditions, and in which trace.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The tenant the command acts for.
    pub tenant: String,
    /// The caller's correlation id, or the command's own id.
    pub correlation_id: Option<Uuid>,
    /// `If-Match`: the version the caller last saw.
    pub expected_version: Option<u64>,
    /// W3C trace context of the request.
    pub traceparent: Option<String>,
    /// W3C trace state of the request.
    pub tracestate: Option<String>,
}

/// An accepted command: its event is on the log.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The stream.
    pub workflow_id: Uuid,
    /// The stream's version after the event.
    pub version: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The command's id.
    pub command_id: Uuid,
    /// Where the event is on the log.
    pub log: LogPosition,
    /// The state after the event.
    pub state: Workflow,
}

/// The stream a command targets.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// A stream id this service just generated: nothing to load.
    New(Uuid),
    /// A stream named by the caller.
    Existing(Uuid),
}

/// Runs commands against the event store.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    publications: Arc<Publications>,
    publish_timeout: Duration,
}

/// How long a command without `If-Match` keeps retrying when other writers win the race.
const CONTENTION_BUDGET: Duration = Duration::from_secs(10);

impl CommandHandler {
    /// A handler on `store`, answering once `publications` confirms the log has the event.
    pub fn new(
        store: EventStore,
        publications: Arc<Publications>,
        publish_timeout: Duration,
    ) -> Self {
        Self {
            store,
            publications,
            publish_timeout,
        }
    }

    /// Decides and appends `command` on stream `workflow_id`.
    pub async fn execute(
        &self,
        context: &CommandContext,
        stream: Stream,
        command: WorkflowCommand,
    ) -> Result<Accepted> {
        let command_id = Uuid::now_v7();
        let started = Instant::now();
        let mut attempt = 0u32;
        let (workflow_id, mut known_new) = match stream {
            Stream::New(id) => (id, true),
            Stream::Existing(id) => (id, false),
        };
        loop {
            let history = if std::mem::take(&mut known_new) {
                Vec::new()
            } else {
                self.store.load(&context.tenant, workflow_id).await?
            };
            let mut current =
                Versioned::<Workflow>::replay(history.iter().map(|stored| &stored.envelope.event));
            if let Some(expected) = context.expected_version
                && expected != current.version
            {
                return Err(Error::VersionMismatch {
                    expected,
                    current: current.version,
                });
            }
            let event = current.state.decide(&command)?;
            let envelope = EventEnvelope {
                metadata: EventMetadata {
                    event_id: Uuid::now_v7(),
                    tenant: context.tenant.clone(),
                    stream_id: workflow_id,
                    stream_version: current.version + 1,
                    occurred_at: Utc::now(),
                    command_id,
                    correlation_id: context.correlation_id.unwrap_or(command_id),
                    causation_id: command_id,
                    traceparent: context.traceparent.clone(),
                    tracestate: context.tracestate.clone(),
                },
                event,
            };
            match self.store.append(&envelope).await {
                Ok(position) => {
                    let log = self
                        .publications
                        .wait(position, self.publish_timeout)
                        .await
                        .map_err(|error| match error {
                            flowline_event_store::Error::PublicationPending(_) => {
                                Error::PublicationPending {
                                    workflow_id,
                                    version: envelope.metadata.stream_version,
                                }
                            }
                            other => other.into(),
                        })?;
                    current.apply(&envelope.event);
                    return Ok(Accepted {
                        workflow_id,
                        version: current.version,
                        event_id: envelope.metadata.event_id,
                        command_id,
                        log,
                        state: current.state,
                    });
                }
                Err(flowline_event_store::Error::VersionConflict { .. }) => {
                    if let Some(expected) = context.expected_version {
                        let history = self.store.load(&context.tenant, workflow_id).await?;
                        return Err(Error::VersionMismatch {
                            expected,
                            current: history.len() as u64,
                        });
                    }
                    if started.elapsed() > CONTENTION_BUDGET {
                        return Err(Error::Contention(workflow_id));
                    }
                    attempt += 1;
                    // Jittered backoff so losers do not collide again in lockstep.
                    let ceiling = 2u64.pow(attempt.min(6));
                    let pause = rand::rng().random_range(0..=ceiling);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
