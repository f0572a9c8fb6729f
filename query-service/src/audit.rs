//! Operators' audit endpoints: the event log read directly from Kafka (the same reading as
//! the `audit` CLI, from `flowline-audit`), behind the bearer `ADMIN_TOKEN`. They are not
//! tenant-scoped: `tenant` is a filter, and the token is the authority.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use flowline_audit::{EventLine, Filter, Finding, LogReader, Summary, query::parse_time};
use flowline_service_kit::Problem;
use flowline_service_kit::request::admin_bearer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::application::AppState;
use crate::{Error, Result};

/// Events returned when `limit` is not given.
const DEFAULT_LIMIT: usize = 1000;
/// Most events one request returns.
const MAX_LIMIT: usize = 10_000;
const NDJSON: &str = "application/x-ndjson";

/// What the audit endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct AuditAccess {
    pub(crate) reader: LogReader,
    pub(crate) admin_token: Option<String>,
}

/// Query of `GET /v1/audit/events`; all text, so a bad value is reported by name.
#[derive(Debug, Deserialize)]
pub struct EventsParams {
    tenant: Option<String>,
    stream: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// Query of `GET /v1/audit/verify`.
#[derive(Debug, Deserialize)]
pub struct VerifyParams {
    tenant: Option<String>,
}

/// Answer of `GET /v1/audit/verify`.
#[derive(Debug, Serialize)]
pub struct Verification {
    problems: Vec<Finding>,
    summary: Summary,
}

/// Checks `Authorization: Bearer <ADMIN_TOKEN>`.
fn authorize(access: &AuditAccess, headers: &HeaderMap) -> Result<()> {
    admin_bearer(headers, access.admin_token.as_deref(), "query service")?;
    Ok(())
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

/// `GET /v1/audit/events?tenant&stream&type&since&until&limit`: the matching events on
/// the log up to its end, oldest first per partition; a JSON array, or NDJSON when the
/// request accepts `application/x-ndjson`.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<EventsParams>,
) -> Result<Response> {
    authorize(&state.audit, &headers)?;
    let (filter, limit) = params.parse()?;
    let reader = state.audit.reader.clone();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines: Vec<EventLine> = Vec::new();
        flowline_audit::query_log(&reader, &filter, Some(limit), |line| lines.push(line))
            .map(|_| lines)
    })
    .await
    .map_err(|e| Error::Request(Problem::internal(&e)))??;
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

/// `GET /v1/audit/verify[?tenant]`: what `audit verify` reports, as one JSON document.
pub async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<VerifyParams>,
) -> Result<Json<Verification>> {
    authorize(&state.audit, &headers)?;
    let reader = state.audit.reader.clone();
    let verification = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        flowline_audit::verify_log(&reader, params.tenant.as_deref(), |finding| {
            problems.push(finding.clone());
        })
        .map(|summary| Verification { problems, summary })
    })
    .await
    .map_err(|e| Error::Request(Problem::internal(&e)))??;
    Ok(Json(verification))
}
