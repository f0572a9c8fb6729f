//! The admin endpoint: health, per-partition lag, and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use flowline_service_kit::Problem;
use serde::Serialize;

use crate::application::AdminState;
use crate::checkpoint;
use crate::workflow_read_model;

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
    let checkpoints = checkpoint::all(&state.pool, workflow_read_model::NAME, &state.kafka.topic)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(highs
        .into_iter()
        .map(|(partition, high)| {
            let next_offset = checkpoints.get(&partition).copied().unwrap_or(0);
            PartitionLag {
                projection: workflow_read_model::NAME,
                partition,
                next_offset,
                high_watermark: high,
                lag: (high - next_offset).max(0),
            }
        })
        .collect())
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
