//! The `workflow_read_model` projection: `workflows`, `workflow_steps`, `workflow_events`.
//!
//! A batch is folded in memory first (per stream, in log order, against the versions
//! already projected) and then written with a handful of statements whatever its size:
//! new workflows, their steps and every event as `COPY` data, known workflows with one
//! set-based `UPDATE`. Replays and rebuilds run at bulk-load speed rather than a round
//! trip per event.
//!
//! The live instance also announces every workflow whose version advanced with
//! `pg_notify` ([`flowline_domain::change::CHANNEL`]) in the batch's transaction, so
//! listeners hear of a change only once it is committed. A rebuild's instance stays silent:
//! it replays history into shadow tables nobody reads yet.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use flowline_domain::{EventEnvelope, StepStatus, WorkflowChange, WorkflowEvent, WorkflowStatus};
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

/// A workflow row as the batch leaves it.
struct Row<'a> {
    tenant: &'a str,
    name: &'a str,
    input: &'a serde_json::Value,
    submitted_by: Option<&'a str>,
    submitted_at: DateTime<Utc>,
    steps: Option<&'a [flowline_domain::StepDefinition]>,
    version: i64,
    status: WorkflowStatus,
    cancel_reason: Option<&'a str>,
    updated_at: DateTime<Utc>,
    /// Whether the row is new in this batch (insert) or known (update).
    new: bool,
    /// Whether it was cancelled in this batch (its unfinished steps follow).
    cancelled: bool,
}

/// Everything one batch changes.
#[derive(Default)]
struct Changes<'a> {
    rows: HashMap<Uuid, Row<'a>>,
    order: Vec<Uuid>,
    events: Vec<(&'a EventEnvelope, LogPlace)>,
}

/// Folds the batch per stream in log order against the projected versions. An event at or
/// below the known version is a duplicate; one that skips a version is out of order.
async fn fold<'a>(
    transaction: &mut Transaction<'_, Postgres>,
    events: &'a [(EventEnvelope, LogPlace)],
) -> Result<Changes<'a>, ApplyError> {
    let mut ids: Vec<Uuid> = events.iter().map(|(e, _)| e.metadata.stream_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let known: HashMap<Uuid, (i64, String)> = sqlx::query_as::<_, (Uuid, i64, String)>(
        "SELECT id, version, status FROM workflows WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?
    .into_iter()
    .map(|(id, version, status)| (id, (version, status)))
    .collect();
    let mut changes = Changes::default();
    for (envelope, place) in events {
        let metadata = &envelope.metadata;
        let id = metadata.stream_id;
        let version = metadata.stream_version as i64;
        let current = changes
            .rows
            .get(&id)
            .map(|row| row.version)
            .or_else(|| known.get(&id).map(|(version, _)| *version));
        match (current, &envelope.event) {
            (Some(current), _) if version <= current => continue, // a duplicate
            (None, WorkflowEvent::Submitted(submitted)) if version == 1 => {
                changes.order.push(id);
                changes.rows.insert(
                    id,
                    Row {
                        tenant: &metadata.tenant,
                        name: &submitted.name,
                        input: &submitted.input,
                        submitted_by: submitted.submitted_by.as_deref(),
                        submitted_at: metadata.occurred_at,
                        steps: Some(&submitted.steps),
                        version,
                        status: WorkflowStatus::Pending,
                        cancel_reason: None,
                        updated_at: metadata.occurred_at,
                        new: true,
                        cancelled: false,
                    },
                );
            }
            (Some(current), event)
                if version == current + 1 && !matches!(event, WorkflowEvent::Submitted(_)) =>
            {
                let row = match changes.rows.entry(id) {
                    std::collections::hash_map::Entry::Occupied(row) => row.into_mut(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        changes.order.push(id);
                        let status = known
                            .get(&id)
                            .and_then(|(_, status)| WorkflowStatus::parse(status))
                            .unwrap_or_default();
                        slot.insert(Row {
                            tenant: &metadata.tenant,
                            name: "",
                            input: &serde_json::Value::Null,
                            submitted_by: None,
                            submitted_at: metadata.occurred_at,
                            steps: None,
                            version: current,
                            status,
                            cancel_reason: None,
                            updated_at: metadata.occurred_at,
                            new: false,
                            cancelled: false,
                        })
                    }
                };
                row.version = version;
                row.updated_at = metadata.occurred_at;
                if let WorkflowEvent::Cancelled(cancelled) = event {
                    row.status = WorkflowStatus::Cancelled;
                    row.cancel_reason = cancelled.reason.as_deref().or(row.cancel_reason);
                    row.cancelled = true;
                }
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
    Ok(changes)
}

/// The event's payload as JSON, without the type tag (stored next to its type).
fn event_data(event: &WorkflowEvent) -> serde_json::Value {
    let mut data = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = data.as_object_mut() {
        object.remove("type");
    }
    data
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
            // Rows the fold found unknown under the checkpoint lock: new by construction.
            let mut workflows = CopyRows::new();
            let mut steps = CopyRows::new();
            for (id, row) in &new {
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
                    .end_row();
                let status = if row.cancelled {
                    StepStatus::Cancelled
                } else {
                    StepStatus::Pending
                };
                for (position, step) in row.steps.unwrap_or_default().iter().enumerate() {
                    steps
                        .field(**id)
                        .field(&step.id)
                        .field(position as i32)
                        .field(step.kind.as_str())
                        .field(status.as_str())
                        .field(TextArray(&step.depends_on))
                        .field(Json(&step.config))
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
                    ],
                )
                .await?;
        }

        if !known.is_empty() {
            sqlx::query(
                "UPDATE workflows w SET version = c.version, updated_at = c.updated_at, status = c.status, \
                 cancel_reason = COALESCE(c.cancel_reason, w.cancel_reason) \
                 FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[]) \
                      AS c(id, version, updated_at, status, cancel_reason) \
                 WHERE w.id = c.id AND w.version < c.version",
            )
            .bind(known.iter().map(|(id, _)| **id).collect::<Vec<_>>())
            .bind(known.iter().map(|(_, r)| r.version).collect::<Vec<_>>())
            .bind(known.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
            .bind(known.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
            .bind(known.iter().map(|(_, r)| r.cancel_reason).collect::<Vec<_>>())
            .execute(&mut **transaction)
            .await?;
            let cancelled: Vec<Uuid> = known
                .iter()
                .filter(|(_, r)| r.cancelled)
                .map(|(id, _)| **id)
                .collect();
            if !cancelled.is_empty() {
                sqlx::query(
                    "UPDATE workflow_steps SET status = $2 WHERE workflow_id = ANY($1) AND status IN ($3, $4)",
                )
                .bind(&cancelled)
                .bind(StepStatus::Cancelled.as_str())
                .bind(StepStatus::Pending.as_str())
                .bind(StepStatus::Running.as_str())
                .execute(&mut **transaction)
                .await?;
            }
        }

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
}
