//! The `workflow_read_model` projection: `workflows`, `workflow_steps`,
//! `workflow_step_attempts`, `workflow_events`.
//!
//! A batch is folded in memory first (per stream, in log order, against the versions
//! already projected) and then written with a handful of statements whatever its size:
//! new workflows, their steps, new attempts and every event as `COPY` data; known
//! workflows, their changed steps and the attempts that ended with one set-based `UPDATE`
//! each. Replays and rebuilds run at bulk-load speed rather than a round trip per event.
//!
//! Run and step statuses follow the `Workflow` aggregate's `apply`
//! (`flowline_domain::workflow`), which defines them: a failed or cancelled run cancels its
//! unfinished steps (and their running attempts), a retried step puts the run back to
//! `running` and the step and every cancelled step back to `pending`, a failed or timed-out
//! attempt leaves its step `retrying` when another attempt is due and `failed` when not, a
//! resumed run is `running` again if it had started and `pending` if not. Folding a known
//! run's step events needs its steps as stored, so those are read once per batch (one
//! statement for every such run).
//!
//! The live instance also announces every workflow whose version advanced with
//! `pg_notify` ([`flowline_domain::change::CHANNEL`]) in the batch's transaction, so
//! listeners hear of a change only once it is committed. A rebuild's instance stays silent:
//! it replays history into shadow tables nobody reads yet.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flowline_domain::{
    EventEnvelope, EventMetadata, ModelCall, StepDefinition, StepError, StepStatus, UsageSummary,
    WorkflowChange, WorkflowEvent, WorkflowStatus, WorkflowSubmitted,
};
use flowline_pg_copy::{CopyRows, Json, TextArray};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::projection::{ApplyError, LogPlace, Projection};

/// Name of the projection (its checkpoints and consumer group carry it).
pub const NAME: &str = "workflow_read_model.v1";

/// The projection.
#[derive(Debug, Clone, Copy)]
pub struct WorkflowReadModel {
    announce_changes: bool,
}

impl WorkflowReadModel {
    /// The instance writing the tables readers use: it announces its changes.
    pub const fn live() -> Self {
        Self {
            announce_changes: true,
        }
    }

    /// An instance building a copy nobody reads yet (a rebuild, a benchmark): announcing
    /// would make subscribers see replayed history as new.
    pub const fn shadow() -> Self {
        Self {
            announce_changes: false,
        }
    }
}

impl Projection for WorkflowReadModel {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[(EventEnvelope, LogPlace)],
    ) -> Result<(), ApplyError> {
        let changes = fold(transaction, events).await?;
        changes.write(transaction).await?;
        if self.announce_changes {
            changes.announce(transaction).await?;
        }
        Ok(())
    }
}

/// Attempt statuses as stored in `workflow_step_attempts.status`.
mod attempt_status {
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const TIMED_OUT: &str = "timed_out";
    pub const CANCELLED: &str = "cancelled";
}

/// A workflow row as the batch leaves it.
struct Row<'a> {
    tenant: &'a str,
    name: &'a str,
    input: &'a serde_json::Value,
    submitted_by: Option<&'a str>,
    submitted_at: DateTime<Utc>,
    /// The submitted step definitions (new rows only).
    definitions: Option<&'a [StepDefinition]>,
    version: i64,
    status: WorkflowStatus,
    cancel_reason: Option<&'a str>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    failure_reason: Option<String>,
    failed_step: Option<String>,
    /// Every step, in position order: all of a new row's; a known row's when the batch has
    /// events that change steps (else empty).
    steps: Vec<Step<'a>>,
    /// Position in `steps` by step id: step events are looked up by id, once per event.
    step_index: HashMap<Cow<'a, str>, usize>,
    /// Whether the row is new in this batch (insert) or known (update).
    new: bool,
}

fn index_of<'a>(steps: &[Step<'a>]) -> HashMap<Cow<'a, str>, usize> {
    steps
        .iter()
        .enumerate()
        .map(|(position, step)| (step.id.clone(), position))
        .collect()
}

impl<'a> Row<'a> {
    /// A run as its submission makes it: pending, every step pending.
    fn submitted(metadata: &'a EventMetadata, submitted: &'a WorkflowSubmitted) -> Self {
        Self {
            tenant: &metadata.tenant,
            name: &submitted.name,
            input: &submitted.input,
            submitted_by: submitted.submitted_by.as_deref(),
            submitted_at: metadata.occurred_at,
            definitions: Some(&submitted.steps),
            version: metadata.stream_version as i64,
            status: WorkflowStatus::Pending,
            cancel_reason: None,
            updated_at: metadata.occurred_at,
            started_at: None,
            finished_at: None,
            failure_reason: None,
            failed_step: None,
            steps: submitted
                .steps
                .iter()
                .map(|step| Step::pending(&step.id))
                .collect(),
            step_index: submitted
                .steps
                .iter()
                .enumerate()
                .map(|(position, step)| (Cow::Borrowed(step.id.as_str()), position))
                .collect(),
            new: true,
        }
    }
}

/// A step as the batch leaves it.
struct Step<'a> {
    id: Cow<'a, str>,
    status: StepStatus,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<StepError>,
    next_attempt_at: Option<DateTime<Utc>>,
    skip_reason: Option<&'a str>,
    /// Whether `skip_reason` was set by this batch (a known step's stored one is kept
    /// otherwise, without reading it).
    skipped_here: bool,
    /// The output and its payload reference, when the step succeeded in this batch (a
    /// known step's stored output is kept otherwise, without reading it).
    output: Option<(&'a serde_json::Value, Option<&'a str>)>,
    /// What its attempts' model calls used and cost so far.
    usage: Option<UsageSummary>,
    /// Whether the batch changed it (known steps are only updated then).
    changed: bool,
}

impl<'a> Step<'a> {
    fn pending(id: &'a str) -> Self {
        Self {
            id: Cow::Borrowed(id),
            status: StepStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            error: None,
            next_attempt_at: None,
            skip_reason: None,
            skipped_here: false,
            output: None,
            usage: None,
            changed: false,
        }
    }
}

/// An attempt as the batch leaves it.
struct Attempt<'a> {
    workflow_id: Uuid,
    step_id: Cow<'a, str>,
    attempt: i32,
    attempt_id: Uuid,
    status: &'static str,
    input: Option<&'a serde_json::Value>,
    error: Option<StepError>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    /// What its model calls used and cost (set when it ends).
    usage: Option<UsageSummary>,
    /// Started in this batch (insert) or before it (update of how it ended).
    new: bool,
}

/// Everything one batch changes.
#[derive(Default)]
struct Changes<'a> {
    rows: HashMap<Uuid, Row<'a>>,
    order: Vec<Uuid>,
    attempts: Attempts<'a>,
    events: Vec<(&'a EventEnvelope, LogPlace)>,
}

/// The attempts the batch starts or ends, in the order it first touches them.
#[derive(Default)]
struct Attempts<'a> {
    rows: Vec<Attempt<'a>>,
    /// Index in `rows` by (workflow, step, attempt number).
    index: HashMap<(Uuid, Cow<'a, str>, i32), usize>,
}

impl<'a> Attempts<'a> {
    /// Attempt `number` of a step as the batch leaves it: the one started in this batch,
    /// or an update of one started before.
    fn get_mut(
        &mut self,
        workflow_id: Uuid,
        step_id: &Cow<'a, str>,
        number: i32,
        attempt_id: Uuid,
    ) -> &mut Attempt<'a> {
        let rows = &mut self.rows;
        let slot = *self
            .index
            .entry((workflow_id, step_id.clone(), number))
            .or_insert_with(|| {
                rows.push(Attempt {
                    workflow_id,
                    step_id: step_id.clone(),
                    attempt: number,
                    attempt_id,
                    status: attempt_status::RUNNING,
                    input: None,
                    error: None,
                    started_at: None,
                    finished_at: None,
                    duration_ms: None,
                    usage: None,
                    new: false,
                });
                rows.len() - 1
            });
        &mut self.rows[slot]
    }
}

/// A stored workflow row, as far as folding needs it.
#[derive(sqlx::FromRow)]
struct KnownRow {
    id: Uuid,
    version: i64,
    status: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    failure_reason: Option<String>,
    failed_step: Option<String>,
}

/// A stored step row, as far as folding needs it (not its output or skip reason, which
/// only the batch's own events can change).
#[derive(sqlx::FromRow)]
struct KnownStep {
    workflow_id: Uuid,
    step_id: String,
    status: String,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<serde_json::Value>,
    next_attempt_at: Option<DateTime<Utc>>,
    usage: Option<serde_json::Value>,
}

/// Whether an event changes steps, so that a known run's stored steps must be read.
fn changes_steps(event: &WorkflowEvent) -> bool {
    event.step_id().is_some()
        || matches!(
            event,
            WorkflowEvent::Failed(_) | WorkflowEvent::Cancelled(_)
        )
}

/// Folds the batch per stream in log order against the projected versions. An event at or
/// below the known version is a duplicate only if it is the event applied at that version
/// (same event id); another event there is a conflict, never silently dropped. One that
/// skips a version is out of order.
async fn fold<'a>(
    transaction: &mut Transaction<'_, Postgres>,
    events: &'a [(EventEnvelope, LogPlace)],
) -> Result<Changes<'a>, ApplyError> {
    let mut ids: Vec<Uuid> = events.iter().map(|(e, _)| e.metadata.stream_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut known: HashMap<Uuid, KnownRow> = sqlx::query_as::<_, KnownRow>(
        "SELECT id, version, status, started_at, finished_at, failure_reason, failed_step \
         FROM workflows WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    let mut known_steps = read_known_steps(transaction, events, &known).await?;

    let mut changes = Changes::default();
    let mut duplicates = Vec::new();
    for (envelope, place) in events {
        let metadata = &envelope.metadata;
        let id = metadata.stream_id;
        let version = metadata.stream_version as i64;
        let current = changes
            .rows
            .get(&id)
            .map(|row| row.version)
            .or_else(|| known.get(&id).map(|row| row.version));
        match (current, &envelope.event) {
            (Some(current), _) if version <= current => {
                duplicates.push(envelope);
                continue;
            }
            (None, WorkflowEvent::Submitted(submitted)) if version == 1 => {
                changes.order.push(id);
                changes.rows.insert(id, Row::submitted(metadata, submitted));
            }
            (Some(current), event)
                if version == current + 1 && !matches!(event, WorkflowEvent::Submitted(_)) =>
            {
                if let std::collections::hash_map::Entry::Vacant(slot) = changes.rows.entry(id) {
                    let stored = known.remove(&id).expect("a known row");
                    let steps = known_steps.remove(&id).unwrap_or_default();
                    changes.order.push(id);
                    slot.insert(Row {
                        tenant: &metadata.tenant,
                        name: "",
                        input: &serde_json::Value::Null,
                        submitted_by: None,
                        submitted_at: metadata.occurred_at,
                        definitions: None,
                        version: current,
                        status: WorkflowStatus::parse(&stored.status).unwrap_or_default(),
                        cancel_reason: None,
                        updated_at: metadata.occurred_at,
                        started_at: stored.started_at,
                        finished_at: stored.finished_at,
                        failure_reason: stored.failure_reason,
                        failed_step: stored.failed_step,
                        step_index: index_of(&steps),
                        steps,
                        new: false,
                    });
                }
                let row = changes.rows.get_mut(&id).expect("inserted above");
                row.version = version;
                row.updated_at = metadata.occurred_at;
                apply(row, id, event, metadata.occurred_at, &mut changes.attempts);
            }
            _ => {
                return Err(ApplyError::OutOfOrder {
                    stream: id,
                    version: metadata.stream_version,
                    projected: current,
                });
            }
        }
        changes.events.push((envelope, *place));
    }
    check_duplicates(transaction, &duplicates, &changes).await?;
    Ok(changes)
}

/// Fails with [`ApplyError::Conflict`] unless every event at an already applied version
/// is the event applied there: the one this batch applies, or the one stored.
async fn check_duplicates(
    transaction: &mut Transaction<'_, Postgres>,
    duplicates: &[&EventEnvelope],
    changes: &Changes<'_>,
) -> Result<(), ApplyError> {
    if duplicates.is_empty() {
        return Ok(());
    }
    let in_batch: HashMap<(Uuid, u64), Uuid> = changes
        .events
        .iter()
        .map(|(envelope, _)| {
            let metadata = &envelope.metadata;
            (
                (metadata.stream_id, metadata.stream_version),
                metadata.event_id,
            )
        })
        .collect();
    let (streams, versions): (Vec<Uuid>, Vec<i64>) = duplicates
        .iter()
        .map(|envelope| &envelope.metadata)
        .filter(|metadata| !in_batch.contains_key(&(metadata.stream_id, metadata.stream_version)))
        .map(|metadata| (metadata.stream_id, metadata.stream_version as i64))
        .unzip();
    let stored: HashMap<(Uuid, u64), Uuid> = if streams.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (Uuid, i64, Uuid)>(
            "SELECT e.workflow_id, e.version, e.event_id FROM workflow_events e \
             JOIN unnest($1::uuid[], $2::bigint[]) AS d(workflow_id, version) \
             ON e.workflow_id = d.workflow_id AND e.version = d.version",
        )
        .bind(&streams)
        .bind(&versions)
        .fetch_all(&mut **transaction)
        .await?
        .into_iter()
        .map(|(stream, version, event_id)| ((stream, version as u64), event_id))
        .collect()
    };
    for envelope in duplicates {
        let metadata = &envelope.metadata;
        let place = (metadata.stream_id, metadata.stream_version);
        let applied = in_batch.get(&place).or_else(|| stored.get(&place)).copied();
        ApplyError::unless_applied(metadata, applied)?;
    }
    Ok(())
}

/// The stored steps of the known runs whose step events (or failure, or cancellation) are
/// in the batch, in position order: one statement for all of them.
async fn read_known_steps<'a>(
    transaction: &mut Transaction<'_, Postgres>,
    events: &[(EventEnvelope, LogPlace)],
    known: &HashMap<Uuid, KnownRow>,
) -> Result<HashMap<Uuid, Vec<Step<'a>>>, ApplyError> {
    let mut wanted: Vec<Uuid> = events
        .iter()
        .filter(|(envelope, _)| {
            known
                .get(&envelope.metadata.stream_id)
                .is_some_and(|row| envelope.metadata.stream_version as i64 > row.version)
                && changes_steps(&envelope.event)
        })
        .map(|(envelope, _)| envelope.metadata.stream_id)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut steps: HashMap<Uuid, Vec<Step<'a>>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(steps);
    }
    let rows: Vec<KnownStep> = sqlx::query_as(
        "SELECT workflow_id, step_id, status, attempts, started_at, finished_at, error, \
         next_attempt_at, usage FROM workflow_steps WHERE workflow_id = ANY($1) \
         ORDER BY workflow_id, position",
    )
    .bind(&wanted)
    .fetch_all(&mut **transaction)
    .await?;
    for row in rows {
        steps.entry(row.workflow_id).or_default().push(Step {
            id: Cow::Owned(row.step_id),
            status: StepStatus::parse(&row.status).unwrap_or_default(),
            attempts: row.attempts,
            started_at: row.started_at,
            finished_at: row.finished_at,
            // Written by this projection from a `StepError`; anything else reads as none.
            error: row.error.and_then(|e| serde_json::from_value(e).ok()),
            next_attempt_at: row.next_attempt_at,
            skip_reason: None,
            skipped_here: false,
            output: None,
            // Written by this projection from a `UsageSummary`.
            usage: row.usage.and_then(|u| serde_json::from_value(u).ok()),
            changed: false,
        });
    }
    Ok(steps)
}

/// Ends an attempt: its status, error, end and (unless given) its duration when its start
/// is known here; for one started before the batch the update computes it, the same way:
/// whole milliseconds, rounded down, between the stored (microsecond) times, so that a
/// rebuild folding start and end in one batch writes what the live projection wrote.
fn end_attempt(attempt: &mut Attempt<'_>, status: &'static str, at: DateTime<Utc>) {
    attempt.status = status;
    attempt.finished_at = Some(at);
    if attempt.duration_ms.is_none()
        && let Some(started_at) = attempt.started_at
    {
        let micros = at.timestamp_micros() - started_at.timestamp_micros();
        attempt.duration_ms = Some(micros.div_euclid(1000).max(0));
    }
}

/// Applies one event (the next version of its stream) to its row, as the aggregate does.
fn apply<'a>(
    row: &mut Row<'a>,
    workflow_id: Uuid,
    event: &'a WorkflowEvent,
    at: DateTime<Utc>,
    attempts: &mut Attempts<'a>,
) {
    // Events about a step the run does not have change nothing (as in the aggregate).
    let step_position = event
        .step_id()
        .and_then(|step_id| row.step_index.get(step_id).copied());
    match event {
        WorkflowEvent::Submitted(_) | WorkflowEvent::SignalReceived(_) => {}
        WorkflowEvent::Cancelled(cancelled) => {
            row.status = WorkflowStatus::Cancelled;
            row.cancel_reason = cancelled.reason.as_deref().or(row.cancel_reason);
            row.finished_at = Some(at);
            stop_unfinished_steps(row, workflow_id, at, attempts);
        }
        WorkflowEvent::Started(started) => {
            row.status = WorkflowStatus::Running;
            row.started_at = Some(started.started_at);
        }
        WorkflowEvent::StepStarted(started) => {
            let Some(position) = step_position else {
                return;
            };
            let step = &mut row.steps[position];
            step.changed = true;
            step.status = StepStatus::Running;
            step.next_attempt_at = None;
            step.finished_at = None;
            step.attempts = step.attempts.max(started.attempt as i32);
            step.started_at.get_or_insert(started.started_at);
            let attempt = attempts.get_mut(
                workflow_id,
                &Cow::Borrowed(started.step_id.as_str()),
                started.attempt as i32,
                started.attempt_id,
            );
            attempt.new = true;
            attempt.attempt_id = started.attempt_id;
            attempt.input = Some(&started.input);
            attempt.started_at = Some(started.started_at);
        }
        WorkflowEvent::StepSucceeded(succeeded) => {
            let Some(position) = step_position else {
                return;
            };
            let step = &mut row.steps[position];
            step.changed = true;
            step.status = StepStatus::Succeeded;
            step.output = Some((&succeeded.output, succeeded.output_ref.as_deref()));
            step.next_attempt_at = None;
            step.finished_at = Some(at);
            let attempt = attempts.get_mut(
                workflow_id,
                &step.id,
                succeeded.attempt as i32,
                succeeded.attempt_id,
            );
            attempt.duration_ms = Some(succeeded.duration_ms as i64);
            end_attempt(attempt, attempt_status::SUCCEEDED, at);
            charge(step, attempt, &succeeded.calls);
        }
        WorkflowEvent::StepFailed(failed) => {
            let Some(position) = step_position else {
                return;
            };
            let step = &mut row.steps[position];
            let attempt = fail_attempt(
                step,
                workflow_id,
                (failed.attempt, failed.attempt_id),
                (attempt_status::FAILED, failed.error.clone()),
                failed.next_attempt_at,
                at,
                attempts,
            );
            charge(step, attempt, &failed.calls);
        }
        WorkflowEvent::StepTimedOut(timed_out) => {
            let Some(position) = step_position else {
                return;
            };
            fail_attempt(
                &mut row.steps[position],
                workflow_id,
                (timed_out.attempt, timed_out.attempt_id),
                (attempt_status::TIMED_OUT, StepError::timed_out()),
                timed_out.next_attempt_at,
                at,
                attempts,
            );
        }
        WorkflowEvent::StepSkipped(skipped) => {
            let Some(position) = step_position else {
                return;
            };
            let step = &mut row.steps[position];
            step.changed = true;
            step.status = StepStatus::Skipped;
            step.next_attempt_at = None;
            step.skip_reason = Some(&skipped.reason);
            step.skipped_here = true;
            step.finished_at = Some(at);
        }
        WorkflowEvent::StepRetried(retried) => {
            row.status = WorkflowStatus::Running;
            row.failure_reason = None;
            row.failed_step = None;
            row.finished_at = None;
            for step in &mut row.steps {
                // The retried step and whatever the run's failure stopped go again.
                if step.id == retried.step_id || step.status == StepStatus::Cancelled {
                    step.changed = true;
                    step.status = StepStatus::Pending;
                    step.next_attempt_at = None;
                    step.finished_at = None;
                }
            }
        }
        WorkflowEvent::Succeeded(_) => {
            row.status = WorkflowStatus::Succeeded;
            row.finished_at = Some(at);
        }
        WorkflowEvent::Failed(failed) => {
            row.status = WorkflowStatus::Failed;
            row.failure_reason = Some(failed.reason.clone());
            row.failed_step = failed.step_id.clone();
            row.finished_at = Some(at);
            stop_unfinished_steps(row, workflow_id, at, attempts);
        }
        WorkflowEvent::Paused(_) => row.status = WorkflowStatus::Paused,
        WorkflowEvent::Resumed(_) => {
            row.status = if row.started_at.is_some() {
                WorkflowStatus::Running
            } else {
                WorkflowStatus::Pending
            };
        }
    }
}

/// A failed or timed-out attempt: the step retries when another attempt is due, else it
/// failed for good.
fn fail_attempt<'a, 'b>(
    step: &mut Step<'a>,
    workflow_id: Uuid,
    (number, attempt_id): (u32, Uuid),
    (status, error): (&'static str, StepError),
    next_attempt_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    attempts: &'b mut Attempts<'a>,
) -> &'b mut Attempt<'a> {
    step.changed = true;
    step.next_attempt_at = next_attempt_at;
    if next_attempt_at.is_some() {
        step.status = StepStatus::Retrying;
        step.finished_at = None;
    } else {
        step.status = StepStatus::Failed;
        step.finished_at = Some(at);
    }
    let attempt = attempts.get_mut(workflow_id, &step.id, number as i32, attempt_id);
    attempt.error = Some(error.clone());
    end_attempt(attempt, status, at);
    step.error = Some(error);
    attempt
}

/// Records what an attempt's model calls used and cost, on it and on its step.
fn charge(step: &mut Step<'_>, attempt: &mut Attempt<'_>, calls: &[ModelCall]) {
    if let Some(usage) = UsageSummary::of(calls) {
        step.usage.get_or_insert_default().add(&usage);
        attempt.usage = Some(usage);
    }
}

/// Cancels every unfinished step and stops its running attempt (the last one: attempts
/// are numbered from 1 and a step runs one at a time).
fn stop_unfinished_steps<'a>(
    row: &mut Row<'a>,
    workflow_id: Uuid,
    at: DateTime<Utc>,
    attempts: &mut Attempts<'a>,
) {
    for step in &mut row.steps {
        if step.status.is_finished() {
            continue;
        }
        if step.status == StepStatus::Running && step.attempts > 0 {
            let attempt = attempts.get_mut(workflow_id, &step.id, step.attempts, Uuid::nil());
            end_attempt(attempt, attempt_status::CANCELLED, at);
        }
        step.changed = true;
        step.status = StepStatus::Cancelled;
        step.next_attempt_at = None;
        step.finished_at = Some(at);
    }
}

/// The event's payload as JSON, without the type tag (stored next to its type).
fn event_data(event: &WorkflowEvent) -> serde_json::Value {
    let mut data = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = data.as_object_mut() {
        object.remove("type");
    }
    data
}

/// A step error as stored (`{kind, message}`).
fn error_json(error: &StepError) -> serde_json::Value {
    serde_json::to_value(error).expect("a step error serializes")
}

impl Changes<'_> {
    /// Queues one notification per changed workflow, naming its last event of the batch.
    /// PostgreSQL delivers them only if the transaction commits (and drops those of a
    /// rolled-back savepoint), in the order queued. Payloads stay far below NOTIFY's
    /// 8000-byte limit: a tenant is at most 64 characters.
    async fn announce(&self, transaction: &mut Transaction<'_, Postgres>) -> sqlx::Result<()> {
        let mut last: HashMap<Uuid, (&EventEnvelope, LogPlace)> = HashMap::new();
        for (envelope, place) in &self.events {
            last.insert(envelope.metadata.stream_id, (envelope, *place));
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut changes: Vec<WorkflowChange> = last
            .into_iter()
            .map(|(workflow_id, (envelope, place))| WorkflowChange {
                tenant: envelope.metadata.tenant.clone(),
                workflow_id,
                version: envelope.metadata.stream_version as i64,
                log_partition: place.partition,
                log_offset: place.offset,
            })
            .collect();
        changes.sort_by_key(|change| (change.log_partition, change.log_offset));
        let payloads: Vec<String> = changes
            .iter()
            .map(|change| serde_json::to_string(change).expect("serializable"))
            .collect();
        sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(flowline_domain::change::CHANNEL)
            .bind(&payloads)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn write(&self, transaction: &mut Transaction<'_, Postgres>) -> sqlx::Result<()> {
        let rows: Vec<(&Uuid, &Row<'_>)> =
            self.order.iter().map(|id| (id, &self.rows[id])).collect();
        let (new, known): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, row)| row.new);
        if !new.is_empty() {
            write_new_rows(transaction, &new).await?;
        }
        if !known.is_empty() {
            update_known_rows(transaction, &known).await?;
        }
        self.write_attempts(transaction).await?;

        // Only events past the projected version reach here, so each row is new.
        let mut events = CopyRows::new();
        for (envelope, place) in &self.events {
            let metadata = &envelope.metadata;
            events
                .field(metadata.stream_id)
                .field(metadata.stream_version as i64)
                .field(metadata.tenant.as_str())
                .field(metadata.event_id)
                .field(envelope.event.event_type())
                .field(metadata.occurred_at)
                .field(metadata.correlation_id)
                .field(metadata.causation_id)
                .field(Json(&event_data(&envelope.event)))
                .field(place.partition)
                .field(place.offset)
                .end_row();
        }
        events
            .copy_into(
                transaction,
                "workflow_events",
                &[
                    "workflow_id",
                    "version",
                    "tenant",
                    "event_id",
                    "event_type",
                    "occurred_at",
                    "correlation_id",
                    "causation_id",
                    "data",
                    "log_partition",
                    "log_offset",
                ],
            )
            .await?;
        Ok(())
    }

    /// Attempts started in this batch are new rows (their step's `StepStarted` is applied
    /// once, under the checkpoint lock): COPY. Attempts started before it only end here.
    async fn write_attempts(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
    ) -> sqlx::Result<()> {
        let (new, ended): (Vec<&Attempt<'_>>, Vec<&Attempt<'_>>) =
            self.attempts.rows.iter().partition(|attempt| attempt.new);
        if !new.is_empty() {
            let mut rows = CopyRows::new();
            for attempt in &new {
                let error = attempt.error.as_ref().map(error_json);
                let usage = usage_json(&attempt.usage);
                rows.field(attempt.workflow_id)
                    .field(attempt.step_id.as_ref())
                    .field(attempt.attempt)
                    .field(attempt.attempt_id)
                    .field(attempt.status)
                    .field(Json(attempt.input.unwrap_or(&serde_json::Value::Null)))
                    .field(error.as_ref().map(Json))
                    .field(attempt.started_at)
                    .field(attempt.finished_at)
                    .field(attempt.duration_ms)
                    .field(usage.as_ref().map(Json))
                    .end_row();
            }
            rows.copy_into(
                transaction,
                "workflow_step_attempts",
                &[
                    "workflow_id",
                    "step_id",
                    "attempt",
                    "attempt_id",
                    "status",
                    "input",
                    "error",
                    "started_at",
                    "finished_at",
                    "duration_ms",
                    "usage",
                ],
            )
            .await?;
        }
        if !ended.is_empty() {
            // The duration of an attempt that did not report one is its run time.
            sqlx::query(
                "UPDATE workflow_step_attempts a SET status = c.status, \
                 error = COALESCE(c.error::jsonb, a.error), finished_at = c.finished_at, \
                 duration_ms = COALESCE(c.duration_ms, GREATEST(0, \
                     floor(extract(epoch FROM c.finished_at - a.started_at) * 1000)::bigint)), \
                 usage = COALESCE(c.usage::jsonb, a.usage) \
                 FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], \
                             $6::timestamptz[], $7::bigint[], $8::text[]) \
                      AS c(workflow_id, step_id, attempt, status, error, finished_at, duration_ms, \
                           usage) \
                 WHERE a.workflow_id = c.workflow_id AND a.step_id = c.step_id \
                   AND a.attempt = c.attempt",
            )
            .bind(ended.iter().map(|a| a.workflow_id).collect::<Vec<_>>())
            .bind(ended.iter().map(|a| a.step_id.as_ref()).collect::<Vec<_>>())
            .bind(ended.iter().map(|a| a.attempt).collect::<Vec<_>>())
            .bind(ended.iter().map(|a| a.status).collect::<Vec<_>>())
            .bind(
                ended
                    .iter()
                    .map(|a| a.error.as_ref().map(|e| error_json(e).to_string()))
                    .collect::<Vec<_>>(),
            )
            .bind(ended.iter().map(|a| a.finished_at).collect::<Vec<_>>())
            .bind(ended.iter().map(|a| a.duration_ms).collect::<Vec<_>>())
            .bind(
                ended
                    .iter()
                    .map(|a| usage_text(&a.usage))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **transaction)
            .await?;
        }
        Ok(())
    }
}

/// Rows the fold found unknown under the checkpoint lock: new by construction, with their
/// steps as the batch leaves them.
async fn write_new_rows(
    transaction: &mut Transaction<'_, Postgres>,
    new: &[(&Uuid, &Row<'_>)],
) -> sqlx::Result<()> {
    let mut workflows = CopyRows::new();
    let mut steps = CopyRows::new();
    for (id, row) in new {
        workflows
            .field(**id)
            .field(row.tenant)
            .field(row.name)
            .field(row.status.as_str())
            .field(row.version)
            .field(Json(row.input))
            .field(row.cancel_reason)
            .field(row.submitted_by)
            .field(row.submitted_at)
            .field(row.updated_at)
            .field(row.started_at)
            .field(row.finished_at)
            .field(row.failure_reason.as_ref())
            .field(row.failed_step.as_ref())
            .end_row();
        let definitions = row.definitions.unwrap_or_default();
        for (position, (definition, step)) in definitions.iter().zip(&row.steps).enumerate() {
            let error = step.error.as_ref().map(error_json);
            let usage = usage_json(&step.usage);
            steps
                .field(**id)
                .field(&definition.id)
                .field(position as i32)
                .field(definition.kind.as_str())
                .field(step.status.as_str())
                .field(TextArray(&definition.depends_on))
                .field(Json(&definition.config))
                .field(step.attempts)
                .field(step.started_at)
                .field(step.finished_at)
                .field(step.output.map(|(output, _)| Json(output)))
                .field(step.output.and_then(|(_, output_ref)| output_ref))
                .field(error.as_ref().map(Json))
                .field(step.next_attempt_at)
                .field(step.skip_reason)
                .field(usage.as_ref().map(Json))
                .end_row();
        }
    }
    workflows
        .copy_into(
            transaction,
            "workflows",
            &[
                "id",
                "tenant",
                "name",
                "status",
                "version",
                "input",
                "cancel_reason",
                "submitted_by",
                "submitted_at",
                "updated_at",
                "started_at",
                "finished_at",
                "failure_reason",
                "failed_step",
            ],
        )
        .await?;
    steps
        .copy_into(
            transaction,
            "workflow_steps",
            &[
                "workflow_id",
                "step_id",
                "position",
                "kind",
                "status",
                "depends_on",
                "config",
                "attempts",
                "started_at",
                "finished_at",
                "output",
                "output_ref",
                "error",
                "next_attempt_at",
                "skip_reason",
                "usage",
            ],
        )
        .await?;
    Ok(())
}

/// Runs projected before the batch: one UPDATE for the runs, one for their changed steps.
async fn update_known_rows(
    transaction: &mut Transaction<'_, Postgres>,
    known: &[(&Uuid, &Row<'_>)],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE workflows w SET version = c.version, updated_at = c.updated_at, status = c.status, \
         cancel_reason = COALESCE(c.cancel_reason, w.cancel_reason), started_at = c.started_at, \
         finished_at = c.finished_at, failure_reason = c.failure_reason, \
         failed_step = c.failed_step \
         FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], \
                     $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[]) \
              AS c(id, version, updated_at, status, cancel_reason, started_at, finished_at, \
                   failure_reason, failed_step) \
         WHERE w.id = c.id AND w.version < c.version",
    )
    .bind(known.iter().map(|(id, _)| **id).collect::<Vec<_>>())
    .bind(known.iter().map(|(_, r)| r.version).collect::<Vec<_>>())
    .bind(known.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
    .bind(
        known
            .iter()
            .map(|(_, r)| r.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        known
            .iter()
            .map(|(_, r)| r.cancel_reason)
            .collect::<Vec<_>>(),
    )
    .bind(known.iter().map(|(_, r)| r.started_at).collect::<Vec<_>>())
    .bind(known.iter().map(|(_, r)| r.finished_at).collect::<Vec<_>>())
    .bind(
        known
            .iter()
            .map(|(_, r)| r.failure_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        known
            .iter()
            .map(|(_, r)| r.failed_step.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await?;

    let steps: Vec<(Uuid, &Step<'_>)> = known
        .iter()
        .flat_map(|(id, row)| {
            row.steps
                .iter()
                .filter(|step| step.changed)
                .map(move |step| (**id, step))
        })
        .collect();
    if steps.is_empty() {
        return Ok(());
    }
    // Output and skip reason are only ever set (never cleared), so a step the batch did
    // not give one keeps what it has; JSON travels as text, cast per element.
    sqlx::query(
        "UPDATE workflow_steps s SET status = c.status, attempts = c.attempts, \
         started_at = c.started_at, finished_at = c.finished_at, error = c.error::jsonb, \
         next_attempt_at = c.next_attempt_at, \
         skip_reason = CASE WHEN c.skipped THEN c.skip_reason ELSE s.skip_reason END, \
         output = CASE WHEN c.succeeded THEN c.output::jsonb ELSE s.output END, \
         output_ref = CASE WHEN c.succeeded THEN c.output_ref ELSE s.output_ref END, \
         usage = c.usage::jsonb \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], \
                     $6::timestamptz[], $7::text[], $8::timestamptz[], $9::bool[], $10::text[], \
                     $11::bool[], $12::text[], $13::text[], $14::text[]) \
              AS c(workflow_id, step_id, status, attempts, started_at, finished_at, error, \
                   next_attempt_at, skipped, skip_reason, succeeded, output, output_ref, usage) \
         WHERE s.workflow_id = c.workflow_id AND s.step_id = c.step_id",
    )
    .bind(steps.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.id.as_ref()).collect::<Vec<_>>())
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(steps.iter().map(|(_, s)| s.attempts).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.started_at).collect::<Vec<_>>())
    .bind(steps.iter().map(|(_, s)| s.finished_at).collect::<Vec<_>>())
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.error.as_ref().map(|e| error_json(e).to_string()))
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.next_attempt_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.skipped_here)
            .collect::<Vec<_>>(),
    )
    .bind(steps.iter().map(|(_, s)| s.skip_reason).collect::<Vec<_>>())
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.output.is_some())
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.output.map(|(output, _)| output.to_string()))
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|(_, s)| s.output.and_then(|(_, output_ref)| output_ref))
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|(_, s)| usage_text(&s.usage))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// A usage as stored.
fn usage_json(usage: &Option<UsageSummary>) -> Option<serde_json::Value> {
    usage
        .as_ref()
        .map(|u| serde_json::to_value(u).expect("usage serialises"))
}

/// A usage as the JSON text an `unnest` of text casts per element.
fn usage_text(usage: &Option<UsageSummary>) -> Option<String> {
    usage_json(usage).map(|json| json.to_string())
}

#[cfg(test)]
mod tests {
    //! The fold gives what the aggregate's `apply` gives, for every event of a run's life.

    use chrono::TimeZone;
    use flowline_domain::{
        StepFailed, StepRetried, StepSkipped, StepStarted, StepSucceeded, StepTimedOut, Versioned,
        Workflow, WorkflowCancelled, WorkflowFailed, WorkflowPaused, WorkflowResumed,
        WorkflowStarted, WorkflowSucceeded,
    };
    use serde_json::json;

    use super::*;

    const RUN: Uuid = Uuid::from_u128(7);

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, second).unwrap()
    }

    fn metadata(version: u64) -> EventMetadata {
        EventMetadata {
            event_id: Uuid::from_u128(version.into()),
            tenant: "acme".into(),
            stream_id: RUN,
            stream_version: version,
            occurred_at: at(version as u32),
            command_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
            traceparent: None,
            tracestate: None,
        }
    }

    fn submitted(steps: &[(&str, &[&str])]) -> WorkflowEvent {
        WorkflowEvent::Submitted(WorkflowSubmitted {
            name: "life".into(),
            input: json!({}),
            steps: steps
                .iter()
                .map(|(id, depends_on)| StepDefinition {
                    id: (*id).into(),
                    kind: flowline_domain::StepKind::Http,
                    depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
                    config: json!({}),
                })
                .collect(),
            submitted_by: None,
            timeout_ms: None,
        })
    }

    fn attempt_id(step: &str, attempt: u32) -> Uuid {
        Uuid::from_u128((u128::from(step.as_bytes()[0]) << 32) + u128::from(attempt))
    }

    fn start_run() -> WorkflowEvent {
        WorkflowEvent::Started(WorkflowStarted {
            started_at: at(1),
            deadline: None,
        })
    }

    fn start(step: &str, attempt: u32) -> WorkflowEvent {
        WorkflowEvent::StepStarted(StepStarted {
            step_id: step.into(),
            attempt,
            attempt_id: attempt_id(step, attempt),
            input: json!({"attempt": attempt}),
            started_at: at(attempt),
            deadline: None,
        })
    }

    fn fail(step: &str, attempt: u32, retry: bool) -> WorkflowEvent {
        WorkflowEvent::StepFailed(StepFailed {
            step_id: step.into(),
            attempt,
            attempt_id: attempt_id(step, attempt),
            error: StepError {
                kind: "http_status".into(),
                message: format!("503 on attempt {attempt}"),
            },
            retryable: retry,
            next_attempt_at: retry.then(|| at(50)),
            calls: calls(attempt),
        })
    }

    /// The model calls an attempt records: one, then two, then three calls (none for an
    /// attempt the domain never started, whose calls the aggregate has nowhere to keep).
    fn calls(attempt: u32) -> Vec<flowline_domain::ModelCall> {
        let count = if attempt <= 3 { attempt } else { 0 };
        (0..count)
            .map(|call| flowline_domain::ModelCall {
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                called_at: at(attempt),
                usage: flowline_domain::TokenUsage {
                    input_tokens: u64::from(attempt * 100 + call),
                    output_tokens: 5,
                    cache_read_tokens: 2,
                    cache_write_tokens: 1,
                    reasoning_tokens: 3,
                },
                cost_usd: (call != 1).then(|| rust_decimal::Decimal::new(i64::from(attempt), 7)),
                price_ref: None,
                complete: true,
            })
            .collect()
    }

    fn time_out(step: &str, attempt: u32, retry: bool) -> WorkflowEvent {
        WorkflowEvent::StepTimedOut(StepTimedOut {
            step_id: step.into(),
            attempt,
            attempt_id: attempt_id(step, attempt),
            next_attempt_at: retry.then(|| at(55)),
        })
    }

    fn succeed(step: &str, attempt: u32, output_ref: Option<&str>) -> WorkflowEvent {
        WorkflowEvent::StepSucceeded(StepSucceeded {
            step_id: step.into(),
            attempt,
            attempt_id: attempt_id(step, attempt),
            output: if output_ref.is_some() {
                serde_json::Value::Null
            } else {
                json!({"from": step})
            },
            output_ref: output_ref.map(Into::into),
            duration_ms: 12,
            calls: calls(attempt),
        })
    }

    /// Folds the run's events as one batch (the first is its submission) and checks the
    /// result against the aggregate's state after the same events.
    fn fold_agrees_with_the_aggregate(events: &[WorkflowEvent]) {
        let envelopes: Vec<EventEnvelope> = events
            .iter()
            .enumerate()
            .map(|(i, event)| EventEnvelope {
                metadata: metadata(i as u64 + 1),
                event: event.clone(),
            })
            .collect();
        let WorkflowEvent::Submitted(first) = &envelopes[0].event else {
            panic!("a run starts with its submission")
        };
        let mut row = Row::submitted(&envelopes[0].metadata, first);
        let mut attempts = Attempts::default();
        for envelope in &envelopes[1..] {
            row.version = envelope.metadata.stream_version as i64;
            apply(
                &mut row,
                RUN,
                &envelope.event,
                envelope.metadata.occurred_at,
                &mut attempts,
            );
        }
        let state = Versioned::<Workflow>::replay(events).state;

        assert_eq!(row.status, state.status, "run status after {events:?}");
        assert_eq!(row.started_at, state.started_at);
        assert_eq!(
            row.failure_reason.as_deref(),
            state.failure.as_ref().map(|f| f.reason.as_str())
        );
        assert_eq!(
            row.failed_step.as_deref(),
            state.failure.as_ref().and_then(|f| f.step_id.as_deref())
        );
        assert_eq!(row.finished_at.is_some(), state.status.is_terminal());
        for (step, expected) in row.steps.iter().zip(&state.steps) {
            let which = &expected.id;
            assert_eq!(step.id, expected.id.as_str());
            assert_eq!(step.status, expected.status, "status of {which}");
            assert_eq!(step.attempts as usize, expected.attempts.len(), "{which}");
            assert_eq!(step.error, expected.error, "error of {which}");
            assert_eq!(step.next_attempt_at, expected.next_attempt_at, "{which}");
            assert_eq!(step.skip_reason, expected.skip_reason.as_deref(), "{which}");
            assert_eq!(step.usage, expected.usage(), "usage of {which}");
            assert_eq!(step.output.map(|(o, _)| o), expected.output.as_ref());
            assert_eq!(
                step.output.and_then(|(_, r)| r),
                expected.output_ref.as_deref()
            );
            assert_eq!(
                step.started_at,
                expected.attempts.first().map(|a| a.started_at),
                "{which}"
            );
            assert_eq!(
                step.finished_at.is_some(),
                expected.status.is_finished(),
                "finished_at of {which}"
            );
            for attempt in &expected.attempts {
                let folded = &attempts.rows
                    [attempts.index[&(RUN, Cow::from(expected.id.clone()), attempt.number as i32)]];
                let (status, error) = (attempt.outcome.as_str(), attempt.outcome.error());
                assert_eq!(
                    folded.status, status,
                    "attempt {} of {which}",
                    attempt.number
                );
                assert_eq!(folded.attempt_id, attempt.attempt_id);
                assert_eq!(folded.started_at, Some(attempt.started_at));
                assert_eq!(folded.error, error);
                assert_eq!(
                    folded.usage, attempt.usage,
                    "usage of attempt {}",
                    attempt.number
                );
                assert_eq!(
                    folded.finished_at.is_some(),
                    status != attempt_status::RUNNING
                );
                assert!(folded.new, "every attempt started in this batch");
            }
        }
    }

    /// Every prefix of `events`, so each intermediate state is checked too.
    fn every_prefix_agrees(events: &[WorkflowEvent]) {
        for end in 1..=events.len() {
            fold_agrees_with_the_aggregate(&events[..end]);
        }
    }

    #[test]
    fn a_run_that_retries_and_succeeds() {
        every_prefix_agrees(&[
            submitted(&[("fetch", &[]), ("summarize", &["fetch"])]),
            start_run(),
            start("fetch", 1),
            fail("fetch", 1, true),
            start("fetch", 2),
            time_out("fetch", 2, true),
            start("fetch", 3),
            succeed("fetch", 3, None),
            start("summarize", 1),
            succeed("summarize", 1, Some("sha256:ab")),
            WorkflowEvent::Succeeded(WorkflowSucceeded {}),
        ]);
    }

    #[test]
    fn a_run_that_fails_is_retried_and_paused() {
        every_prefix_agrees(&[
            submitted(&[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &[])]),
            start_run(),
            start("a", 1),
            start("c", 1),
            start("d", 1),
            fail("d", 1, true),
            time_out("a", 1, false),
            WorkflowEvent::StepSkipped(StepSkipped {
                step_id: "b".into(),
                reason: "a failed".into(),
            }),
            WorkflowEvent::Failed(WorkflowFailed {
                reason: "a failed".into(),
                step_id: Some("a".into()),
            }),
            WorkflowEvent::StepRetried(StepRetried {
                step_id: "a".into(),
            }),
            start("a", 2),
            WorkflowEvent::Paused(WorkflowPaused { reason: None }),
            succeed("a", 2, None),
            WorkflowEvent::Resumed(WorkflowResumed {}),
            fail("c", 1, false),
            WorkflowEvent::Failed(WorkflowFailed {
                reason: "the run timed out".into(),
                step_id: None,
            }),
        ]);
    }

    #[test]
    fn a_run_paused_before_it_started_and_cancelled() {
        every_prefix_agrees(&[
            submitted(&[("a", &[]), ("b", &[])]),
            WorkflowEvent::Paused(WorkflowPaused { reason: None }),
            WorkflowEvent::Resumed(WorkflowResumed {}),
            start_run(),
            start("a", 1),
            // An end without a start (the domain never decides one) moves the step alike.
            fail("b", 9, false),
            start("b", 1),
            fail("b", 1, true),
            WorkflowEvent::Cancelled(WorkflowCancelled {
                reason: Some("enough".into()),
            }),
        ]);
    }

    #[test]
    fn step_events_about_unknown_steps_change_nothing() {
        every_prefix_agrees(&[
            submitted(&[("a", &[])]),
            start_run(),
            start("ghost", 1),
            succeed("ghost", 1, None),
        ]);
    }
}
