//! HTTP routes: turn requests into commands and accepted commands into responses.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flowline_access::{Caller, Role};
use flowline_domain::command::MAX_ID_CHARS;
use flowline_domain::{
    CancelWorkflow, DomainError, PauseWorkflow, SendSignal, StepCommand, SubmitWorkflow,
    WorkflowCommand,
};
use flowline_event_log::ConsistencyToken;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use flowline_service_kit::request::{body_bytes, json_body};
use flowline_service_kit::{Problem, telemetry};
use serde::Serialize;
use uuid::Uuid;

use crate::application::AppState;
use crate::commands::{Accepted, CommandContext, Stream};
use crate::idempotency::{self, CachedAnswer};
use crate::{Error, Result};

/// The header carrying a command's consistency token (also in the body).
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-consistency-token";

/// The body of every 2xx answer to a command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Accepted)]
pub(crate) struct AcceptedBody {
    workflow_id: Uuid,
    /// The stream's version after this command (also the `ETag`).
    version: u64,
    /// The run's status after this command.
    #[schema(value_type = String)]
    status: &'static str,
    event_id: Uuid,
    command_id: Uuid,
    log_partition: i32,
    log_offset: i64,
    /// Where the events landed on the log; queries given it wait until it is projected.
    consistency_token: String,
}

impl From<&Accepted> for AcceptedBody {
    fn from(accepted: &Accepted) -> Self {
        Self {
            workflow_id: accepted.workflow_id,
            version: accepted.version,
            status: accepted.state.status.as_str(),
            event_id: accepted.event_id,
            command_id: accepted.command_id,
            log_partition: accepted.log.partition,
            log_offset: accepted.log.offset,
            consistency_token: ConsistencyToken::at(accepted.log.partition, accepted.log.offset)
                .to_string(),
        }
    }
}

/// A 2xx answer with `ETag` (and `Location` for a creation), from its JSON body.
fn answer(status: StatusCode, mut body: serde_json::Value, replayed: bool) -> Response {
    let version = body["version"].as_u64().unwrap_or_default();
    // Derived from the body's log position, so an answer cached before tokens existed
    // carries one too.
    let token = body["log_partition"]
        .as_i64()
        .zip(body["log_offset"].as_i64())
        .and_then(|(partition, offset)| {
            Some(ConsistencyToken::at(partition.try_into().ok()?, offset))
        })
        .map(|token| token.to_string());
    if let Some(token) = &token {
        body["consistency_token"] = serde_json::Value::from(token.as_str());
    }
    let location = (status == StatusCode::CREATED).then(|| {
        format!(
            "/v1/workflows/{}",
            body["workflow_id"].as_str().unwrap_or_default()
        )
    });
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are valid"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    if let Some(token) = token {
        headers.insert(
            CONSISTENCY_TOKEN_HEADER,
            HeaderValue::from_str(&token).expect("digits, ':' and ',' are valid"),
        );
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn invalid_header(name: &str, detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-header",
        "Invalid header",
        detail,
    )
    .with("header", name)
}

/// `If-Match: "<version>"` (quotes optional, weak validators accepted).
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        invalid_header(
            "If-Match",
            "If-Match must be a version in quotes, e.g. \"3\"",
        )
    })
}

fn correlation_id(headers: &HeaderMap) -> Result<Option<Uuid>, Problem> {
    headers
        .get("x-correlation-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| Uuid::parse_str(v.trim()).ok())
                .ok_or_else(|| {
                    invalid_header("X-Correlation-Id", "X-Correlation-Id must be a UUID")
                })
        })
        .transpose()
}

fn workflow_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found(format!("no workflow with id '{raw}'")))
}

/// The step named by a path segment. Ids that no step can have (submit refuses them) are
/// answered 404 at once, like malformed run ids, without loading the run; only the first
/// `MAX_ID_CHARS` characters are echoed, so a huge segment does not come back in the answer.
fn step_id(raw: String) -> Result<String, Error> {
    if flowline_domain::command::is_identifier(&raw) {
        Ok(raw)
    } else {
        let shown = raw.chars().take(MAX_ID_CHARS).collect();
        Err(DomainError::UnknownStep(shown).into())
    }
}

/// Reads a body that carries nothing: empty, or a JSON object (whose members are ignored),
/// so clients that always send `{}` work; anything else is refused as for other commands.
fn no_body(body: &[u8]) -> Result<(), Problem> {
    json_body::<Option<serde_json::Map<String, serde_json::Value>>>(body).map(drop)
}

/// What a command's request brings besides the command: who sends it, its headers, its
/// path and its body (the idempotency fingerprint covers the last two).
struct CommandRequest<'a> {
    caller: &'a Caller,
    headers: &'a HeaderMap,
    path: &'a str,
    body: &'a [u8],
}

/// Runs a parsed command for a request: answers a keyed retry from the cache, otherwise
/// executes and caches the first answer.
async fn dispatch(
    state: &AppState,
    request: CommandRequest<'_>,
    stream: Stream,
    command: WorkflowCommand,
    status: StatusCode,
) -> Result<Response> {
    let CommandRequest {
        caller,
        headers,
        path,
        body,
    } = request;
    telemetry::adopt_remote_parent(headers);
    let (traceparent, tracestate) = telemetry::current_trace_context();
    caller.require(Role::Submitter)?;
    let tenant = caller.tenant().to_owned();
    let keyed = idempotency::keyed(headers, &tenant, "POST", path, body)?;
    if let Some(keyed) = &keyed
        && let Some(cached) = state.answers.get(&tenant, &keyed.key).await
    {
        if cached.fingerprint != keyed.fingerprint {
            return Err(Error::IdempotencyKeyReused);
        }
        let status = StatusCode::from_u16(cached.status).unwrap_or(status);
        return Ok(answer(status, cached.body, true));
    }
    let context = CommandContext {
        command_id: keyed.as_ref().map_or_else(Uuid::now_v7, |k| k.command_id),
        fingerprint: keyed.as_ref().map(|k| k.fingerprint.clone()),
        tenant: tenant.clone(),
        correlation_id: correlation_id(headers)?,
        expected_version: expected_version(headers)?,
        traceparent,
        tracestate,
    };
    let accepted = state.handler.execute(&context, stream, command).await?;
    let body = serde_json::to_value(AcceptedBody::from(&accepted)).expect("serializable");
    if let Some(keyed) = &keyed {
        let cached = CachedAnswer {
            fingerprint: keyed.fingerprint.clone(),
            status: status.as_u16(),
            body: body.clone(),
        };
        state.answers.put(&tenant, &keyed.key, &cached).await;
    }
    Ok(answer(status, body, false))
}

/// Submits a run.
#[utoipa::path(
    post,
    path = "/v1/workflows",
    tag = "commands",
    request_body = crate::api::SubmitDoc,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 201, description = "Submitted and on the log", body = AcceptedBody, headers(
            ("Location" = String, description = "The run in the query service"),
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields (`errors` names each) or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    caller.require(Role::Submitter)?;
    let body = body_bytes(body)?;
    let mut command: SubmitWorkflow = json_body(&body)?;
    command.submitted_by = Some(caller.actor());
    let stream = Stream::New(Uuid::now_v7());
    let command = WorkflowCommand::Submit(command);
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        command,
        StatusCode::CREATED,
    )
    .await
}

/// Cancels a run.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/cancel",
    tag = "commands",
    request_body(content = Option<crate::api::CancelDoc>, description = "Optional"),
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 200, description = "Cancelled and on the log", body = AcceptedBody, headers(
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 409, description = "The run's status forbids it", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields (`errors` names each) or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let stream = Stream::Existing(workflow_id(&id)?);
    let body = body_bytes(body)?;
    let command: Option<CancelWorkflow> = json_body(&body)?;
    let command = WorkflowCommand::Cancel(command.unwrap_or_default());
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        command,
        StatusCode::OK,
    )
    .await
}

/// Delivers a named signal (any JSON payload) to a run.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/signals/{name}",
    tag = "commands",
    request_body(content = Object, description = "The signal's payload: any JSON value in the accepted language of commands (arrays and objects nest at most 32 deep, at most 10000 items or members each, keys at most 256 characters, no U+0000 in strings or keys); refused parts are named `payload.a.b`. The event must fit the log (`MAX_EVENT_BYTES`, 413 otherwise). A run accepts caller commands until its stream holds half of `MAX_STREAM_EVENTS`, then 409 `stream-full`"),
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("name" = String, Path, description = "The signal's name (1-128 ASCII letters, digits, '_', '-', '.')", pattern = "^[A-Za-z0-9_.-]{1,128}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 200, description = "Delivered and on the log", body = AcceptedBody, headers(
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 409, description = "The run's status forbids it, or its stream is full (`stream-full`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields (`errors` names each) or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id, signal = %name))]
pub async fn signal(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let stream = Stream::Existing(workflow_id(&id)?);
    let body = body_bytes(body)?;
    let payload: serde_json::Value = json_body(&body)?;
    let command = WorkflowCommand::Signal(SendSignal { name, payload });
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        command,
        StatusCode::OK,
    )
    .await
}

/// Pauses a run: attempts already running finish, no new step starts until it is resumed.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/pause",
    tag = "commands",
    request_body(content = Option<crate::api::PauseDoc>, description = "Optional"),
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 200, description = "Paused (status `paused`) and on the log", body = AcceptedBody, headers(
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 409, description = "The run is not `pending` or `running` (already paused, or finished); `workflow_status` says its status; or the stream is full (`stream-full`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields (`errors` names each) or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let stream = Stream::Existing(workflow_id(&id)?);
    let body = body_bytes(body)?;
    let command: Option<PauseWorkflow> = json_body(&body)?;
    let command = WorkflowCommand::Pause(command.unwrap_or_default());
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        command,
        StatusCode::OK,
    )
    .await
}

/// Resumes a paused run: it goes back to `running`, or to `pending` when it had not
/// started yet.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/resume",
    tag = "commands",
    request_body(content = Option<Object>, description = "Optional and not read: empty, or a JSON object such as `{}`"),
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 200, description = "Resumed and on the log", body = AcceptedBody, headers(
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 404, description = "No such run for this tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 409, description = "The run is not paused; `workflow_status` says its status; or the stream is full (`stream-full`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "A body that is not a JSON object, or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let stream = Stream::Existing(workflow_id(&id)?);
    let body = body_bytes(body)?;
    no_body(&body)?;
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        WorkflowCommand::Resume,
        StatusCode::OK,
    )
    .await
}

/// Runs a failed step of a failed run again: the run goes back to `running`, the step and
/// the steps the failure stopped go back to `pending`.
#[utoipa::path(
    post,
    path = "/v1/workflows/{id}/steps/{step}/retry",
    tag = "commands",
    request_body(content = Option<Object>, description = "Optional and not read: empty, or a JSON object such as `{}`"),
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The step's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key and body get the original answer and append nothing; the same key with another body is 422 (1-255 visible ASCII characters)"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: apply only if the run is at this version, else 412 with `current_version`"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "Recorded on the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, recorded on the event"),
    ),
    responses(
        (status = 200, description = "Retried (status `running`) and on the log", body = AcceptedBody, headers(
            ("ETag" = String, description = "The stream's version, quoted"),
            ("X-Consistency-Token" = String, description = "Where the event landed on the log (`partition:offset`); send it to the query service to read your write"),
            ("Idempotent-Replayed" = String, description = "`true` when this is the cached answer to a retried key"),
        )),
        (status = 404, description = "No such run for this tenant, or the run has no such step (`step` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 409, description = "The run is not `failed` (`workflow_status`) or the step is not `failed` (`step_status`); `step` names the step; or the stream is full (`stream-full`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 400, description = "Malformed JSON or an invalid header (`header` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 412, description = "`If-Match` is stale; `current_version` says the current one", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than MAX_BODY_BYTES, or an event whose record would be larger than MAX_EVENT_BYTES (`event-too-large`)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "A body that is not a JSON object, or a reused Idempotency-Key", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "Stored but not yet confirmed on the log (`publication-pending`, with `event_id` and `workflow_id`: published later, do not resubmit blindly), or the store's answer was lost (`outcome-unknown`)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
#[tracing::instrument(skip_all, fields(workflow_id = %id, step = %step))]
pub async fn retry_step(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let stream = Stream::Existing(workflow_id(&id)?);
    let step_id = step_id(step)?;
    let body = body_bytes(body)?;
    no_body(&body)?;
    // `Retry` is the one step command a caller may give; the others are the executor's
    // record of attempts and have no route.
    let command = WorkflowCommand::Step {
        step_id: step_id.clone(),
        command: StepCommand::Retry,
    };
    dispatch(
        &state,
        CommandRequest {
            caller: &caller,
            headers: &headers,
            path: uri.path(),
            body: &body,
        },
        stream,
        command,
        StatusCode::OK,
    )
    .await
    .map_err(|error| error.about_step(&step_id))
}

/// `GET /health`
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /metrics` (Prometheus text): `flowline_outbox_parked_events`, the events the relay
/// parked because the log refused them (or an earlier event of their stream). Alert on > 0.
pub async fn metrics(State(state): State<AppState>, caller: Option<Caller>) -> Result<Response> {
    if let Err(refusal) = state.access.metrics_allowed(caller.as_ref()) {
        return Ok(refusal.into_response());
    }
    let parked = state.parked.count().await?;
    let text = format!(
        "# HELP flowline_outbox_parked_events Stored events the relay parked instead of publishing.\n\
         # TYPE flowline_outbox_parked_events gauge\n\
         flowline_outbox_parked_events {parked}\n{}",
        flowline_access::metrics_text(&state.access)
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem::not_found("no such endpoint")
}
