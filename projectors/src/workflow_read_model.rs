//! The `workflow_read_model` projection: `workflows`, `workflow_steps`, `workflow_events`.

use flowline_domain::{EventEnvelope, StepStatus, WorkflowEvent, WorkflowStatus};
use sqlx::{Postgres, Transaction};
use tracing::debug;

use crate::projection::{ApplyError, LogPlace, Projection};

/// Name of the projection (its checkpoints and consumer group carry it).
pub const NAME: &str = "workflow_read_model.v1";

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkflowReadModel;

impl Projection for WorkflowReadModel {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        envelope: &EventEnvelope,
        place: LogPlace,
    ) -> Result<(), ApplyError> {
        apply(transaction, envelope, place).await
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

/// Applies one event inside the batch's transaction. An event at or below the stream's
/// projected version is a duplicate and changes nothing.
async fn apply(
    transaction: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    place: LogPlace,
) -> Result<(), ApplyError> {
    let metadata = &envelope.metadata;
    let version = metadata.stream_version as i64;
    let applied = match &envelope.event {
        WorkflowEvent::Submitted(submitted) => {
            let inserted = sqlx::query(
                "INSERT INTO workflows (id, tenant, name, status, version, input, submitted_at, updated_at, submitted_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(metadata.stream_id)
            .bind(&metadata.tenant)
            .bind(&submitted.name)
            .bind(WorkflowStatus::Pending.as_str())
            .bind(version)
            .bind(&submitted.input)
            .bind(metadata.occurred_at)
            .bind(&submitted.submitted_by)
            .execute(&mut **transaction)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                let ids: Vec<&str> = submitted.steps.iter().map(|s| s.id.as_str()).collect();
                let positions: Vec<i32> = (0..submitted.steps.len() as i32).collect();
                let kinds: Vec<&str> = submitted.steps.iter().map(|s| s.kind.as_str()).collect();
                // Arrays of arrays must be rectangular, so dependencies travel as JSON.
                let depends_on: Vec<serde_json::Value> = submitted
                    .steps
                    .iter()
                    .map(|s| serde_json::json!(s.depends_on))
                    .collect();
                let configs: Vec<&serde_json::Value> =
                    submitted.steps.iter().map(|s| &s.config).collect();
                sqlx::query(
                    "INSERT INTO workflow_steps (workflow_id, step_id, position, kind, status, depends_on, config) \
                     SELECT $1, s.id, s.position, s.kind, $2, \
                            ARRAY(SELECT jsonb_array_elements_text(s.depends_on)), s.config \
                     FROM unnest($3::text[], $4::int[], $5::text[], $6::jsonb[], $7::jsonb[]) \
                          AS s(id, position, kind, depends_on, config)",
                )
                .bind(metadata.stream_id)
                .bind(StepStatus::Pending.as_str())
                .bind(&ids)
                .bind(&positions)
                .bind(&kinds)
                .bind(&depends_on)
                .bind(&configs)
                .execute(&mut **transaction)
                .await?;
            }
            inserted
        }
        WorkflowEvent::Cancelled(cancelled) => {
            let updated = advance_version(
                transaction,
                envelope,
                Some(WorkflowStatus::Cancelled),
                cancelled.reason.as_deref(),
            )
            .await?;
            if updated {
                sqlx::query(
                    "UPDATE workflow_steps SET status = $2 WHERE workflow_id = $1 AND status IN ($3, $4)",
                )
                .bind(metadata.stream_id)
                .bind(StepStatus::Cancelled.as_str())
                .bind(StepStatus::Pending.as_str())
                .bind(StepStatus::Running.as_str())
                .execute(&mut **transaction)
                .await?;
            }
            updated
        }
        WorkflowEvent::SignalReceived(_) => {
            advance_version(transaction, envelope, None, None).await?
        }
    };
    if applied {
        sqlx::query(
            "INSERT INTO workflow_events (workflow_id, version, tenant, event_id, event_type, occurred_at, \
             correlation_id, causation_id, data, log_partition, log_offset) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(metadata.stream_id)
        .bind(version)
        .bind(&metadata.tenant)
        .bind(metadata.event_id)
        .bind(envelope.event.event_type())
        .bind(metadata.occurred_at)
        .bind(metadata.correlation_id)
        .bind(metadata.causation_id)
        .bind(event_data(&envelope.event))
        .bind(place.partition)
        .bind(place.offset)
        .execute(&mut **transaction)
        .await?;
    } else {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM workflows WHERE id = $1")
                .bind(metadata.stream_id)
                .fetch_optional(&mut **transaction)
                .await?;
        if current.is_some_and(|current| current >= version) {
            debug!(stream = %metadata.stream_id, version, "duplicate event ignored");
        } else {
            return Err(ApplyError::OutOfOrder {
                stream: metadata.stream_id,
                version: metadata.stream_version,
                projected: current,
            });
        }
    }
    Ok(())
}

/// Moves the workflow to the event's version if it is exactly the next one.
async fn advance_version(
    transaction: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    status: Option<WorkflowStatus>,
    cancel_reason: Option<&str>,
) -> sqlx::Result<bool> {
    let metadata = &envelope.metadata;
    let version = metadata.stream_version as i64;
    Ok(sqlx::query(
        "UPDATE workflows SET version = $2, updated_at = $3, \
         status = COALESCE($4, status), cancel_reason = COALESCE($5, cancel_reason) \
         WHERE id = $1 AND version = $2 - 1",
    )
    .bind(metadata.stream_id)
    .bind(version)
    .bind(metadata.occurred_at)
    .bind(status.map(WorkflowStatus::as_str))
    .bind(cancel_reason)
    .execute(&mut **transaction)
    .await?
    .rows_affected()
        == 1)
}
