//! Operators' audit endpoints: the event log read directly from Kafka (the same reading as
//! the `audit` CLI, from `flowline-audit`), for the operator role. An operator of the
//! platform tenant reads every tenant (`tenant` is then a filter); any other operator
//! reads its own tenant only.
//!
//! Every call scans the log (from `since`, or from the start), so scans are bounded: at
//! most `AUDIT_MAX_CONCURRENT_SCANS` run at once (one more is a 429 with `Retry-After`),
//! `events` stops at `limit` matches, and `verify` returns at most [`MAX_FINDINGS`]
//! findings (its summary counts them all).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use flowline_access::{Caller, Role};
use flowline_audit::{EventLine, Filter, Finding, LogReader, Summary, query::parse_time};
use flowline_service_kit::Problem;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::application::AppState;
use crate::{Error, Result};
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;

/// Events returned when `limit` is not given.
const DEFAULT_LIMIT: usize = 1000;
/// Most events one request returns.
const MAX_LIMIT: usize = 10_000;
/// Most findings one verification returns.
pub const MAX_FINDINGS: usize = 1_000;
const NDJSON: &str = "application/x-ndjson";

/// What the audit endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct AuditAccess {
    reader: LogReader,
    scans: Arc<Semaphore>,
    max_scans: usize,
}

impl AuditAccess {
    /// Reads with `reader`, `max_scans` at a time.
    pub(crate) fn new(reader: LogReader, max_scans: usize) -> Self {
        Self {
            reader,
            scans: Arc::new(Semaphore::new(max_scans)),
            max_scans,
        }
    }

    /// A place for one scan, or [`Error::AuditBusy`] when all are taken.
    fn scan_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.scans
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::AuditBusy {
                limit: self.max_scans,
            })
    }
}

/// Query of `GET /v1/audit/events`; all text, so a bad value is reported by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only this tenant's events.
    #[param(max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    tenant: Option<String>,
    /// Only this stream's (workflow's) events.
    #[param(value_type = Option<Uuid>)]
    stream: Option<String>,
    /// Only events of this type (`WorkflowSubmitted`, ...).
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 128)]
    event_type: Option<String>,
    /// Only events that occurred at or after this time (RFC 3339); the scan starts there.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only events that occurred before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Most events returned, 1 to 10000 (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    limit: Option<String>,
}

/// Query of `GET /v1/audit/verify`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyParams {
    /// Only this tenant's streams.
    #[param(max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    tenant: Option<String>,
}

/// Answer of `GET /v1/audit/verify`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// What was found (`problem`, `stream_id`, `tenant`, `version`, `partition`, `offset`,
    /// `detail`, `benign`), at most 1000: `summary` counts them all.
    #[schema(value_type = Vec<Object>)]
    problems: Vec<Finding>,
    /// More findings than `problems` holds were made.
    problems_truncated: bool,
    /// Totals: `records`, `streams`, `unchained`, `problems`, `ok`.
    #[schema(value_type = Object)]
    summary: Summary,
}

/// One event on the log as the audit reads it: position, tenant, stream, version, ids,
/// type, time, hash chain, CloudEvents headers and the decoded envelope.
#[derive(utoipa::ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct AuditEvent(serde_json::Value);

/// The tenant an audit read covers: any (or the `tenant` filter) for an operator of the
/// platform tenant, else the caller's own (naming another one is 403).
fn audited_tenant(caller: &Caller, requested: Option<String>) -> Result<Option<String>> {
    caller.require(Role::Operator)?;
    if caller.is_platform() {
        return Ok(requested);
    }
    if let Some(requested) = &requested {
        caller.require_tenant(requested)?;
    }
    Ok(Some(caller.tenant().to_owned()))
}

fn invalid(parameter: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidParameter {
        parameter,
        message: message.into(),
    }
}

impl EventsParams {
    fn parse(self) -> Result<(Filter, usize)> {
        let time = |parameter: &'static str, value: Option<String>| {
            value
                .map(|text| {
                    parse_time(parameter, &text)
                        .map_err(|_| invalid(parameter, "not an RFC 3339 time"))
                })
                .transpose()
        };
        let stream = self
            .stream
            .map(|text| Uuid::parse_str(&text).map_err(|_| invalid("stream", "not a UUID")))
            .transpose()?;
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    invalid("limit", format!("not a whole number from 1 to {MAX_LIMIT}"))
                })?,
        };
        let filter = Filter {
            tenant: self.tenant,
            stream,
            event_type: self.event_type,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
        };
        Ok((filter, limit))
    }
}

/// The matching events on the log up to its end, oldest first per partition: a JSON
/// array, or NDJSON when the request accepts `application/x-ndjson`. Operators only
/// (the operator role; the platform tenant's operators read every tenant).
#[utoipa::path(
    get,
    path = "/v1/audit/events",
    operation_id = "audit_events",
    tag = "audit",
    params(EventsParams),
    responses(
        (status = 200, description = "The events: a JSON array, or one JSON object per line with `Accept: application/x-ndjson`", content(
            (Vec<AuditEvent> = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 401, description = "No or invalid credentials", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator, or another tenant named by a tenant's operator", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 429, description = "AUDIT_MAX_CONCURRENT_SCANS scans run already; retry (Retry-After)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The event log cannot be read", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(mut params): Query<EventsParams>,
) -> Result<Response> {
    params.tenant = audited_tenant(&caller, params.tenant.take())?;
    let (filter, limit) = params.parse()?;
    let permit = state.audit.scan_permit()?;
    let reader = state.audit.reader.clone();
    let mut lines = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut lines: Vec<EventLine> = Vec::new();
        flowline_audit::query_log(&reader, &filter, Some(limit), |line| lines.push(line))
            .map(|_| lines)
    })
    .await
    .map_err(|e| Error::Request(Problem::internal(&e)))??;
    // Operators read every tenant's events: each line is opened with its own tenant's keys.
    for line in &mut lines {
        if let Some(data) = &mut line.data {
            crate::personal::open(&state.vault, &line.tenant, data).await?;
        }
    }
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON));
    if wants_ndjson {
        let mut body = String::new();
        for line in &lines {
            body.push_str(&serde_json::to_string(line).expect("serializable"));
            body.push('\n');
        }
        Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response())
    } else {
        Ok(Json(lines).into_response())
    }
}

/// What `audit verify` reports, as one JSON document: the hash chain and version order of
/// every stream on the log (or one tenant's). Operators only.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    operation_id = "audit_verify",
    tag = "audit",
    params(VerifyParams),
    responses(
        (status = 200, description = "The findings and totals", body = Verification),
        (status = 401, description = "No or invalid credentials", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator, or another tenant named by a tenant's operator", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 429, description = "AUDIT_MAX_CONCURRENT_SCANS scans run already; retry (Retry-After)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The event log cannot be read", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<VerifyParams>,
) -> Result<Json<Verification>> {
    let tenant = crate::rest::text_parameter("tenant", params.tenant)?;
    let tenant = audited_tenant(&caller, tenant)?;
    let permit = state.audit.scan_permit()?;
    let reader = state.audit.reader.clone();
    let verification = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut problems = Vec::new();
        let mut problems_truncated = false;
        flowline_audit::verify_log(&reader, tenant.as_deref(), |finding| {
            if problems.len() < MAX_FINDINGS {
                problems.push(finding.clone());
            } else {
                problems_truncated = true;
            }
        })
        .map(|summary| Verification {
            problems,
            problems_truncated,
            summary,
        })
    })
    .await
    .map_err(|e| Error::Request(Problem::internal(&e)))??;
    Ok(Json(verification))
}
