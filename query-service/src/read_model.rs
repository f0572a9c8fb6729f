//! Queries on the read model tables, shared by REST and GraphQL.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// Most items one page may hold.
pub const MAX_PAGE: i64 = 100;
/// Items per page when the caller does not say.
pub const DEFAULT_PAGE: i64 = 20;
/// The statuses a workflow can have.
pub const STATUSES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];

/// A step as readers see it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    /// Unique within the workflow.
    pub id: String,
    /// `llm`, `mcp_tool`, `template` or `http`.
    pub kind: String,
    /// Lifecycle status.
    pub status: String,
    /// Steps that must finish first.
    pub depends_on: Vec<String>,
    /// Kind-specific settings.
    pub config: async_graphql::Json<serde_json::Value>,
}

/// A workflow run as readers see it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowView {
    /// The run's id.
    pub id: Uuid,
    /// Tenant owning it.
    pub tenant: String,
    /// Human-readable name.
    pub name: String,
    /// Lifecycle status.
    pub status: String,
    /// Version of the stream this view reflects.
    pub version: i64,
    /// The run's input.
    pub input: async_graphql::Json<serde_json::Value>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// Who submitted it, when known.
    pub submitted_by: Option<String>,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// Steps in submission order.
    pub steps: Vec<StepView>,
}

/// One event of a stream.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Event")]
pub struct EventView {
    /// Position in the stream.
    pub version: i64,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Uuid,
    /// The event's payload.
    pub data: async_graphql::Json<serde_json::Value>,
}

/// A page of workflows, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowPage {
    /// The page's items.
    pub items: Vec<WorkflowView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What a list is ordered by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortField {
    /// Submission time (ids are UUIDv7, so this is also id order).
    #[default]
    SubmittedAt,
    /// Time of the last event.
    UpdatedAt,
    /// Name, then id.
    Name,
}

/// Order of a list: a field and a direction (newest / last first by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    /// The field.
    pub field: SortField,
    /// Descending when true.
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Self {
            field: SortField::SubmittedAt,
            descending: true,
        }
    }
}

/// Filters of a list query. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only runs whose name contains this text (case-insensitive).
    pub name: Option<String>,
    /// Only runs submitted at or after this time.
    pub submitted_after: Option<DateTime<Utc>>,
    /// Only runs submitted before this time.
    pub submitted_before: Option<DateTime<Utc>>,
    /// Only runs with a step calling this MCP tool.
    pub tool: Option<String>,
    /// Only runs with a step using this model.
    pub model: Option<String>,
    /// Order of the items.
    pub sort: Sort,
    /// Page size (validated).
    pub limit: Option<i64>,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: Uuid,
    tenant: String,
    name: String,
    status: String,
    version: i64,
    input: serde_json::Value,
    cancel_reason: Option<String>,
    submitted_by: Option<String>,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    workflow_id: Uuid,
    step_id: String,
    kind: String,
    status: String,
    depends_on: Vec<String>,
    config: serde_json::Value,
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<Uuid> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or(Error::InvalidParameter {
            parameter: "cursor",
            message: "not a cursor returned by this API".into(),
        })
}

/// Read access to the workflow read model.
#[derive(Debug, Clone)]
pub struct ReadModel {
    pool: PgPool,
}

impl ReadModel {
    /// Reads from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// One workflow with its steps.
    pub async fn workflow(&self, tenant: &str, id: Uuid) -> Result<Option<WorkflowView>> {
        let row: Option<WorkflowRow> =
            sqlx::query_as("SELECT * FROM workflows WHERE tenant = $1 AND id = $2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(self.with_steps(vec![row]).await?.pop())
    }

    /// A page of workflows, newest first. Two queries whatever the page size.
    pub async fn list(&self, tenant: &str, filter: &ListFilter) -> Result<WorkflowPage> {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::InvalidParameter {
                parameter: "limit",
                message: format!("must be between 1 and {MAX_PAGE}"),
            });
        }
        if let Some(status) = &filter.status
            && !STATUSES.contains(&status.as_str())
        {
            return Err(Error::InvalidParameter {
                parameter: "status",
                message: format!(
                    "unknown status '{status}'; expected one of {}",
                    STATUSES.join(", ")
                ),
            });
        }
        let after = filter.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut rows: Vec<WorkflowRow> = sqlx::query_as(
            "SELECT * FROM workflows WHERE tenant = $1 \
             AND ($2::text IS NULL OR status = $2) \
             AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(tenant)
        .bind(&filter.status)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = has_more.then(|| encode_cursor(rows[rows.len() - 1].id));
        Ok(WorkflowPage {
            items: self.with_steps(rows).await?,
            next_cursor,
        })
    }

    async fn with_steps(&self, rows: Vec<WorkflowRow>) -> Result<Vec<WorkflowView>> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let steps: Vec<StepRow> = sqlx::query_as(
            "SELECT workflow_id, step_id, kind, status, depends_on, config FROM workflow_steps \
             WHERE workflow_id = ANY($1) ORDER BY workflow_id, position",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_workflow: HashMap<Uuid, Vec<StepView>> = HashMap::new();
        for step in steps {
            by_workflow
                .entry(step.workflow_id)
                .or_default()
                .push(StepView {
                    id: step.step_id,
                    kind: step.kind,
                    status: step.status,
                    depends_on: step.depends_on,
                    config: async_graphql::Json(step.config),
                });
        }
        Ok(rows
            .into_iter()
            .map(|row| WorkflowView {
                steps: by_workflow.remove(&row.id).unwrap_or_default(),
                id: row.id,
                tenant: row.tenant,
                name: row.name,
                status: row.status,
                version: row.version,
                input: async_graphql::Json(row.input),
                cancel_reason: row.cancel_reason,
                submitted_by: row.submitted_by,
                submitted_at: row.submitted_at,
                updated_at: row.updated_at,
            })
            .collect())
    }

    /// The stream's events in version order; `None` when the workflow is unknown.
    pub async fn events(&self, tenant: &str, id: Uuid) -> Result<Option<Vec<EventView>>> {
        if self.workflow_exists(tenant, id).await? {
            let events = sqlx::query_as::<_, (i64, Uuid, String, DateTime<Utc>, Uuid, Uuid, serde_json::Value)>(
                "SELECT version, event_id, event_type, occurred_at, correlation_id, causation_id, data \
                 FROM workflow_events WHERE tenant = $1 AND workflow_id = $2 ORDER BY version",
            )
            .bind(tenant)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(version, event_id, event_type, occurred_at, correlation_id, causation_id, data)| EventView {
                version,
                event_id,
                event_type,
                occurred_at,
                correlation_id,
                causation_id,
                data: async_graphql::Json(data),
            })
            .collect();
            Ok(Some(events))
        } else {
            Ok(None)
        }
    }

    async fn workflow_exists(&self, tenant: &str, id: Uuid) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM workflows WHERE tenant = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// How many workflows have each status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusCounts {
    /// Per status, in lifecycle order, zeros included.
    pub by_status: Vec<(String, i64)>,
}

/// Batch reads: one statement for any number of workflows, so that GraphQL data loaders
/// answer a whole page with a fixed number of queries.
impl ReadModel {
    /// The workflows (with their steps) among `ids` that exist for `tenant`, in no order.
    pub async fn workflows(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<WorkflowView>> {
        let rows: Vec<WorkflowRow> =
            sqlx::query_as("SELECT * FROM workflows WHERE tenant = $1 AND id = ANY($2)")
                .bind(tenant)
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        self.with_steps(rows).await
    }

    /// The cursor that continues a list (sorted by `sort`) after `view`.
    pub fn cursor_after(view: &WorkflowView, sort: Sort) -> String {
        // Pages are keyed by id alone for now; the sort does not change the cursor yet.
        let _ = sort;
        encode_cursor(view.id)
    }

    /// The events of the streams among `ids` that belong to `tenant`, each in version order.
    pub async fn events_of(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<EventView>>> {
        let rows = sqlx::query_as::<_, (Uuid, i64, Uuid, String, DateTime<Utc>, Uuid, Uuid, serde_json::Value)>(
            "SELECT workflow_id, version, event_id, event_type, occurred_at, correlation_id, causation_id, data \
             FROM workflow_events WHERE tenant = $1 AND workflow_id = ANY($2) ORDER BY workflow_id, version",
        )
        .bind(tenant)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_workflow: HashMap<Uuid, Vec<EventView>> = HashMap::new();
        for (
            workflow_id,
            version,
            event_id,
            event_type,
            occurred_at,
            correlation_id,
            causation_id,
            data,
        ) in rows
        {
            by_workflow.entry(workflow_id).or_default().push(EventView {
                version,
                event_id,
                event_type,
                occurred_at,
                correlation_id,
                causation_id,
                data: async_graphql::Json(data),
            });
        }
        Ok(by_workflow)
    }

    /// How many workflows of `tenant` match `filter` (its page and sort are ignored), per
    /// status.
    pub async fn counts(&self, tenant: &str, filter: &ListFilter) -> Result<StatusCounts> {
        if let Some(status) = &filter.status
            && !STATUSES.contains(&status.as_str())
        {
            return Err(Error::InvalidParameter {
                parameter: "status",
                message: format!(
                    "unknown status '{status}'; expected one of {}",
                    STATUSES.join(", ")
                ),
            });
        }
        // Tools and models are matched on the step config the way the graph view names
        // them (`flowline_graph::tool_of` / `model_of`).
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM workflows w WHERE tenant = $1 \
             AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR strpos(lower(name), lower($3)) > 0) \
             AND ($4::timestamptz IS NULL OR submitted_at >= $4) \
             AND ($5::timestamptz IS NULL OR submitted_at < $5) \
             AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = w.id \
                  AND s.kind = 'mcp_tool' AND (CASE WHEN s.config ->> 'server' IS NULL THEN s.config ->> 'tool' \
                  ELSE (s.config ->> 'server') || '/' || (s.config ->> 'tool') END) = $6)) \
             AND ($7::text IS NULL OR EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = w.id \
                  AND s.kind = 'llm' AND s.config->>'model' = $7)) \
             GROUP BY status",
        )
        .bind(tenant)
        .bind(&filter.status)
        .bind(&filter.name)
        .bind(filter.submitted_after)
        .bind(filter.submitted_before)
        .bind(&filter.tool)
        .bind(&filter.model)
        .fetch_all(&self.pool)
        .await?;
        let by_status = STATUSES
            .iter()
            .map(|status| {
                let count = counted
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, count)| *count);
                ((*status).to_owned(), count)
            })
            .collect();
        Ok(StatusCounts { by_status })
    }
}
