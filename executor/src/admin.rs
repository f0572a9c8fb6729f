//! The admin endpoint: runs in flight here, Prometheus metrics, liveness, OpenAPI.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flowline_access::{Caller, Role};
use flowline_service_kit::Problem;
use utoipa::OpenApi;
use utoipa_axum::routes;

use crate::feed::Shared;
use crate::run::RunSummary;

/// What the admin handlers read.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) access: flowline_access::Access,
}

/// The runs this process drives now (with an actor here), oldest first.
#[utoipa::path(get, path = "/admin/runs", tag = "admin", responses(
    (status = 200, description = "Runs in flight in this executor process", body = Vec<RunSummary>),
    (status = 403, description = "Not an operator of the platform tenant"),
))]
pub(crate) async fn runs(
    State(state): State<AdminState>,
    caller: Caller,
) -> Result<Json<Vec<RunSummary>>, Problem> {
    // Every tenant's runs: the platform's operators only.
    caller.require_platform(Role::Operator)?;
    Ok(Json(state.shared.summaries()))
}

/// Prometheus metrics: counters of runs, attempts and appends; gauges of runs in flight,
/// attempts running and waiting per tenant.
#[utoipa::path(get, path = "/metrics", tag = "admin", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
))]
pub(crate) async fn metrics(State(state): State<AdminState>, caller: Option<Caller>) -> Response {
    if let Err(refusal) = state.access.metrics_allowed(caller.as_ref()) {
        return refusal.into_response();
    }
    let shared = &state.shared;
    let (running, per_tenant) = shared.dispatcher.load();
    let label = |tenant: &str| format!("{{tenant=\"{}\"}}", tenant.replace(['"', '\\', '\n'], "_"));
    let gauges = vec![
        (
            "flowline_executor_runs_active",
            "Runs with an actor in this process",
            vec![(String::new(), shared.active_runs() as u64)],
        ),
        (
            "flowline_executor_attempts_running",
            "Step attempts running in this process",
            vec![(String::new(), running as u64)],
        ),
        (
            "flowline_executor_attempts_running_by_tenant",
            "Step attempts running, per tenant",
            per_tenant
                .iter()
                .map(|(t, (r, _))| (label(t), *r as u64))
                .collect(),
        ),
        (
            "flowline_executor_attempts_waiting_by_tenant",
            "Runnable step attempts waiting for a slot, per tenant",
            per_tenant
                .iter()
                .map(|(t, (_, w))| (label(t), *w as u64))
                .collect(),
        ),
    ];
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        format!(
            "{}{}",
            flowline_access::metrics_text(&state.access),
            shared.metrics.render(&gauges)
        ),
    )
        .into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, body = String)))]
pub(crate) async fn livez() -> &'static str {
    "ok"
}

#[derive(OpenApi)]
#[openapi(info(
    title = "flowline executor admin",
    description = "Runs in flight, metrics and health of one executor process. `/admin/runs` \
        needs the credentials of an operator of the platform tenant."
))]
struct ApiDoc;

/// The admin routes with their OpenAPI document at `/openapi.json`.
pub(crate) fn router(state: AdminState) -> Router {
    let (router, api) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs))
        .routes(routes!(metrics))
        .routes(routes!(livez))
        .route("/health", axum::routing::get(livez))
        .split_for_parts();
    let api = flowline_service_kit::openapi::finish(api, &[]);
    router
        .merge(flowline_service_kit::openapi::docs(api))
        .with_state(state)
}
