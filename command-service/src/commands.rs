//! Executing one command: load the stream, decide, append at the next version, and wait
//! until the event is on the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flowline_domain::accepted::check_stream_room;
use flowline_domain::{
    Aggregate, EventEnvelope, EventMetadata, Versioned, Workflow, WorkflowCommand,
};
use flowline_event_store::{
    AppendedCommand, AsOf, EventStore, LogPosition, Publications, WorkflowRepository,
};
use rand::Rng;
use uuid::Uuid;

use crate::config::CommandLimits;
use crate::{Error, Result};

/// Who asks, under which conditions, and in which trace.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The command's id: derived from the `Idempotency-Key` when there is one, random
    /// otherwise. The store appends a command id once per tenant.
    pub command_id: Uuid,
    /// Hash of the request that carried an `Idempotency-Key`, to tell a retry from a reuse.
    pub fingerprint: Option<String>,
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

/// Answers a command that was appended before (a retry): as the first time, when the
/// request is the same.
fn same_request(context: &CommandContext, existing: &AppendedCommand) -> Result<()> {
    if existing.fingerprint == context.fingerprint {
        Ok(())
    } else {
        Err(Error::IdempotencyKeyReused)
    }
}

/// The stream a command targets.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// A stream id this service just generated: nothing to load.
    New(Uuid),
    /// A stream named by the caller.
    Existing(Uuid),
}

/// One queue per stream for this instance's writers.
#[derive(Debug, Default)]
struct StreamTurns(std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>);

impl StreamTurns {
    async fn take(&self, stream: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.0.lock().expect("turns lock");
            if turns.len() > 4_096 {
                turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            }
            Arc::clone(turns.entry(stream).or_default())
        };
        turn.lock_owned().await
    }
}

/// Runs commands against the event store.
#[derive(Debug)]
pub struct CommandHandler {
    turns: StreamTurns,
    repository: WorkflowRepository,
    vault: flowline_personal_data::Vault,
    publications: Arc<Publications>,
    publish_timeout: Duration,
    limits: CommandLimits,
}

/// How long a command without `If-Match` keeps retrying once other writers (other
/// instances) started winning the race.
const CONTENTION_BUDGET: Duration = Duration::from_secs(10);

/// How long a command waits for its turn on a busy stream behind this instance's other
/// commands on it, in all.
const QUEUE_BUDGET: Duration = Duration::from_secs(30);

impl CommandHandler {
    /// A handler on `repository`, answering once `publications` confirms the log has the
    /// event; it accepts only commands within `limits` (the record size limit is the
    /// store's, checked on the encoding it stores).
    pub fn new(
        repository: WorkflowRepository,
        vault: flowline_personal_data::Vault,
        publications: Arc<Publications>,
        publish_timeout: Duration,
        limits: CommandLimits,
    ) -> Self {
        Self {
            turns: StreamTurns::default(),
            repository,
            vault,
            publications,
            publish_timeout,
            limits,
        }
    }

    /// Decides and appends `command` on stream `workflow_id`.
    pub async fn execute(
        &self,
        context: &CommandContext,
        stream: Stream,
        command: WorkflowCommand,
    ) -> Result<Accepted> {
        let command_id = context.command_id;
        if context.fingerprint.is_some()
            && let Some(existing) = self
                .store()
                .find_command(&context.tenant, command_id)
                .await?
        {
            return self.replay(context, existing).await;
        }
        // Counted from the first lost race: waiting for this instance's own turn on the
        // stream is queueing, not contention. Queueing has its own, wider bound.
        let mut first_conflict: Option<Instant> = None;
        let deadline = tokio::time::Instant::now() + QUEUE_BUDGET;
        let mut attempt = 0u32;
        let (workflow_id, mut known_new) = match stream {
            Stream::New(id) => (id, true),
            Stream::Existing(id) => (id, false),
        };
        loop {
            // Writers of this instance take turns per stream instead of racing each other
            // into version conflicts; the store still arbitrates between instances.
            let turn = tokio::time::timeout_at(deadline, self.turns.take(workflow_id))
                .await
                .map_err(|_| Error::Contention(workflow_id))?;
            let mut current = if std::mem::take(&mut known_new) {
                Versioned::<Workflow>::default()
            } else {
                self.repository.load(&context.tenant, workflow_id).await?
            };
            if let Some(expected) = context.expected_version
                && expected != current.version
            {
                return Err(Error::VersionMismatch {
                    expected,
                    current: current.version,
                });
            }
            let mut event = current.state.decide(&command)?;
            check_stream_room(&event, current.version, self.limits.max_stream_events)?;
            // Sealed before anything is stored: no personal field reaches the store, the
            // snapshots or the log in plaintext, and the size check sees the stored bytes.
            let subject = match &command {
                WorkflowCommand::Submit(submit) => submit.subject.as_deref(),
                _ => None,
            };
            self.vault
                .seal_event(&context.tenant, workflow_id, &mut event, subject)
                .await?;
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
            let appended = self
                .store()
                .append(&envelope, context.fingerprint.as_deref())
                .await;
            drop(turn);
            match appended {
                Ok(position) => {
                    current.apply(&envelope.event);
                    self.repository
                        .after_append(&context.tenant, workflow_id, &current)
                        .await;
                    // Committed: from here on every failure is "pending", never a 500 that
                    // a retry without a key would turn into a second event.
                    let log = self.wait_published(position).await.map_err(|error| {
                        unpublished(
                            error,
                            workflow_id,
                            current.version,
                            envelope.metadata.event_id,
                        )
                    })?;
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
                        let (current, _) = self
                            .store()
                            .versions(&context.tenant, workflow_id, AsOf::Version(0))
                            .await?;
                        return Err(Error::VersionMismatch { expected, current });
                    }
                    if first_conflict.get_or_insert_with(Instant::now).elapsed() > CONTENTION_BUDGET
                    {
                        return Err(Error::Contention(workflow_id));
                    }
                    attempt += 1;
                    // Jittered backoff so losers do not collide again in lockstep.
                    let ceiling = 2u64.pow(attempt.min(6));
                    let pause = rand::rng().random_range(0..=ceiling);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(flowline_event_store::Error::DuplicateCommand(_)) => {
                    // A concurrent retry with the same key won the race.
                    let existing = self
                        .store()
                        .find_command(&context.tenant, command_id)
                        .await?
                        .ok_or(Error::Contention(workflow_id))?;
                    return self.replay(context, existing).await;
                }
                Err(flowline_event_store::Error::Database(error)) if !refused_by_server(&error) => {
                    // The connection failed mid-append: the commit may or may not have
                    // happened.
                    tracing::error!(%error, event_id = %envelope.metadata.event_id, "append outcome unknown");
                    return Err(Error::OutcomeUnknown {
                        workflow_id,
                        event_id: envelope.metadata.event_id,
                    });
                }
                Err(flowline_event_store::Error::EventTooLarge { bytes, max_bytes }) => {
                    return Err(Error::EventTooLarge { bytes, max_bytes });
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The answer to a command appended before, rebuilt from the store.
    async fn replay(
        &self,
        context: &CommandContext,
        existing: AppendedCommand,
    ) -> Result<Accepted> {
        same_request(context, &existing)?;
        // The event is committed: a failure from here on is "pending" (see `execute`).
        let pending = |error| {
            unpublished(
                error,
                existing.stream_id,
                existing.version,
                existing.event_id,
            )
        };
        let log = self
            .wait_published(existing.position)
            .await
            .map_err(pending)?;
        let state = self
            .repository
            .load_as_of(
                &context.tenant,
                existing.stream_id,
                AsOf::Version(existing.version),
            )
            .await
            .map_err(pending)?
            .workflow;
        Ok(Accepted {
            workflow_id: existing.stream_id,
            version: existing.version,
            event_id: existing.event_id,
            command_id: context.command_id,
            log,
            state: state.state,
        })
    }

    fn store(&self) -> &EventStore {
        self.repository.store()
    }

    /// Where the event at store `position` is on the log, once the relay published it.
    async fn wait_published(
        &self,
        position: i64,
    ) -> Result<LogPosition, flowline_event_store::Error> {
        let waited = self.publications.wait(position, self.publish_timeout).await;
        if let Err(error) = &waited
            && !matches!(error, flowline_event_store::Error::PublicationPending(_))
        {
            tracing::error!(%error, position, "waiting for publication failed");
        }
        waited
    }
}

/// What a committed command answers when its event is not (yet) on the log: parked for
/// good, or pending (published later).
fn unpublished(
    error: flowline_event_store::Error,
    workflow_id: Uuid,
    version: u64,
    event_id: Uuid,
) -> Error {
    match error {
        flowline_event_store::Error::PublicationParked(parked) => Error::PublicationParked(parked),
        _ => Error::PublicationPending {
            workflow_id,
            version,
            event_id,
        },
    }
}

/// Whether PostgreSQL itself answered with an error (the statement failed, nothing was
/// committed), as opposed to a connection that failed on the way, leaving the outcome
/// unknown.
fn refused_by_server(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Database(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Encode(_)
            | sqlx::Error::Configuration(_)
    )
}
