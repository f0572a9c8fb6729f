//! The admin endpoint: health, per-partition lag, Prometheus metrics, and (with a bearer
//! token) dead letters.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use flowline_service_kit::Problem;
use serde::{Deserialize, Serialize};

use crate::application::AdminState;
use crate::application::Projections;
use crate::checkpoint;
use crate::dead_letter::{self, DeadLetter, Redrive};
use crate::rebuild::{self, RebuildRecord, StartAt};

/// Lag of one partition of one projection.
#[derive(Debug, Serialize)]
pub struct PartitionLag {
    projection: &'static str,
    partition: i32,
    next_offset: i64,
    high_watermark: i64,
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
                lag: (high - next_offset).max(0),
            }
        }));
    }
    Ok(rows)
}

/// `GET /admin/lag`
pub async fn lag(State(state): State<AdminState>) -> Result<Json<Vec<PartitionLag>>, Problem> {
    Ok(Json(lag_rows(&state).await?))
}

/// `GET /metrics` (Prometheus text format)
pub async fn metrics(State(state): State<AdminState>) -> Result<impl IntoResponse, Problem> {
    let rows = lag_rows(&state).await?;
    let mut text = String::from(
        "# HELP flowline_projection_lag Records on the log not yet applied by the projection.\n\
         # TYPE flowline_projection_lag gauge\n",
    );
    for row in rows {
        text.push_str(&format!(
            "flowline_projection_lag{{projection=\"{}\",partition=\"{}\"}} {}\n",
            row.projection, row.partition, row.lag
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    ))
}

/// Checks `Authorization: Bearer <ADMIN_TOKEN>`.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(expected) = &state.admin_token else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "Admin endpoints disabled",
            "set ADMIN_TOKEN on the projectors to enable this endpoint",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "send Authorization: Bearer <ADMIN_TOKEN>",
        ))
    }
}

/// Query of `GET /admin/dead-letters`.
#[derive(Debug, Deserialize)]
pub struct DeadLetterQuery {
    #[serde(default)]
    all: bool,
    projection: Option<String>,
}

/// `GET /admin/dead-letters[?all=true][&projection=<name>]`
pub async fn dead_letters(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    authorize(&state, &headers)?;
    let letters = dead_letter::list(&state.pool, query.projection.as_deref(), query.all)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(letters))
}

/// `GET /admin/dead-letters/{id}`
pub async fn dead_letter_by_id(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<DeadLetter>, Problem> {
    authorize(&state, &headers)?;
    dead_letter::show(&state.pool, id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no dead letter {id}")))
}

/// `POST /admin/dead-letters/{id}/redrive`
pub async fn redrive(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Redrive>, Problem> {
    authorize(&state, &headers)?;
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

/// `POST /admin/dead-letters/redrive` (every pending one, in log order)
pub async fn redrive_all(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Redrive>>, Problem> {
    authorize(&state, &headers)?;
    let outcomes = state
        .projections
        .redrive_all(&state.pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(outcomes))
}

/// Body of `POST /admin/rebuilds`.
#[derive(Debug, Deserialize)]
pub struct RebuildRequest {
    projection: String,
    from: Option<String>,
}

/// `POST /admin/rebuilds` `{"projection": "workflow_read_model", "from": "<RFC 3339>"?}`:
/// starts (or resumes) a rebuild in this process; poll `GET /admin/rebuilds/{id}`.
pub async fn start_rebuild(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<RebuildRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, Problem> {
    authorize(&state, &headers)?;
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
    let at = match &request.from {
        None => StartAt::Beginning,
        Some(text) => StartAt::Time(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| invalid("from", format!("not an RFC 3339 time: {e}")))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let (record, _resumed) = rebuild::start(&state.pool, &state.kafka, projection, at)
        .await
        .map_err(|e| match e {
            crate::Error::Rebuild(message) => invalid("from", message),
            other => Problem::internal(&other),
        })?;
    state.rebuilds.launch(record.clone());
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// `GET /admin/rebuilds/{id}`
pub async fn rebuild_status(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
) -> Result<Json<RebuildRecord>, Problem> {
    authorize(&state, &headers)?;
    rebuild::find(&state.pool, id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no rebuild {id}")))
}
