//! REST routes over the read model (documented in the OpenAPI document at `/openapi.json`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use flowline_access::{Caller, Role};
use flowline_event_store::AsOf;
use serde::Deserialize;
use uuid::Uuid;

use crate::application::AppState;
use crate::consistency::token_from_headers;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;

use crate::read_model::{
    EventCursor, EventView, ListFilter, MAX_EVENTS_PAGE, MAX_PAGE, Sort, StepDetail, WorkflowPage,
    WorkflowView,
};
use crate::{Error, Result};

/// A workflow status, as the `status` filter accepts it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusParam {
    /// Submitted, not started.
    Pending,
    /// In progress.
    Running,
    /// Paused by a caller: running attempts finish, nothing new starts.
    Paused,
    /// Finished well.
    Succeeded,
    /// Finished badly.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// The orders `sort` accepts: a field, descending when prefixed with `-`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub enum SortParam {
    /// Oldest first.
    #[serde(rename = "submitted_at")]
    SubmittedAt,
    /// Newest first (the default).
    #[serde(rename = "-submitted_at")]
    SubmittedAtDescending,
    /// Least recently changed first.
    #[serde(rename = "updated_at")]
    UpdatedAt,
    /// Most recently changed first.
    #[serde(rename = "-updated_at")]
    UpdatedAtDescending,
    /// By name, A to Z.
    #[serde(rename = "name")]
    Name,
    /// By name, Z to A.
    #[serde(rename = "-name")]
    NameDescending,
}

/// Query parameters of `GET /v1/workflows`. Read as text and parsed here, so that a bad
/// value is a 400 naming its parameter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only runs with this status.
    #[param(value_type = Option<StatusParam>, inline)]
    status: Option<String>,
    /// Only runs whose name contains this text (case-insensitive).
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    name: Option<String>,
    /// Only runs submitted at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime, example = "2026-11-26T10:00:00Z")]
    submitted_after: Option<String>,
    /// Only runs submitted before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    submitted_before: Option<String>,
    /// Only runs with an `mcp_tool` step calling this tool (`server/tool`, or `tool` when the
    /// step names no server).
    #[param(
        example = "web/search",
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    tool: Option<String>,
    /// Only runs with an `llm` step using this model.
    #[param(
        example = "gpt-x",
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000]*[^\s\u0000\u0085][^\u0000]*$"
    )]
    model: Option<String>,
    /// Order of the items; `-` means descending. Default `-submitted_at` (newest first).
    #[param(value_type = Option<SortParam>, inline)]
    sort: Option<String>,
    /// Items per page, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page, requested with the same `sort`.
    #[param(min_length = 1, max_length = 1024)]
    cursor: Option<String>,
}

fn parse_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(raw.to_owned()))
}

fn parse_time(parameter: &'static str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|e| Error::InvalidParameter {
            parameter,
            message: format!("not an RFC 3339 time ({e}), e.g. 2026-11-26T10:00:00Z"),
        })
}

/// A text parameter: absent, or non-empty without NUL (which PostgreSQL text cannot hold).
pub(crate) fn text_parameter(
    parameter: &'static str,
    text: Option<String>,
) -> Result<Option<String>> {
    match text {
        Some(text) if text.trim().is_empty() => Err(Error::InvalidParameter {
            parameter,
            message: "must not be empty".into(),
        }),
        Some(text) if text.contains('\0') => Err(Error::InvalidParameter {
            parameter,
            message: "must not contain NUL characters".into(),
        }),
        other => Ok(other),
    }
}

/// Longest text filter (`name`, `tool`, `model`), in characters.
const MAX_FILTER_CHARS: usize = 256;
/// Longest cursor, in bytes (the ones this API makes are far shorter).
const MAX_CURSOR_BYTES: usize = 1024;

/// A text filter: as [`text_parameter`], and at most [`MAX_FILTER_CHARS`] long.
fn filter_text(parameter: &'static str, text: Option<String>) -> Result<Option<String>> {
    let text = text_parameter(parameter, text)?;
    if text
        .as_ref()
        .is_some_and(|text| text.chars().count() > MAX_FILTER_CHARS)
    {
        return Err(Error::InvalidParameter {
            parameter,
            message: format!("longer than {MAX_FILTER_CHARS} characters"),
        });
    }
    Ok(text)
}

/// A cursor as given: non-empty, at most [`MAX_CURSOR_BYTES`] (its content is checked
/// where it is decoded).
fn cursor_text(text: Option<String>) -> Result<Option<String>> {
    let text = text_parameter("cursor", text)?;
    if text
        .as_ref()
        .is_some_and(|text| text.len() > MAX_CURSOR_BYTES)
    {
        return Err(Error::InvalidParameter {
            parameter: "cursor",
            message: "not a cursor returned by this API".into(),
        });
    }
    Ok(text)
}

/// A page size: an integer from 1 to `max`.
fn page_limit(text: Option<String>, max: i64) -> Result<Option<i64>> {
    text.map(|limit| {
        limit
            .parse()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| Error::InvalidParameter {
                parameter: "limit",
                message: format!("must be an integer between 1 and {max}"),
            })
    })
    .transpose()
}

impl ListParams {
    fn into_filter(self) -> Result<ListFilter> {
        Ok(ListFilter {
            status: text_parameter("status", self.status)?,
            name: filter_text("name", self.name)?,
            submitted_after: self
                .submitted_after
                .map(|t| parse_time("submitted_after", &t))
                .transpose()?,
            submitted_before: self
                .submitted_before
                .map(|t| parse_time("submitted_before", &t))
                .transpose()?,
            tool: filter_text("tool", self.tool)?,
            model: filter_text("model", self.model)?,
            sort: self
                .sort
                .as_deref()
                .map(Sort::parse)
                .transpose()?
                .unwrap_or_default(),
            limit: page_limit(self.limit, MAX_PAGE)?,
            cursor: cursor_text(self.cursor)?,
        })
    }
}

/// A run with its steps: each step's status, attempt count, last error, output (absent, with
/// `output_ref`, when it is kept by reference: the step read returns it), times, next attempt and skip
/// reason; the run's start, end and failure. The attempts themselves are listed by the
/// step read, to keep this answer small.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"), ("X-Consistency-Token" = Option<String>, Header, description = "A command's consistency token: answer with state at least that new (waits up to CONSISTENCY_WAIT_MS)")),
    responses(
        (status = 503, description = "The read model has not reached the consistency token in time; retry (Retry-After)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 200, description = "The run", body = WorkflowView),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WorkflowView>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let token = token_from_headers(&headers)?;
    let workflow_id = parse_id(&id)?;
    // Outputs kept by reference (each up to HTTP_MAX_RESPONSE_BYTES) are read one step at a
    // time, from the step read, so a run's answer stays bounded by its inline outputs.
    let workflow = state
        .reads
        .workflow(&tenant, workflow_id, token.as_ref())
        .await?
        .ok_or(Error::NotFound(id))?;
    Ok(Json(workflow))
}

/// Runs matching every given filter, one page at a time.
///
/// Pages are keyset-paginated: pass `next_cursor` as `cursor` (with the same `sort`) for the
/// next page; no run is missed or repeated while paging. Items are runs as
/// `GET /v1/workflows/{id}` shows them, except that a step output kept by reference is
/// left out (only its `output_ref` is there): a page of large outputs would be huge.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    tag = "workflows",
    params(ListParams, ("X-Consistency-Token" = Option<String>, Header, description = "A command's consistency token: answer with state at least that new (waits up to CONSISTENCY_WAIT_MS)")),
    responses(
        (status = 503, description = "The read model has not reached the consistency token in time; retry (Retry-After)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 200, description = "A page of runs", body = WorkflowPage),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<WorkflowPage>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let token = token_from_headers(&headers)?;
    state.reads.gate().wait_for_any(token.as_ref()).await?;
    let filter = params.into_filter()?;
    Ok(Json(state.read_model.list(&tenant, &filter).await?))
}

/// One step of a run: kind, status, `depends_on`, config, the steps depending on it, its
/// attempts (oldest first) and its output (read from the payload table when it is kept
/// there by reference).
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/steps/{step}",
    tag = "workflows",
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The step's id"),
    ),
    responses(
        (status = 200, description = "The step", body = StepDetail),
        (status = 404, description = "No such run or step", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn step(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<StepDetail>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let workflow_id = parse_id(&id)?;
    state
        .read_model
        .step(&tenant, workflow_id, &step)
        .await?
        .map(Json)
        .ok_or(Error::NotFound(id))
}

/// A page of the events of a run's stream, in version order.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EventsBody {
    workflow_id: Uuid,
    events: Vec<EventView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Query parameters of `GET /v1/workflows/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Events per page, 1 to 100 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 1024)]
    cursor: Option<String>,
}

/// The aggregate as it was at a version or a time.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StateBody {
    workflow_id: Uuid,
    /// The version the state reflects.
    version: u64,
    /// The stream's latest version.
    current_version: u64,
    /// The time asked for, if any.
    as_of: Option<String>,
    /// The aggregate's state.
    #[schema(value_type = Object)]
    state: flowline_domain::Workflow,
}

/// The events of a run's stream, in version order, one page at a time: pass
/// `next_cursor` as `cursor` for the next page (keyset-paginated on the version, so a page
/// is one index range whatever the stream's length).
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/events",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"), EventsParams, ("X-Consistency-Token" = Option<String>, Header, description = "A command's consistency token: answer with state at least that new (waits up to CONSISTENCY_WAIT_MS)")),
    responses(
        (status = 503, description = "The read model has not reached the consistency token in time; retry (Retry-After)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 200, description = "A page of the stream", body = EventsBody),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<EventsParams>,
    headers: HeaderMap,
) -> Result<Json<EventsBody>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let token = token_from_headers(&headers)?;
    let workflow_id = parse_id(&id)?;
    let limit = page_limit(params.limit, MAX_EVENTS_PAGE)?.unwrap_or(MAX_EVENTS_PAGE);
    let after = cursor_text(params.cursor)?
        .map(|cursor| EventCursor::decode(&cursor))
        .transpose()?;
    state.reads.gate().wait_for_any(token.as_ref()).await?;
    let page = state
        .read_model
        .events(&tenant, workflow_id, after, limit)
        .await?
        .ok_or(Error::NotFound(id))?;
    Ok(Json(EventsBody {
        workflow_id,
        events: page.events,
        next_cursor: page.next_cursor,
    }))
}

/// Query parameters of `GET /v1/workflows/{id}/state` (at most one of them).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateParams {
    /// The state as it was at this time (RFC 3339, not in the future).
    #[param(value_type = Option<String>, format = DateTime)]
    as_of: Option<String>,
    /// The state as it was after this version.
    #[param(value_type = Option<u64>, minimum = 1)]
    version: Option<String>,
}

/// Response header: the version of the snapshot a `/state` answer was rebuilt from (0: none).
pub const SNAPSHOT_VERSION_HEADER: &str = "x-snapshot-version";
/// Response header: how many events a `/state` answer replayed on top of its snapshot.
pub const REPLAYED_EVENTS_HEADER: &str = "x-replayed-events";

/// The aggregate as it was at a time or after a version (the latest without either),
/// rebuilt by replay from the nearest snapshot at or below it (`x-snapshot-version`, with
/// `x-replayed-events` events replayed on top).
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/state",
    tag = "workflows",
    params(("id" = Uuid, Path, description = "The run's id"), StateParams),
    responses(
        (status = 200, description = "The past state", body = StateBody, headers(
            ("x-snapshot-version" = u64, description = "Version of the snapshot it was rebuilt from (0: none)"),
            ("x-replayed-events" = u64, description = "Events replayed on top of that snapshot"),
        )),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "No such run, version, or the run did not exist yet", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn state(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<StateParams>,
) -> Result<([(&'static str, String); 2], Json<StateBody>)> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let workflow_id = parse_id(&id)?;
    let as_of = match (&params.as_of, &params.version) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidParameter {
                parameter: "as_of",
                message: "give either as_of or version, not both".into(),
            });
        }
        (Some(time), None) => {
            let time = DateTime::parse_from_rfc3339(time)
                .map_err(|e| Error::InvalidParameter {
                    parameter: "as_of",
                    message: format!("not an RFC 3339 time ({e}), e.g. 2026-11-26T10:00:00Z"),
                })?
                .with_timezone(&Utc);
            if time > Utc::now() {
                return Err(Error::InvalidParameter {
                    parameter: "as_of",
                    message: format!("{} is in the future", time.to_rfc3339()),
                });
            }
            Some(AsOf::Time(time))
        }
        (None, Some(version)) => {
            let version: u64 = version.parse().map_err(|_| Error::InvalidParameter {
                parameter: "version",
                message: "must be a positive integer".into(),
            })?;
            Some(AsOf::Version(version))
        }
        (None, None) => None,
    };
    let past = state
        .repository
        .load_as_of(
            &tenant,
            workflow_id,
            as_of.unwrap_or(AsOf::Version(u64::MAX)),
        )
        .await
        .map_err(|e| Error::Store(Box::new(e)))?;
    if past.current_version == 0 {
        return Err(Error::NotFound(id));
    }
    match as_of {
        Some(AsOf::Version(version)) if version == 0 || version > past.current_version => {
            return Err(Error::UnknownVersion {
                requested: version,
                current: past.current_version,
            });
        }
        Some(AsOf::Time(time)) if past.workflow.version == 0 => {
            return Err(Error::NotYetExisting(time.to_rfc3339()));
        }
        _ => {}
    }
    let mut workflow = past.workflow.state;
    state
        .repository
        .restore_signal_payloads(&tenant, workflow_id, &mut workflow)
        .await
        .map_err(|e| Error::Store(Box::new(e)))?;
    Ok((
        [
            (SNAPSHOT_VERSION_HEADER, past.snapshot_version.to_string()),
            (REPLAYED_EVENTS_HEADER, past.replayed.to_string()),
        ],
        Json(StateBody {
            workflow_id,
            version: past.workflow.version,
            current_version: past.current_version,
            as_of: params.as_of,
            state: workflow,
        }),
    ))
}
