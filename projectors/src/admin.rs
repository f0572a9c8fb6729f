//! The admin endpoint: health, per-partition lag, Prometheus metrics, and (with a bearer
//! token) dead letters.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use flowline_access::{Caller, Role};
use flowline_service_kit::Problem;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use serde::{Deserialize, Serialize};

use crate::application::AdminState;
use crate::application::Projections;
use crate::checkpoint;
use crate::dead_letter::{self, DeadLetter, Redrive};
use crate::rebuild::{self, RebuildRecord, StartAt};

/// Lag of one partition of one projection.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    #[schema(value_type = String)]
    projection: &'static str,
    partition: i32,
    /// The next offset the projection will apply.
    next_offset: i64,
    high_watermark: i64,
    /// Records on the log not yet applied: `high_watermark - next_offset`, never clamped.
    /// Negative means the checkpoint is ahead of the log (the topic was recreated), and the
    /// projection halts rather than skip (see `/readyz`).
    lag: i64,
}

async fn lag_rows(state: &AdminState) -> Result<Vec<PartitionLag>, Problem> {
    let brokers = state.kafka.brokers.clone();
    let topic = state.kafka.topic.clone();
    let highs =
        tokio::task::spawn_blocking(move || flowline_event_log::high_watermarks(&brokers, &topic))
            .await
            .map_err(|e| Problem::internal(&e))?
            .map_err(|e| Problem::internal(&e))?;
    let mut rows = Vec::new();
    for projection in Projections::NAMES {
        let checkpoints = checkpoint::all(&state.pool, projection, &state.kafka.topic)
            .await
            .map_err(|e| Problem::internal(&e))?;
        rows.extend(highs.iter().map(|&(partition, high)| {
            let next_offset = checkpoints.get(&partition).copied().unwrap_or(0);
            PartitionLag {
                projection,
                partition,
                next_offset,
                high_watermark: high,
                lag: high - next_offset,
            }
        }));
    }
    Ok(rows)
}

/// Lag of every projection on every partition.
#[utoipa::path(get, path = "/admin/lag", tag = "admin", responses(
    (status = 200, description = "One row per projection and partition", body = Vec<PartitionLag>),
))]
pub async fn lag(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<PartitionLag>>, Problem> {
    caller.require_platform(Role::Operator)?;
    Ok(Json(lag_rows(&state).await?))
}

/// Prometheus metrics: `flowline_projection_lag{projection, partition}` and
/// `flowline_dead_letters_pending{projection}` (alert on it above 0: a record was set aside,
/// for instance a different event at an already applied version).
#[utoipa::path(get, path = "/metrics", tag = "admin", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
))]
pub async fn metrics(
    State(state): State<AdminState>,
    caller: Option<Caller>,
) -> Result<axum::response::Response, Problem> {
    if let Err(refusal) = state.access.metrics_allowed(caller.as_ref()) {
        return Ok(refusal.into_response());
    }
    let rows = lag_rows(&state).await?;
    let mut text = flowline_access::metrics_text(&state.access);
    text.push_str(
        "# HELP flowline_projection_lag Records on the log not yet applied by the projection.\n\
         # TYPE flowline_projection_lag gauge\n",
    );
    for row in rows {
        text.push_str(&format!(
            "flowline_projection_lag{{projection=\"{}\",partition=\"{}\"}} {}\n",
            row.projection, row.partition, row.lag
        ));
    }
    let pending: std::collections::HashMap<String, i64> = sqlx::query_as(
        "SELECT projection, count(*) FROM dead_letters \
         WHERE redriven_at IS NULL AND superseded_at IS NULL GROUP BY projection",
    )
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::internal(&e))?
    .into_iter()
    .collect();
    text.push_str(
        "# HELP flowline_dead_letters_pending Records a projection set aside and nobody re-drove yet.\n\
         # TYPE flowline_dead_letters_pending gauge\n",
    );
    for projection in Projections::NAMES {
        text.push_str(&format!(
            "flowline_dead_letters_pending{{projection=\"{projection}\"}} {}\n",
            pending.get(projection).copied().unwrap_or(0)
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response())
}

/// Query of `GET /admin/dead-letters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Also the ones already re-driven.
    #[serde(default)]
    all: bool,
    /// Only this projection's.
    projection: Option<String>,
}

/// Dead letters (pending ones unless `all=true`), in log order.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(DeadLetterQuery),
    responses(
    (status = 200, description = "The dead letters", body = Vec<DeadLetter>),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn dead_letters(
    State(state): State<AdminState>,
    caller: Caller,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    caller.require_platform(Role::Operator)?;
    let letters = dead_letter::list(&state.pool, query.projection.as_deref(), query.all)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(letters))
}

/// One dead letter, with its payload.
#[utoipa::path(get, path = "/admin/dead-letters/{id}", tag = "admin",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
    (status = 200, description = "The dead letter", body = DeadLetter),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No such dead letter", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn dead_letter_by_id(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<DeadLetter>, Problem> {
    caller.require_platform(Role::Operator)?;
    dead_letter::show(&state.pool, id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no dead letter {id}")))
}

/// Applies a pending dead letter again (after a fix).
#[utoipa::path(post, path = "/admin/dead-letters/{id}/redrive", tag = "admin",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
    (status = 200, description = "What the re-drive did", body = Redrive),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No pending dead letter with this id", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn redrive(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Redrive>, Problem> {
    caller.require_platform(Role::Operator)?;
    let outcome = state
        .projections
        .redrive(&state.pool, id)
        .await
        .map_err(|e| Problem::internal(&e))?;
    match outcome {
        Redrive::NotPending { id } => {
            Err(Problem::not_found(format!("no pending dead letter {id}")))
        }
        outcome => Ok(Json(outcome)),
    }
}

/// Applies every pending dead letter again, in log order.
#[utoipa::path(post, path = "/admin/dead-letters/redrive", tag = "admin",
    responses(
    (status = 200, description = "What each re-drive did", body = Vec<Redrive>),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn redrive_all(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<Redrive>>, Problem> {
    caller.require_platform(Role::Operator)?;
    let outcomes = state
        .projections
        .redrive_all(&state.pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(outcomes))
}

/// Body of `POST /admin/rebuilds`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RebuildRequest {
    /// `workflow_read_model`, `workflow_graph` or `usage`.
    #[schema(example = "workflow_read_model")]
    projection: String,
    /// Replay from this time (RFC 3339) instead of the beginning.
    #[schema(format = DateTime)]
    from: Option<String>,
}

/// Starts (or resumes) a zero-downtime rebuild in this process; poll
/// `GET /admin/rebuilds/{id}`.
#[utoipa::path(post, path = "/admin/rebuilds", tag = "admin", request_body = RebuildRequest,
    responses(
    (status = 202, description = "Started, or resumed (a rebuild from the same point that was interrupted or failed)", body = RebuildRecord),
    (status = 400, description = "Malformed JSON", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 409, description = "A rebuild of the projection from another point is still running", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 422, description = "Unknown projection, invalid `from`, or a graph kept in Dgraph (`errors` names the field)", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn start_rebuild(
    State(state): State<AdminState>,
    caller: Caller,
    body: Result<Json<RebuildRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_platform(Role::Operator)?;
    let Json(request) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let invalid = |field: &str, detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request",
            detail.clone(),
        )
        .with_errors([serde_json::json!({"field": field, "message": detail})])
    };
    let projection = crate::cli::projection_name(&request.projection).ok_or_else(|| {
        invalid(
            "projection",
            format!(
                "unknown projection '{}'; expected one of {}",
                request.projection,
                Projections::NAMES.join(", ")
            ),
        )
    })?;
    if let Some(refusal) = rebuild::refusal(projection, &state.graph) {
        return Err(invalid("projection", refusal));
    }
    let at = match &request.from {
        None => StartAt::Beginning,
        Some(text) => {
            let time = chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| invalid("from", format!("not an RFC 3339 time: {e}")))?
                .with_timezone(&chrono::Utc);
            // The log's timestamps count milliseconds from 1970; the broker refuses
            // earlier ones.
            if time.timestamp_millis() < 0 {
                return Err(invalid(
                    "from",
                    "before 1970-01-01, where the log's timestamps start".into(),
                ));
            }
            StartAt::Time(time)
        }
    };
    let (record, _resumed) = rebuild::start(&state.pool, &state.kafka, projection, at)
        .await
        .map_err(|e| match e {
            crate::Error::Rebuild(message) => invalid("from", message),
            crate::Error::RebuildBusy(message) => Problem::new(
                StatusCode::CONFLICT,
                "rebuild-running",
                "A rebuild is running",
                message,
            ),
            other => Problem::internal(&other),
        })?;
    state.rebuilds.launch(record.clone());
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// A rebuild's status and progress.
#[utoipa::path(get, path = "/admin/rebuilds/{id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The rebuild's id")),
    responses(
    (status = 200, description = "The rebuild", body = RebuildRecord),
        (status = 401, description = "Missing or wrong bearer token", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 403, description = "Not an operator of the platform tenant", body = ProblemDetails, content_type = PROBLEM_JSON),
    (status = 404, description = "No such rebuild", body = ProblemDetails, content_type = PROBLEM_JSON),
))]
pub async fn rebuild_status(
    State(state): State<AdminState>,
    caller: Caller,
    Path(id): Path<uuid::Uuid>,
) -> Result<Json<RebuildRecord>, Problem> {
    caller.require_platform(Role::Operator)?;
    rebuild::find(&state.pool, id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no rebuild {id}")))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "flowline projectors admin",
        description = "Operating the projections: lag, metrics, dead letters and rebuilds. \
            They act on every tenant, so each needs `Authorization: Bearer` with the \
            credentials of an operator of the platform tenant (AUTH_PLATFORM_TENANT). Every \
            error is `application/problem+json` (RFC 9457)."
    ),
    tags((name = "admin", description = "Projection operations"))
)]
struct ApiDoc;

/// The admin routes and the routes serving their document (`/openapi.json`, `/docs`).
pub fn router() -> axum::Router<AdminState> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    let (router, api) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(lag))
        .routes(routes!(metrics))
        .routes(routes!(dead_letters))
        .routes(routes!(redrive_all))
        .routes(routes!(dead_letter_by_id))
        .routes(routes!(redrive))
        .routes(routes!(start_rebuild))
        .routes(routes!(rebuild_status))
        .split_for_parts();
    let api = flowline_service_kit::openapi::finish(api, &[]);
    router.merge(flowline_service_kit::openapi::docs(api))
}
