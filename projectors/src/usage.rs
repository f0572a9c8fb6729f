//! The `usage` projection: one row per model call recorded on a step's `StepSucceeded` or
//! `StepFailed` event, with its normalised tokens and the exact cost computed when the call
//! was made. Nothing is re-priced: a rebuild reads the same costs back from the events.
//!
//! Rows are keyed by the event's place in its stream and the call's index on the event, so
//! a re-delivered event inserts nothing; a different event claiming a place already
//! projected is a [`ApplyError::Conflict`].

use flowline_domain::{EventEnvelope, ModelCall, WorkflowEvent};
use sqlx::{Postgres, Transaction};

use crate::projection::{ApplyError, LogPlace, Projection};

/// Name of the projection.
pub const NAME: &str = "usage.v1";

/// The tables it owns (what a rebuild shadows and swaps).
pub const TABLES: &[&str] = &["usage_calls"];

/// The usage projection (writes unqualified table names: a rebuild's search path points
/// them at its shadow schema).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage;

/// The model calls an event records, with the step and attempt they belong to.
fn calls_of(event: &WorkflowEvent) -> Option<(&str, u32, &[ModelCall])> {
    match event {
        WorkflowEvent::StepSucceeded(succeeded) => Some((
            succeeded.step_id.as_str(),
            succeeded.attempt,
            succeeded.calls.as_slice(),
        )),
        WorkflowEvent::StepFailed(failed) => Some((
            failed.step_id.as_str(),
            failed.attempt,
            failed.calls.as_slice(),
        )),
        _ => None,
    }
}

impl Projection for Usage {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply_all(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
        events: &[(EventEnvelope, LogPlace)],
    ) -> Result<(), ApplyError> {
        for (envelope, _) in events {
            let Some((step_id, attempt, calls)) = calls_of(&envelope.event) else {
                continue;
            };
            let metadata = &envelope.metadata;
            for (index, call) in calls.iter().enumerate() {
                let usage = &call.usage;
                // The cost travels as text and is cast by PostgreSQL: exact, no float.
                let inserted = sqlx::query(
                    "INSERT INTO usage_calls (workflow_id, stream_version, call_index, event_id, \
                     tenant, step_id, attempt, provider, model, called_at, day, input_tokens, \
                     output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, \
                     cost_usd, price_ref, complete) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, ($10 AT TIME ZONE 'UTC')::date, \
                     $11, $12, $13, $14, $15, $16::numeric, $17, $18) \
                     ON CONFLICT (workflow_id, stream_version, call_index) DO NOTHING",
                )
                .bind(metadata.stream_id)
                .bind(metadata.stream_version as i64)
                .bind(index as i32)
                .bind(metadata.event_id)
                .bind(&metadata.tenant)
                .bind(step_id)
                .bind(attempt as i32)
                .bind(&call.provider)
                .bind(&call.model)
                .bind(call.called_at)
                .bind(usage.input_tokens as i64)
                .bind(usage.output_tokens as i64)
                .bind(usage.cache_read_tokens as i64)
                .bind(usage.cache_write_tokens as i64)
                .bind(usage.reasoning_tokens as i64)
                .bind(call.cost_usd.map(|cost| cost.to_string()))
                .bind(call.price_ref.as_deref())
                .bind(call.complete)
                .execute(&mut **transaction)
                .await?;
                if inserted.rows_affected() == 0 {
                    let applied: Option<uuid::Uuid> = sqlx::query_scalar(
                        "SELECT event_id FROM usage_calls \
                         WHERE workflow_id = $1 AND stream_version = $2 AND call_index = $3",
                    )
                    .bind(metadata.stream_id)
                    .bind(metadata.stream_version as i64)
                    .bind(index as i32)
                    .fetch_optional(&mut **transaction)
                    .await?;
                    ApplyError::unless_applied(metadata, applied)?;
                }
            }
        }
        Ok(())
    }
}
