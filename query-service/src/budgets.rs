//! `GET /v1/budgets/{tenant}`: a tenant's monthly budget for model calls with what this
//! calendar month (UTC) has spent and what calls in flight hold (ADR 24). Read straight
//! from the executor's ledger tables: a budget is configuration, not a projection.

use axum::Json;
use axum::extract::{Path, State};
use flowline_access::{Caller, Role};
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use flowline_service_kit::request::valid_tenant;
use serde::Serialize;

use crate::Result;
use crate::application::AppState;

/// A tenant's budget and this month's spend.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetView {
    tenant: String,
    /// The month (`YYYY-MM`, UTC) the amounts are of.
    month: String,
    /// US dollars per calendar month, a decimal string; `null`: no budget (unlimited).
    monthly_limit_usd: Option<String>,
    /// Settled cost of this month's model calls, a decimal string.
    spent_usd: String,
    /// Held by calls in flight (unexpired reservations), a decimal string.
    reserved_usd: String,
    /// What is left (limit − spent − reserved, at least 0); `null` without a budget.
    remaining_usd: Option<String>,
    /// Model calls settled this month.
    calls: i64,
}

/// A tenant's monthly budget for model calls, with this month's spend and reservations.
#[utoipa::path(
    get,
    path = "/v1/budgets/{tenant}",
    tag = "budgets",
    params(("tenant" = String, Path, description = "The tenant (1-64 ASCII letters, digits, '_', '-' or '.')")),
    responses(
        (status = 200, description = "The budget (`monthly_limit_usd` null when none is set) and this month's amounts", body = BudgetView),
        (status = 400, description = "An invalid tenant (`parameter` names it)", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<BudgetView>> {
    caller.require(Role::Reader)?;
    let tenant = valid_tenant(&tenant, "parameter", "tenant")?;
    caller.require_tenant(&tenant)?;
    let month = flowline_domain::budget::month_of(chrono::Utc::now());
    let (limit, spent, reserved, remaining, calls): (
        Option<String>,
        String,
        String,
        Option<String>,
        i64,
    ) = sqlx::query_as(
        "WITH b AS (SELECT monthly_limit_usd AS l FROM tenant_budgets WHERE tenant = $1), \
              s AS (SELECT coalesce((SELECT spent_usd FROM budget_spend WHERE tenant = $1 AND month = $2), 0) AS v, \
                           coalesce((SELECT calls FROM budget_spend WHERE tenant = $1 AND month = $2), 0) AS n), \
              r AS (SELECT coalesce(sum(amount_usd), 0) AS v FROM budget_reservations \
                    WHERE tenant = $1 AND month = $2 AND expires_at > now()) \
         SELECT trim_scale((SELECT l FROM b))::text, trim_scale(s.v)::text, trim_scale(r.v)::text, \
                trim_scale(greatest((SELECT l FROM b) - s.v - r.v, 0))::text, s.n \
         FROM s, r",
    )
    .bind(&tenant)
    .bind(month)
    .fetch_one(state.read_model.pool())
    .await?;
    Ok(Json(BudgetView {
        tenant,
        month: month.format("%Y-%m").to_string(),
        monthly_limit_usd: limit,
        spent_usd: spent,
        reserved_usd: reserved,
        remaining_usd: remaining,
        calls,
    }))
}
