//! REST over the graph view: which runs used a tool or a model, a step's transitive
//! dependencies and dependents, and the lineage of its output.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use flowline_graph::GraphStore;
use flowline_service_kit::request::tenant;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::application::AppState;
use crate::{Error, Result};

/// Deepest walk a caller may ask for.
pub(crate) const MAX_DEPTH: u32 = 50;

/// Query of `GET /v1/graph/runs`.
#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    tool: Option<String>,
    model: Option<String>,
}

/// Query of the step walks.
#[derive(Debug, Deserialize)]
pub struct DepthQuery {
    depth: Option<u32>,
}

fn graph_error(error: flowline_graph::Error) -> Error {
    Error::Graph(error.to_string())
}

/// `GET /v1/graph/runs?tool=<name>` or `?model=<name>`
pub async fn runs(
    State(state): State<AppState>,
    Query(query): Query<RunsQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let tenant = tenant(&headers)?;
    let runs = match (&query.tool, &query.model) {
        (Some(tool), None) => state.graph.runs_using_tool(&tenant, tool).await,
        (None, Some(model)) => state.graph.runs_using_model(&tenant, model).await,
        _ => {
            return Err(Error::InvalidParameter {
                parameter: "tool",
                message: "give exactly one of tool or model".into(),
            });
        }
    }
    .map_err(graph_error)?;
    Ok(Json(json!({ "runs": runs })))
}

/// Which walk over a step.
#[derive(Clone, Copy)]
pub enum Walk {
    /// Upstream.
    Dependencies,
    /// Downstream.
    Dependents,
    /// Upstream with tools, models and principal.
    Lineage,
}

async fn walk(
    state: &AppState,
    headers: &HeaderMap,
    (id, step): (String, String),
    depth: Option<u32>,
    walk: Walk,
) -> Result<Json<Value>> {
    let tenant = tenant(headers)?;
    let run = Uuid::parse_str(&id).map_err(|_| Error::NotFound(id.clone()))?;
    let workflow = state
        .read_model
        .workflow(&tenant, run)
        .await?
        .ok_or(Error::NotFound(id))?;
    if !workflow.steps.iter().any(|s| s.id == step) {
        return Err(Error::UnknownStep(step));
    }
    let depth = depth.unwrap_or(10);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(Error::InvalidParameter {
            parameter: "depth",
            message: format!("must be between 1 and {MAX_DEPTH}"),
        });
    }
    let body = match walk {
        Walk::Dependencies => {
            json!({ "steps": state.graph.dependencies(run, &step, depth).await.map_err(graph_error)? })
        }
        Walk::Dependents => {
            json!({ "steps": state.graph.dependents(run, &step, depth).await.map_err(graph_error)? })
        }
        Walk::Lineage => json!(
            state
                .graph
                .lineage(run, &step, depth)
                .await
                .map_err(graph_error)?
        ),
    };
    Ok(Json(
        json!({ "workflow_id": run, "step": step, "depth": depth, "result": body }),
    ))
}

/// `GET /v1/workflows/{id}/steps/{step}/dependencies?depth=`
pub async fn dependencies(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    walk(&state, &headers, path, query.depth, Walk::Dependencies).await
}

/// `GET /v1/workflows/{id}/steps/{step}/dependents?depth=`
pub async fn dependents(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    walk(&state, &headers, path, query.depth, Walk::Dependents).await
}

/// `GET /v1/workflows/{id}/steps/{step}/lineage?depth=`
pub async fn lineage(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    walk(&state, &headers, path, query.depth, Walk::Lineage).await
}
