//! Queries on the read model tables, shared by REST and GraphQL.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use flowline_domain::{TokenUsage, UsageSummary, WorkflowStatus};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Error, Result};

/// Most items one page may hold.
pub const MAX_PAGE: i64 = 100;
/// Items per page when the caller does not say.
pub const DEFAULT_PAGE: i64 = 20;
/// Most events one page of a stream holds (and how many when the caller does not say).
pub const MAX_EVENTS_PAGE: i64 = 100;
/// The statuses a workflow can have, in lifecycle order (the domain's).
pub fn statuses() -> impl Iterator<Item = &'static str> {
    WorkflowStatus::ALL.into_iter().map(WorkflowStatus::as_str)
}

fn is_zero(count: &i32) -> bool {
    *count == 0
}

/// Why an attempt, and so its step, failed.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    async_graphql::SimpleObject,
    utoipa::ToSchema,
)]
#[graphql(name = "StepError")]
pub struct StepErrorView {
    /// Stable and machine-readable: `http_status`, `timed_out`, `undefined_reference`, …
    pub kind: String,
    /// For a person.
    pub message: String,
}

/// Why a run failed.
#[derive(Debug, Clone, Serialize, Deserialize, async_graphql::SimpleObject, utoipa::ToSchema)]
#[graphql(name = "RunFailure")]
pub struct FailureView {
    /// Why, for a person.
    pub reason: String,
    /// The step whose failure failed the run, if a step did (a run can also time out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

/// What model calls used and cost: an attempt's, a step's (all its attempts), a run's (all
/// its steps), or a group of `GET /v1/usage`. Tokens are normalised across providers so
/// each is counted once ([ADR 22](../docs/adr/0022-model-calls-priced-on-the-event.md)).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    async_graphql::SimpleObject,
    utoipa::ToSchema,
)]
#[graphql(name = "Usage")]
pub struct UsageView {
    /// Model calls made.
    pub model_calls: i64,
    /// Of those, calls the price table had no price for: their cost is not in `cost_usd`.
    pub unpriced_calls: i64,
    /// Prompt tokens read neither from nor into a cache.
    pub input_tokens: i64,
    /// Generated tokens, reasoning excluded.
    pub output_tokens: i64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read_tokens: i64,
    /// Prompt tokens written into the provider's cache.
    pub cache_write_tokens: i64,
    /// Tokens spent reasoning, where the provider reports them apart.
    pub reasoning_tokens: i64,
    /// Every token above.
    pub total_tokens: i64,
    /// Cost in US dollars, an exact decimal (as text: never a float), computed with the
    /// price in effect when each call was made.
    #[schema(example = "0.0012345")]
    pub cost_usd: String,
}

impl UsageView {
    /// `model_calls` calls, `unpriced_calls` of them without a price, using `tokens` and
    /// costing `cost_usd` (exact decimal text).
    pub fn new(
        model_calls: u64,
        unpriced_calls: u64,
        tokens: &TokenUsage,
        cost_usd: String,
    ) -> Self {
        Self {
            model_calls: model_calls as i64,
            unpriced_calls: unpriced_calls as i64,
            input_tokens: tokens.input_tokens as i64,
            output_tokens: tokens.output_tokens as i64,
            cache_read_tokens: tokens.cache_read_tokens as i64,
            cache_write_tokens: tokens.cache_write_tokens as i64,
            reasoning_tokens: tokens.reasoning_tokens as i64,
            total_tokens: tokens.total() as i64,
            cost_usd,
        }
    }
}

impl From<&UsageSummary> for UsageView {
    fn from(usage: &UsageSummary) -> Self {
        Self::new(
            usage.model_calls,
            usage.unpriced_calls,
            &usage.tokens,
            usage.cost_usd.normalize().to_string(),
        )
    }
}

/// A stored `UsageSummary` (the projector writes only those; anything else reads as none).
fn stored_usage(value: Option<serde_json::Value>) -> Option<UsageSummary> {
    value.and_then(|value| serde_json::from_value(value).ok())
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize, Deserialize, async_graphql::SimpleObject, utoipa::ToSchema)]
#[graphql(name = "Attempt")]
pub struct AttemptView {
    /// 1-based attempt number.
    pub attempt: i32,
    /// Unique id of the attempt (sent to HTTP servers as `Idempotency-Key`).
    pub attempt_id: Uuid,
    /// `running`, `succeeded`, `failed`, `timed_out` or `cancelled` (its run failed or was
    /// cancelled while it ran).
    pub status: String,
    /// The step's config with every template rendered: what the attempt ran with (absent
    /// in a run rebuilt `asOf` a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<async_graphql::Json<serde_json::Value>>,
    /// Why it failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepErrorView>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// How long it ran, in milliseconds; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// What its model calls used and cost; absent while it runs and when it called no
    /// model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

/// A step as readers see it. What has not happened yet (no attempt, no output, no error…)
/// is absent rather than null.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepView {
    /// Unique within the workflow.
    pub id: String,
    /// `llm`, `mcp_tool`, `template`, `http` or `wait`.
    pub kind: String,
    /// Lifecycle status: `pending`, `running`, `retrying`, `succeeded`, `failed`,
    /// `skipped` or `cancelled`.
    pub status: String,
    /// Steps that must finish first.
    pub depends_on: Vec<String>,
    /// Kind-specific settings.
    #[schema(value_type = Object)]
    pub config: async_graphql::Json<serde_json::Value>,
    /// How many attempts it has had (its attempts are listed by the step read
    /// `GET /v1/workflows/{id}/steps/{step}`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt_count: i32,
    /// When its first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished (succeeded, failed for good, was skipped or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failure of its attempts (kept after a later attempt succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepErrorView>,
    /// When its next attempt is due (status `retrying`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// The output of its successful attempt (any JSON). An output too large for its event
    /// is stored by reference (`output_ref`) and read from there by the step read only, so
    /// run reads and pages stay bounded by the inline outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<async_graphql::Json<serde_json::Value>>,
    /// `sha256:<hex>` of an output stored by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<String>,
    /// What the model calls of all its attempts used and cost (failed attempts' calls
    /// were billed too); absent when it called no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

/// A workflow run as readers see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = Object)]
    pub input: async_graphql::Json<serde_json::Value>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// Who submitted it, when known.
    pub submitted_by: Option<String>,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When its last event happened.
    pub updated_at: DateTime<Utc>,
    /// When the executor took it up; absent while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded, failed or was cancelled; absent while it is not finished (a
    /// retried step reopens a failed run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
    /// What the model calls of all its steps used and cost; absent when none called a
    /// model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// Steps in submission order.
    pub steps: Vec<StepView>,
}

/// One event of a stream.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject, utoipa::ToSchema)]
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
    #[schema(value_type = Object)]
    pub data: async_graphql::Json<serde_json::Value>,
}

/// A step with what depends on it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepDetail {
    /// The run the step belongs to.
    pub workflow_id: Uuid,
    /// The run's status.
    pub workflow_status: String,
    /// The step itself.
    #[serde(flatten)]
    pub step: StepView,
    /// Ids of the steps that list this one in `depends_on`, in submission order.
    pub dependents: Vec<String>,
    /// Its attempts, oldest first; absent before the first one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptView>,
}

/// A page of workflows, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkflowPage {
    /// The page's items.
    pub items: Vec<WorkflowView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a stream's events.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The events, in version order.
    pub events: Vec<EventView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The position after the last event of a page: base64url of `{"after_version": n}`,
/// opaque to clients like the list cursors (ADR 10).
#[derive(Debug, Serialize, Deserialize)]
pub struct EventCursor {
    after_version: i64,
}

impl EventCursor {
    /// The cursor continuing after `version`.
    pub fn after(version: i64) -> String {
        URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Self {
                after_version: version,
            })
            .expect("a cursor serializes"),
        )
    }

    /// The version a cursor continues after.
    pub fn decode(text: &str) -> Result<i64> {
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Self>(&bytes).ok())
            .map(|cursor| cursor.after_version)
            .filter(|version| *version >= 0)
            .ok_or_else(|| invalid_cursor("not a cursor returned by this API"))
    }
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
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    failure_reason: Option<String>,
    failed_step: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StepRow {
    workflow_id: Uuid,
    step_id: String,
    kind: String,
    status: String,
    depends_on: Vec<String>,
    config: serde_json::Value,
    attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<serde_json::Value>,
    next_attempt_at: Option<DateTime<Utc>>,
    skip_reason: Option<String>,
    output: Option<serde_json::Value>,
    output_ref: Option<String>,
    usage: Option<serde_json::Value>,
}

/// A `workflow_step_attempts` row.
#[derive(sqlx::FromRow)]
struct AttemptRow {
    workflow_id: Uuid,
    step_id: String,
    attempt: i32,
    attempt_id: Uuid,
    status: String,
    input: serde_json::Value,
    error: Option<serde_json::Value>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    usage: Option<serde_json::Value>,
}

/// A stored `{kind, message}`; anything else reads as none (the projector writes only
/// those).
fn step_error(value: Option<serde_json::Value>) -> Option<StepErrorView> {
    value.and_then(|value| serde_json::from_value(value).ok())
}

impl From<AttemptRow> for AttemptView {
    fn from(row: AttemptRow) -> Self {
        Self {
            attempt: row.attempt,
            attempt_id: row.attempt_id,
            status: row.status,
            input: Some(async_graphql::Json(row.input)),
            error: step_error(row.error),
            started_at: row.started_at,
            finished_at: row.finished_at,
            duration_ms: row.duration_ms,
            usage: stored_usage(row.usage).as_ref().map(UsageView::from),
        }
    }
}

impl StepRow {
    /// The step as readers see it, and its usage to add into its run's.
    fn into_view(self) -> (StepView, Option<UsageSummary>) {
        let step = self;
        let usage = stored_usage(step.usage);
        let view = StepView {
            id: step.step_id,
            kind: step.kind,
            status: step.status,
            depends_on: step.depends_on,
            config: async_graphql::Json(step.config),
            attempt_count: step.attempts,
            started_at: step.started_at,
            finished_at: step.finished_at,
            error: step_error(step.error),
            next_attempt_at: step.next_attempt_at,
            skip_reason: step.skip_reason,
            // An output kept by reference is `null` on its event: absent until resolved.
            output: match step.output_ref {
                Some(_) => None,
                None => step.output.map(async_graphql::Json),
            },
            output_ref: step.output_ref,
            usage: usage.as_ref().map(UsageView::from),
        };
        (view, usage)
    }
}

/// The attempts of some workflows' steps, by workflow, then step, oldest first.
pub type AttemptsByStep = HashMap<String, Vec<AttemptView>>;

/// SQL naming the tool an `mcp_tool` step calls; identical to the expression index of
/// migration 0010 so the planner uses it.
const STEP_TOOL: &str = "(CASE WHEN config ->> 'server' IS NULL THEN config ->> 'tool' \
     ELSE (config ->> 'server') || '/' || (config ->> 'tool') END)";

impl SortField {
    /// The name used in `sort=` and in cursors.
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::SubmittedAt => "submitted_at",
            SortField::UpdatedAt => "updated_at",
            SortField::Name => "name",
        }
    }

    fn column(self) -> &'static str {
        self.as_str()
    }
}

impl Sort {
    /// Every accepted `sort=` value.
    pub const ACCEPTED: [&str; 6] = [
        "submitted_at",
        "-submitted_at",
        "updated_at",
        "-updated_at",
        "name",
        "-name",
    ];

    /// Parses `field` (ascending) or `-field` (descending).
    pub fn parse(text: &str) -> Result<Self> {
        let (descending, field) = match text.strip_prefix('-') {
            Some(field) => (true, field),
            None => (false, text),
        };
        let field = match field {
            "submitted_at" => SortField::SubmittedAt,
            "updated_at" => SortField::UpdatedAt,
            "name" => SortField::Name,
            _ => {
                return Err(Error::InvalidParameter {
                    parameter: "sort",
                    message: format!(
                        "unknown sort '{text}'; expected one of {}",
                        Self::ACCEPTED.join(", ")
                    ),
                });
            }
        };
        Ok(Self { field, descending })
    }

    /// `field` or `-field`.
    pub fn as_string(self) -> String {
        format!(
            "{}{}",
            if self.descending { "-" } else { "" },
            self.field.as_str()
        )
    }
}

/// The position after the last item of a page: the sort it was made for, that item's sort
/// key and its id (the tie-breaker). Serialized as base64url JSON, opaque to clients.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Cursor {
    /// `sort` as the client gave it (`-submitted_at`, `name`, ...).
    sort: String,
    /// Sort key of the last item: microseconds since the epoch for times, the text for names.
    key: serde_json::Value,
    id: Uuid,
}

/// A decoded cursor's sort key, ready to bind.
enum CursorKey {
    Time(DateTime<Utc>),
    Text(String),
}

fn invalid_cursor(message: &str) -> Error {
    Error::InvalidParameter {
        parameter: "cursor",
        message: message.into(),
    }
}

/// A `workflow_events` row.
#[derive(sqlx::FromRow)]
struct EventRow {
    workflow_id: Uuid,
    version: i64,
    event_id: Uuid,
    event_type: String,
    occurred_at: DateTime<Utc>,
    correlation_id: Uuid,
    causation_id: Uuid,
    data: serde_json::Value,
}

/// A `workflow_events` row with its place on the log.
#[derive(sqlx::FromRow)]
struct LoggedRow {
    log_partition: i32,
    log_offset: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

impl From<EventRow> for EventView {
    fn from(row: EventRow) -> Self {
        Self {
            version: row.version,
            event_id: row.event_id,
            event_type: row.event_type,
            occurred_at: row.occurred_at,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            data: async_graphql::Json(row.data),
        }
    }
}

/// The fields of a workflow that a cursor may be keyed by.
struct CursorFields<'a> {
    id: Uuid,
    name: &'a str,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a WorkflowRow> for CursorFields<'a> {
    fn from(row: &'a WorkflowRow) -> Self {
        Self {
            id: row.id,
            name: &row.name,
            submitted_at: row.submitted_at,
            updated_at: row.updated_at,
        }
    }
}

impl<'a> From<&'a WorkflowView> for CursorFields<'a> {
    fn from(view: &'a WorkflowView) -> Self {
        Self {
            id: view.id,
            name: &view.name,
            submitted_at: view.submitted_at,
            updated_at: view.updated_at,
        }
    }
}

fn encode_cursor<'a>(sort: Sort, item: impl Into<CursorFields<'a>>) -> String {
    let item = item.into();
    let key = match sort.field {
        SortField::SubmittedAt => serde_json::json!(item.submitted_at.timestamp_micros()),
        SortField::UpdatedAt => serde_json::json!(item.updated_at.timestamp_micros()),
        SortField::Name => serde_json::json!(item.name),
    };
    let cursor = Cursor {
        sort: sort.as_string(),
        key,
        id: item.id,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).expect("a cursor serializes"))
}

fn decode_cursor(text: &str, sort: Sort) -> Result<(CursorKey, Uuid)> {
    let cursor: Cursor = URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| invalid_cursor("not a cursor returned by this API"))?;
    if cursor.sort != sort.as_string() {
        return Err(Error::InvalidParameter {
            parameter: "cursor",
            message: format!(
                "the cursor belongs to sort={}, not sort={}; start again without a cursor",
                cursor.sort,
                sort.as_string()
            ),
        });
    }
    let key = match sort.field {
        SortField::SubmittedAt | SortField::UpdatedAt => cursor
            .key
            .as_i64()
            .and_then(DateTime::from_timestamp_micros)
            .map(CursorKey::Time),
        SortField::Name => cursor.key.as_str().map(|t| CursorKey::Text(t.to_owned())),
    }
    .ok_or_else(|| invalid_cursor("not a cursor returned by this API"))?;
    Ok((key, cursor.id))
}

/// `text` as a LIKE pattern matching itself anywhere.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Refuses filters no run can match for a reason the caller should hear about.
fn validate(filter: &ListFilter) -> Result<()> {
    if let Some(status) = &filter.status
        && WorkflowStatus::parse(status).is_none()
    {
        return Err(Error::InvalidParameter {
            parameter: "status",
            message: format!(
                "unknown status '{status}'; expected one of {}",
                statuses().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if let (Some(after), Some(before)) = (filter.submitted_after, filter.submitted_before)
        && after >= before
    {
        return Err(Error::InvalidParameter {
            parameter: "submitted_before",
            message: "must be later than submitted_after".into(),
        });
    }
    Ok(())
}

/// Appends the conditions of `filter` (not its page or sort) on `workflows w`.
fn push_filter(query: &mut QueryBuilder<Postgres>, tenant: &str, filter: &ListFilter) {
    query.push("w.tenant = ").push_bind(tenant);
    if let Some(status) = &filter.status {
        query.push(" AND w.status = ").push_bind(status);
    }
    if let Some(name) = &filter.name {
        query
            .push(" AND w.name ILIKE ")
            .push_bind(contains_pattern(name));
    }
    if let Some(after) = filter.submitted_after {
        query.push(" AND w.submitted_at >= ").push_bind(after);
    }
    if let Some(before) = filter.submitted_before {
        query.push(" AND w.submitted_at < ").push_bind(before);
    }
    if let Some(tool) = &filter.tool {
        query.push(format!(
            " AND EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = w.id \
             AND s.kind = 'mcp_tool' AND {STEP_TOOL} = "
        ));
        query.push_bind(tool).push(")");
    }
    if let Some(model) = &filter.model {
        query.push(
            " AND EXISTS (SELECT 1 FROM workflow_steps s WHERE s.workflow_id = w.id \
             AND s.kind = 'llm' AND config ->> 'model' = ",
        );
        query.push_bind(model).push(")");
    }
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

    /// The pool it reads with (the statement timeout applies): projections, budgets, usage.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One workflow with its steps.
    pub async fn workflow(&self, tenant: &str, id: Uuid) -> Result<Option<WorkflowView>> {
        Ok(self.workflows(tenant, &[id]).await?.pop())
    }

    /// A page of workflows matching `filter`, in its sort order (newest first by default),
    /// keyset-paginated on (sort key, id). Two queries whatever the page size.
    pub async fn list(&self, tenant: &str, filter: &ListFilter) -> Result<WorkflowPage> {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::InvalidParameter {
                parameter: "limit",
                message: format!("must be between 1 and {MAX_PAGE}"),
            });
        }
        validate(filter)?;
        let sort = filter.sort;
        let position = filter
            .cursor
            .as_deref()
            .map(|cursor| decode_cursor(cursor, sort))
            .transpose()?;

        let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM workflows w WHERE ");
        push_filter(&mut query, tenant, filter);
        let column = sort.field.column();
        let (direction, comparison) = if sort.descending {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        if let Some((key, id)) = position {
            query.push(format!(" AND ({column}, id) {comparison} ("));
            match key {
                CursorKey::Time(time) => query.push_bind(time),
                CursorKey::Text(text) => query.push_bind(text),
            };
            query.push(", ").push_bind(id).push(")");
        }
        query.push(format!(
            " ORDER BY {column} {direction}, id {direction} LIMIT "
        ));
        query.push_bind(limit + 1);
        let mut rows: Vec<WorkflowRow> = query.build_query_as().fetch_all(&self.pool).await?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = has_more.then(|| encode_cursor(sort, &rows[rows.len() - 1]));
        Ok(WorkflowPage {
            items: self.with_steps(rows).await?,
            next_cursor,
        })
    }

    async fn with_steps(&self, rows: Vec<WorkflowRow>) -> Result<Vec<WorkflowView>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let steps: Vec<StepRow> = sqlx::query_as(
            "SELECT workflow_id, step_id, kind, status, depends_on, config, attempts, started_at, \
             finished_at, error, next_attempt_at, skip_reason, output, output_ref, usage \
             FROM workflow_steps WHERE workflow_id = ANY($1) ORDER BY workflow_id, position",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_workflow: HashMap<Uuid, (Vec<StepView>, Option<UsageSummary>)> = HashMap::new();
        for step in steps {
            let (views, total) = by_workflow.entry(step.workflow_id).or_default();
            let (view, usage) = step.into_view();
            if let Some(usage) = usage {
                total.get_or_insert_default().add(&usage);
            }
            views.push(view);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let (steps, usage) = by_workflow.remove(&row.id).unwrap_or_default();
                (row, steps, usage)
            })
            .map(|(row, steps, usage)| WorkflowView {
                steps,
                usage: usage.as_ref().map(UsageView::from),
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
                started_at: row.started_at,
                finished_at: row.finished_at,
                failure: row.failure_reason.map(|reason| FailureView {
                    reason,
                    step_id: row.failed_step,
                }),
            })
            .collect())
    }

    /// One step of a workflow with the steps that depend on it directly and its attempts,
    /// its output read from the payload table when it is kept by reference; `Ok(None)` when
    /// the workflow is unknown, `Error::UnknownStep` when it has no such step.
    pub async fn step(&self, tenant: &str, id: Uuid, step: &str) -> Result<Option<StepDetail>> {
        let Some(mut workflow) = self.workflow(tenant, id).await? else {
            return Ok(None);
        };
        let Some(position) = workflow.steps.iter().position(|s| s.id == step) else {
            return Err(Error::UnknownStep(step.to_owned()));
        };
        // Only this step's output: the others are not part of the answer.
        self.resolve_outputs(tenant, &mut workflow.steps[position..=position])
            .await?;
        let attempts = self
            .read_attempts(tenant, &[id], Some(step))
            .await?
            .remove(&id)
            .and_then(|mut by_step| by_step.remove(step))
            .unwrap_or_default();
        let dependents = workflow
            .steps
            .iter()
            .filter(|other| other.depends_on.iter().any(|d| d == step))
            .map(|other| other.id.clone())
            .collect();
        let found = workflow.steps.swap_remove(position);
        Ok(Some(StepDetail {
            workflow_id: workflow.id,
            workflow_status: workflow.status,
            step: found,
            dependents,
            attempts,
        }))
    }

    /// Fills in the outputs of `steps` (of one of `tenant`'s runs) that are kept by
    /// reference in the payload table: one statement, none when no step has one. Payloads
    /// never change once written (before the event naming them), so they are read per
    /// request rather than cached with the run.
    pub async fn resolve_outputs(&self, tenant: &str, steps: &mut [StepView]) -> Result<()> {
        let refs: Vec<String> = steps
            .iter()
            .filter(|step| step.output.is_none())
            .filter_map(|step| step.output_ref.clone())
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        let bodies = self.payloads(tenant, &refs).await?;
        for step in steps.iter_mut().filter(|step| step.output.is_none()) {
            if let Some(body) = step.output_ref.as_ref().and_then(|r| bodies.get(r)) {
                step.output = Some(async_graphql::Json(body.clone()));
            }
        }
        Ok(())
    }

    /// The stored outputs among `refs` of `tenant`, by reference.
    pub async fn payloads(
        &self,
        tenant: &str,
        refs: &[String],
    ) -> Result<HashMap<String, serde_json::Value>> {
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT ref, body FROM step_payloads WHERE tenant = $1 AND ref = ANY($2)",
        )
        .bind(tenant)
        .bind(refs)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The attempts of the steps of `tenant`'s workflows among `ids`, by workflow and step,
    /// oldest first: one statement.
    pub async fn attempts_of(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, AttemptsByStep>> {
        self.read_attempts(tenant, ids, None).await
    }

    /// [`ReadModel::attempts_of`], of one step only when `step` is given.
    async fn read_attempts(
        &self,
        tenant: &str,
        ids: &[Uuid],
        step: Option<&str>,
    ) -> Result<HashMap<Uuid, AttemptsByStep>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT a.workflow_id, a.step_id, a.attempt, a.attempt_id, a.status, a.input, \
             a.error, a.started_at, a.finished_at, a.duration_ms, a.usage \
             FROM workflow_step_attempts a JOIN workflows w ON w.id = a.workflow_id \
             WHERE w.tenant = $1 AND a.workflow_id = ANY($2) \
               AND ($3::text IS NULL OR a.step_id = $3) \
             ORDER BY a.workflow_id, a.step_id, a.attempt",
        )
        .bind(tenant)
        .bind(ids)
        .bind(step)
        .fetch_all(&self.pool)
        .await?;
        let mut by_workflow: HashMap<Uuid, AttemptsByStep> = HashMap::new();
        for row in rows {
            by_workflow
                .entry(row.workflow_id)
                .or_default()
                .entry(row.step_id.clone())
                .or_default()
                .push(row.into());
        }
        Ok(by_workflow)
    }

    /// Up to `limit` of the stream's events after version `after` (from the first without
    /// it), in version order, keyset-paginated on the primary key `(workflow_id, version)`;
    /// `None` when the workflow is unknown.
    pub async fn events(
        &self,
        tenant: &str,
        id: Uuid,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Option<EventPage>> {
        if !self.workflow_exists(tenant, id).await? {
            return Ok(None);
        }
        // One more than asked tells whether a next page exists.
        let mut rows: Vec<EventRow> = sqlx::query_as(
            "SELECT workflow_id, version, event_id, event_type, occurred_at, correlation_id, \
             causation_id, data FROM workflow_events \
             WHERE tenant = $1 AND workflow_id = $2 AND version > $3 \
             ORDER BY version LIMIT $4",
        )
        .bind(tenant)
        .bind(id)
        .bind(after.unwrap_or(0))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last().map(|row| EventCursor::after(row.version)))
            .flatten();
        Ok(Some(EventPage {
            events: rows.into_iter().map(EventView::from).collect(),
            next_cursor,
        }))
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

/// An event with its stream and its place on the log, for readers that follow the log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// The stream (workflow) it belongs to.
    pub workflow_id: Uuid,
    /// Its log partition.
    pub log_partition: i32,
    /// Its offset in that partition.
    pub log_offset: i64,
    /// The event.
    pub event: EventView,
}

/// Which events a log reader wants; both optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this workflow's.
    pub workflow_id: Option<Uuid>,
    /// Only these event types.
    pub types: Option<Vec<String>>,
}

impl EventFilter {
    /// Whether a change of `workflow_id` may concern this filter.
    pub fn may_concern(&self, workflow_id: Uuid) -> bool {
        self.workflow_id.is_none_or(|wanted| wanted == workflow_id)
    }
}

/// Reads that follow the log through the read model (subscriptions).
impl ReadModel {
    /// The tenant's latest projected offset per partition: where a reader of new events
    /// starts.
    pub async fn latest_positions(&self, tenant: &str) -> Result<crate::log_cursor::LogCursor> {
        // One index probe per partition; every partition that has events has a checkpoint.
        let positions: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT p.partition, latest.last_offset FROM \
               (SELECT DISTINCT partition FROM projection_checkpoints) AS p \
             CROSS JOIN LATERAL (SELECT max(log_offset) AS last_offset FROM workflow_events \
               WHERE tenant = $1 AND log_partition = p.partition) AS latest \
             WHERE latest.last_offset IS NOT NULL",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::log_cursor::LogCursor::from_positions(positions))
    }

    /// Up to `limit` of the tenant's events past `cursor`, partition by partition in
    /// offset order.
    pub async fn events_after(
        &self,
        tenant: &str,
        cursor: &crate::log_cursor::LogCursor,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>> {
        let (partitions, offsets) = cursor.positions();
        // Per partition a range scan of (tenant, log_partition, log_offset).
        let rows: Vec<LoggedRow> = sqlx::query_as(
            "WITH seen AS ( \
               SELECT p.partition, COALESCE(c.seen, -1) AS seen \
               FROM (SELECT DISTINCT partition FROM projection_checkpoints) AS p \
               LEFT JOIN unnest($2::int[], $3::bigint[]) AS c(partition, seen) USING (partition)) \
             SELECT e.workflow_id, e.log_partition, e.log_offset, e.version, e.event_id, \
                    e.event_type, e.occurred_at, e.correlation_id, e.causation_id, e.data \
             FROM seen CROSS JOIN LATERAL ( \
               SELECT * FROM workflow_events e \
               WHERE e.tenant = $1 AND e.log_partition = seen.partition AND e.log_offset > seen.seen \
                 AND ($4::uuid IS NULL OR e.workflow_id = $4) \
                 AND ($5::text[] IS NULL OR e.event_type = ANY($5)) \
               ORDER BY e.log_offset LIMIT $6) AS e \
             ORDER BY e.log_partition, e.log_offset LIMIT $6",
        )
        .bind(tenant)
        .bind(&partitions)
        .bind(&offsets)
        .bind(filter.workflow_id)
        .bind(filter.types.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| LoggedEvent {
                workflow_id: row.event.workflow_id,
                log_partition: row.log_partition,
                log_offset: row.log_offset,
                event: row.event.into(),
            })
            .collect())
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
        encode_cursor(sort, view)
    }

    /// The events of the streams among `ids` that belong to `tenant`, each in version order.
    pub async fn events_of(
        &self,
        tenant: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<EventView>>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT workflow_id, version, event_id, event_type, occurred_at, correlation_id, \
             causation_id, data FROM workflow_events WHERE tenant = $1 AND workflow_id = ANY($2) \
             ORDER BY workflow_id, version",
        )
        .bind(tenant)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(events_by_workflow(rows))
    }

    /// One page of events of each of `ids`: those after version `after`, at most `first`
    /// per workflow, in version order (one statement, reading only the page's rows).
    pub async fn event_pages(
        &self,
        tenant: &str,
        ids: &[Uuid],
        after: i64,
        first: i64,
    ) -> Result<HashMap<Uuid, Vec<EventView>>> {
        let rows = sqlx::query_as::<_, EventRow>(
            "SELECT e.workflow_id, e.version, e.event_id, e.event_type, e.occurred_at, \
             e.correlation_id, e.causation_id, e.data FROM unnest($2::uuid[]) AS w(id) \
             CROSS JOIN LATERAL (SELECT * FROM workflow_events \
               WHERE workflow_id = w.id AND tenant = $1 AND version > $3 \
               ORDER BY version LIMIT $4) e \
             ORDER BY e.workflow_id, e.version",
        )
        .bind(tenant)
        .bind(ids)
        .bind(after)
        .bind(first)
        .fetch_all(&self.pool)
        .await?;
        Ok(events_by_workflow(rows))
    }

    /// When the events of `versions` of one workflow happened (versions the read model
    /// does not hold yet are absent).
    pub async fn occurred_at(
        &self,
        tenant: &str,
        id: Uuid,
        versions: &[i64],
    ) -> Result<HashMap<i64, DateTime<Utc>>> {
        let rows: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT version, occurred_at FROM workflow_events \
             WHERE tenant = $1 AND workflow_id = $2 AND version = ANY($3)",
        )
        .bind(tenant)
        .bind(id)
        .bind(versions)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// How many workflows of `tenant` match `filter` (its page and sort are ignored), per
    /// status.
    pub async fn counts(&self, tenant: &str, filter: &ListFilter) -> Result<StatusCounts> {
        validate(filter)?;
        let mut query =
            QueryBuilder::<Postgres>::new("SELECT status, count(*) FROM workflows w WHERE ");
        push_filter(&mut query, tenant, filter);
        query.push(" GROUP BY status");
        let counted: Vec<(String, i64)> = query.build_query_as().fetch_all(&self.pool).await?;
        let by_status = statuses()
            .map(|status| {
                let count = counted
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, count)| *count);
                (status.to_owned(), count)
            })
            .collect();
        Ok(StatusCounts { by_status })
    }
}

/// Events grouped by their workflow, in the rows' order.
fn events_by_workflow(rows: Vec<EventRow>) -> HashMap<Uuid, Vec<EventView>> {
    let mut by_workflow: HashMap<Uuid, Vec<EventView>> = HashMap::new();
    for row in rows {
        by_workflow
            .entry(row.workflow_id)
            .or_default()
            .push(row.into());
    }
    by_workflow
}
