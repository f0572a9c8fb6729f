//! `POST/GET/DELETE /v1/api-keys`: a tenant's admins manage its API keys (ADR 27).

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flowline_access::api_keys::{ApiKey, CreatedKey};
use flowline_access::{Caller, Role};
use flowline_service_kit::Problem;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use flowline_service_kit::request::{body_bytes, json_body};
use serde::Deserialize;

use crate::application::AppState;

/// `POST /v1/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    /// What the key is for (1-200 characters).
    name: String,
    /// The role it acts with; at most the creator's.
    role: Role,
    /// When it stops working (RFC 3339); never when omitted.
    expires_at: Option<DateTime<Utc>>,
}

fn invalid(field: &str, message: &str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "Invalid request",
        format!("{field}: {message}"),
    )
    .with_errors([serde_json::json!({"field": field, "message": message})])
}

/// Creates an API key of the caller's tenant; its text is in this answer only.
#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = CreatedKey),
        (status = 403, description = "Not an admin", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid fields (`errors` names each)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    caller.require(Role::Admin)?;
    let body = body_bytes(body)?;
    let request: CreateKey = json_body(&body)?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "must be 1-200 characters without control characters",
        ));
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(invalid("expires_at", "must be in the future"));
    }
    let created = state
        .access
        .keys()
        .create(
            caller.tenant(),
            name,
            request.role,
            &caller.actor(),
            request.expires_at,
        )
        .await
        .map_err(|error| Problem::internal(&error))?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The caller's tenant's API keys, newest first (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    responses(
        (status = 200, description = "The tenant's keys", body = Vec<ApiKey>),
        (status = 403, description = "Not an admin", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ApiKey>>, Problem> {
    caller.require(Role::Admin)?;
    let keys = state
        .access
        .keys()
        .list(caller.tenant())
        .await
        .map_err(|error| Problem::internal(&error))?;
    Ok(Json(keys))
}

/// Revokes an API key of the caller's tenant: refused from the next request on.
#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Revoked (also when it was already)"),
        (status = 403, description = "Not an admin", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 404, description = "The tenant has no such key", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    caller.require(Role::Admin)?;
    let revoked = state
        .access
        .keys()
        .revoke(caller.tenant(), &id)
        .await
        .map_err(|error| Problem::internal(&error))?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("no such API key"))
    }
}
