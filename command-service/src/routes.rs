//! HTTP routes: turn requests into commands and accepted commands into responses.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flowline_domain::{CancelWorkflow, SendSignal, SubmitWorkflow, WorkflowCommand};
use flowline_service_kit::request::{json_body, tenant};
use flowline_service_kit::{Problem, telemetry};
use serde::Serialize;
use uuid::Uuid;

use crate::Result;
use crate::application::AppState;
use crate::commands::{Accepted, CommandContext, Stream};

/// The body of every 2xx answer to a command.
#[derive(Debug, Serialize)]
struct AcceptedBody {
    workflow_id: Uuid,
    version: u64,
    status: &'static str,
    event_id: Uuid,
    command_id: Uuid,
    log_partition: i32,
    log_offset: i64,
}

fn accepted(status: StatusCode, accepted: Accepted) -> Response {
    let body = AcceptedBody {
        workflow_id: accepted.workflow_id,
        version: accepted.version,
        status: accepted.state.status.as_str(),
        event_id: accepted.event_id,
        command_id: accepted.command_id,
        log_partition: accepted.log.partition,
        log_offset: accepted.log.offset,
    };
    let etag = format!("\"{}\"", accepted.version);
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("digits are valid"),
    );
    if status == StatusCode::CREATED {
        let location = format!("/v1/workflows/{}", accepted.workflow_id);
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("uuid is valid"),
        );
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

fn context(headers: &HeaderMap) -> Result<CommandContext, Problem> {
    telemetry::adopt_remote_parent(headers);
    let (traceparent, tracestate) = telemetry::current_trace_context();
    let correlation_id = match headers.get("x-correlation-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| Uuid::parse_str(v.trim()).ok())
                .ok_or_else(|| {
                    invalid_header("X-Correlation-Id", "X-Correlation-Id must be a UUID")
                })?,
        ),
    };
    Ok(CommandContext {
        tenant: tenant(headers)?,
        correlation_id,
        expected_version: expected_version(headers)?,
        traceparent,
        tracestate,
    })
}

fn workflow_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::not_found(format!("no workflow with id '{raw}'")))
}

/// `POST /v1/workflows`
#[tracing::instrument(skip_all)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let context = context(&headers)?;
    let command: SubmitWorkflow = json_body(body)?;
    let accepted_command = state
        .handler
        .execute(
            &context,
            Stream::New(Uuid::now_v7()),
            WorkflowCommand::Submit(command),
        )
        .await?;
    Ok(accepted(StatusCode::CREATED, accepted_command))
}

/// `POST /v1/workflows/{id}/cancel`
#[tracing::instrument(skip_all, fields(workflow_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let context = context(&headers)?;
    let id = workflow_id(&id)?;
    let command: Option<CancelWorkflow> = json_body(body)?;
    let accepted_command = state
        .handler
        .execute(
            &context,
            Stream::Existing(id),
            WorkflowCommand::Cancel(command.unwrap_or_default()),
        )
        .await?;
    Ok(accepted(StatusCode::OK, accepted_command))
}

/// `POST /v1/workflows/{id}/signals/{name}`
#[tracing::instrument(skip_all, fields(workflow_id = %id, signal = %name))]
pub async fn signal(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let context = context(&headers)?;
    let id = workflow_id(&id)?;
    let payload: serde_json::Value = json_body(body)?;
    let accepted_command = state
        .handler
        .execute(
            &context,
            Stream::Existing(id),
            WorkflowCommand::Signal(SendSignal { name, payload }),
        )
        .await?;
    Ok(accepted(StatusCode::OK, accepted_command))
}

/// `GET /health`
pub async fn health() -> &'static str {
    "ok"
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem::not_found("no such endpoint")
}
