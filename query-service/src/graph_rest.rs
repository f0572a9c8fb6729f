//! REST over the graph view: which runs used a tool or a model (paged by keyset on the
//! run id), a step's transitive dependencies and dependents, and the lineage of its output.

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flowline_access::{Caller, Role};
use flowline_graph::{GraphStore, RunPage, RunRef};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;

use crate::application::AppState;
use crate::{Error, Result, rest};

/// Deepest walk a caller may ask for.
pub(crate) const MAX_DEPTH: u32 = 50;
/// Default and largest page of `GET /v1/graph/runs`.
const DEFAULT_RUNS_PAGE: u32 = 100;
const MAX_RUNS_PAGE: u32 = 1_000;

/// Query of `GET /v1/graph/runs`: exactly one of `tool` and `model`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Runs with an `mcp_tool` step calling this tool (`server/tool`).
    tool: Option<String>,
    /// Runs with an `llm` step using this model.
    model: Option<String>,
    /// Runs per page, 1 to 1000 (default 100), oldest first.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl RunsQuery {
    /// The page asked for: its size and the run it continues after.
    fn page(&self) -> Result<RunPage> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_RUNS_PAGE,
            Some(text) => text
                .parse()
                .ok()
                .filter(|limit| (1..=MAX_RUNS_PAGE).contains(limit))
                .ok_or_else(|| Error::InvalidParameter {
                    parameter: "limit",
                    message: format!("must be an integer between 1 and {MAX_RUNS_PAGE}"),
                })?,
        };
        let after = self
            .cursor
            .as_deref()
            .map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|bytes| Uuid::from_slice(&bytes).ok())
                    .ok_or_else(|| Error::InvalidParameter {
                        parameter: "cursor",
                        message: "not a cursor of this list; pass next_cursor back".into(),
                    })
            })
            .transpose()?;
        Ok(RunPage {
            after,
            limit,
            newest_first: false,
        })
    }
}

/// The cursor continuing after `run` (opaque to clients: base64url of its id's bytes).
fn runs_cursor(run: &RunRef) -> String {
    URL_SAFE_NO_PAD.encode(run.run.as_bytes())
}

/// Query of the step walks.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DepthQuery {
    /// How many edges to follow, 1 to 50 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 50)]
    depth: Option<String>,
}

impl DepthQuery {
    fn depth(&self) -> Result<Option<u32>> {
        self.depth
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| Error::InvalidParameter {
                    parameter: "depth",
                    message: format!("must be an integer between 1 and {MAX_DEPTH}"),
                })
            })
            .transpose()
    }
}

fn graph_error(error: flowline_graph::Error) -> Error {
    Error::from(error)
}

/// Runs that used a tool or a model (from the graph view), oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/graph/runs",
    tag = "graph",
    params(RunsQuery),
    responses(
        (status = 200, description = "`{runs: [{run, name}], next_cursor}`: `next_cursor` is null on the last page, else pass it as `cursor`", body = Object),
        (status = 400, description = "Neither or both of tool and model, or an invalid `limit` or `cursor`", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The read took longer than QUERY_STATEMENT_TIMEOUT_MS; retry", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Value>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let page = query.page()?;
    let tool = rest::text_parameter("tool", query.tool)?;
    let model = rest::text_parameter("model", query.model)?;
    // One more than the page tells whether another page follows.
    let asked = RunPage {
        limit: page.limit + 1,
        ..page
    };
    let mut runs = match (&tool, &model) {
        (Some(tool), None) => state.graph.runs_using_tool(&tenant, tool, asked).await,
        (None, Some(model)) => state.graph.runs_using_model(&tenant, model, asked).await,
        _ => {
            return Err(Error::InvalidParameter {
                parameter: "tool",
                message: "give exactly one of tool or model".into(),
            });
        }
    }
    .map_err(graph_error)?;
    let next_cursor = (runs.len() > page.limit as usize).then(|| {
        runs.truncate(page.limit as usize);
        runs.last().map(runs_cursor)
    });
    Ok(Json(
        json!({ "runs": runs, "next_cursor": next_cursor.flatten() }),
    ))
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
    caller: &Caller,
    (id, step): (String, String),
    depth: Option<u32>,
    walk: Walk,
) -> Result<Json<Value>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
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

/// The steps a step depends on, transitively.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/steps/{step}/dependencies",
    tag = "graph",
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The step's id"),
        DepthQuery,
    ),
    responses(
        (status = 200, description = "`{workflow_id, step, depth, result}`", body = Object),
        (status = 400, description = "`depth` is invalid", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "No such run or step", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The read took longer than QUERY_STATEMENT_TIMEOUT_MS; retry", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn dependencies(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    caller: Caller,
) -> Result<Json<Value>> {
    walk(&state, &caller, path, query.depth()?, Walk::Dependencies).await
}

/// The steps depending on a step, transitively.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/steps/{step}/dependents",
    tag = "graph",
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The step's id"),
        DepthQuery,
    ),
    responses(
        (status = 200, description = "`{workflow_id, step, depth, result}`", body = Object),
        (status = 400, description = "`depth` is invalid", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "No such run or step", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The read took longer than QUERY_STATEMENT_TIMEOUT_MS; retry", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn dependents(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    caller: Caller,
) -> Result<Json<Value>> {
    walk(&state, &caller, path, query.depth()?, Walk::Dependents).await
}

/// Where a step's output comes from: upstream steps, tools, models and the principal.
#[utoipa::path(
    get,
    path = "/v1/workflows/{id}/steps/{step}/lineage",
    tag = "graph",
    params(
        ("id" = Uuid, Path, description = "The run's id"),
        ("step" = String, Path, description = "The step's id"),
        DepthQuery,
    ),
    responses(
        (status = 200, description = "`{workflow_id, step, depth, result}`", body = Object),
        (status = 400, description = "`depth` is invalid", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "No such run or step", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The read took longer than QUERY_STATEMENT_TIMEOUT_MS; retry", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn lineage(
    State(state): State<AppState>,
    Path(path): Path<(String, String)>,
    Query(query): Query<DepthQuery>,
    caller: Caller,
) -> Result<Json<Value>> {
    walk(&state, &caller, path, query.depth()?, Walk::Lineage).await
}
