//! REST routes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use flowline_service_kit::request::tenant;
use serde::Deserialize;
use uuid::Uuid;

use crate::application::AppState;
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
    let workflow_id = parse_id(&id)?;
    state
        .read_model
        .workflow(&tenant, workflow_id)
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
    let filter = ListFilter {
        status: params.status,
        limit: params.limit,
        cursor: params.cursor,
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
    let workflow_id = parse_id(&id)?;
    let events: Vec<EventView> = state
        .read_model
        .events(&tenant, workflow_id)
        .await?
        .ok_or(Error::NotFound(id))?;
    Ok(Json(
        serde_json::json!({ "workflow_id": workflow_id, "events": events }),
    ))
}
