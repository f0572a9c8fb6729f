//! REST routes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use flowline_event_store::AsOf;
use flowline_service_kit::request::tenant;
use serde::Deserialize;
use uuid::Uuid;

use crate::application::AppState;
use crate::consistency::token_from_headers;
use crate::read_model::{EventView, ListFilter, WorkflowPage, WorkflowView};
use crate::{Error, Result};

/// Query parameters of `GET /v1/workflows`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn parse_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::NotFound(raw.to_owned()))
}

/// `GET /v1/workflows/{id}`
pub async fn workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<WorkflowView>> {
    let tenant = tenant(&headers)?;
    let token = token_from_headers(&headers)?;
    let workflow_id = parse_id(&id)?;
    state
        .reads
        .workflow(&tenant, workflow_id, token.as_ref())
        .await?
        .map(Json)
        .ok_or(Error::NotFound(id))
}

/// `GET /v1/workflows?status=&limit=&cursor=`
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Json<WorkflowPage>> {
    let tenant = tenant(&headers)?;
    let token = token_from_headers(&headers)?;
    state.reads.gate().wait_for_any(token.as_ref()).await?;
    let filter = ListFilter {
        status: params.status,
        limit: params.limit,
        cursor: params.cursor,
        ..ListFilter::default()
    };
    Ok(Json(state.read_model.list(&tenant, &filter).await?))
}

/// `GET /v1/workflows/{id}/events`
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let tenant = tenant(&headers)?;
    let token = token_from_headers(&headers)?;
    let workflow_id = parse_id(&id)?;
    state.reads.gate().wait_for_any(token.as_ref()).await?;
    let events: Vec<EventView> = state
        .read_model
        .events(&tenant, workflow_id)
        .await?
        .ok_or(Error::NotFound(id))?;
    Ok(Json(
        serde_json::json!({ "workflow_id": workflow_id, "events": events }),
    ))
}

/// Query parameters of `GET /v1/workflows/{id}/state`.
#[derive(Debug, Deserialize)]
pub struct StateParams {
    as_of: Option<String>,
    version: Option<String>,
}

/// `GET /v1/workflows/{id}/state?as_of=<RFC 3339>|version=<n>`: the aggregate state as it
/// was then, rebuilt by replay (from a snapshot no later than it).
pub async fn state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<StateParams>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    let tenant = tenant(&headers)?;
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
    Ok(Json(serde_json::json!({
        "workflow_id": workflow_id,
        "version": past.workflow.version,
        "current_version": past.current_version,
        "as_of": params.as_of,
        "state": past.workflow.state,
    })))
}
