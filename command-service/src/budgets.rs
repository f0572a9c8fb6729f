//! `PUT /v1/budgets/{tenant}`: a tenant's monthly limit for model calls (ADR 24). The limit
//! is configuration, not a run's history: it is a row of `tenant_budgets`, read by every
//! executor before it reserves a call's maximum cost.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use flowline_access::{Caller, Role};
use flowline_service_kit::Problem;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use flowline_service_kit::request::{body_bytes, json_body, valid_tenant};
use serde::{Deserialize, Serialize};

use crate::application::AppState;

/// The body of `PUT /v1/budgets/{tenant}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetBudget {
    /// US dollars per calendar month (UTC), as a decimal string (`"12.50"`; never a JSON
    /// number, which would be a float): 0 to 1 000 000 000, at most 12 decimal places.
    #[schema(example = "12.50", pattern = "^[0-9]+(\\.[0-9]{1,12})?$")]
    monthly_limit_usd: serde_json::Value,
}

/// A tenant's budget as set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BudgetBody {
    tenant: String,
    /// US dollars per calendar month (UTC), a decimal string.
    monthly_limit_usd: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn invalid_limit(message: String) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "Invalid request",
        format!("monthly_limit_usd: {message}"),
    )
    .with_errors([serde_json::json!({"field": "monthly_limit_usd", "message": message})])
}

/// Sets a tenant's monthly budget for model calls.
#[utoipa::path(
    put,
    path = "/v1/budgets/{tenant}",
    tag = "budgets",
    request_body = SetBudget,
    params(("tenant" = String, Path, description = "The tenant (1-64 ASCII letters, digits, '_', '-' or '.')")),
    responses(
        (status = 200, description = "The budget as set; it holds from the next model call on", body = BudgetBody),
        (status = 400, description = "Malformed JSON or an invalid tenant (`parameter` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "`monthly_limit_usd` missing or not a decimal string in range (`errors` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn set_budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BudgetBody>, Problem> {
    caller.require(Role::Admin)?;
    let tenant = valid_tenant(&tenant, "parameter", "tenant")?;
    caller.require_tenant(&tenant)?;
    let body = body_bytes(body)?;
    let request: SetBudget = json_body(&body)?;
    let limit = match &request.monthly_limit_usd {
        serde_json::Value::String(text) => {
            flowline_domain::budget::parse_monthly_limit(text).map_err(invalid_limit)?
        }
        serde_json::Value::Number(_) => {
            return Err(invalid_limit(
                "must be a decimal string such as \"12.50\", not a JSON number".into(),
            ));
        }
        _ => {
            return Err(invalid_limit(
                "is required, a decimal string such as \"12.50\"".into(),
            ));
        }
    };
    let (limit, updated_at): (String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO tenant_budgets (tenant, monthly_limit_usd, updated_at) \
         VALUES ($1, $2::numeric, now()) \
         ON CONFLICT (tenant) DO UPDATE SET monthly_limit_usd = EXCLUDED.monthly_limit_usd, \
             updated_at = EXCLUDED.updated_at \
         RETURNING trim_scale(monthly_limit_usd)::text, updated_at",
    )
    .bind(&tenant)
    .bind(limit.to_string())
    .fetch_one(&state.pool)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(Json(BudgetBody {
        tenant,
        monthly_limit_usd: limit,
        updated_at,
    }))
}
