//! `GET /v1/usage`: model calls' tokens and cost, summed over the usage read model
//! (`usage_calls`, projection `usage.v1`) and grouped by any of run, step, tenant, model,
//! provider and day. Always scoped to the caller's tenant. Costs are summed by PostgreSQL
//! `numeric` and travel as decimal strings, never floats.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, NaiveDate, Utc};
use flowline_access::{Caller, Role};
use flowline_domain::TokenUsage;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::application::AppState;
use crate::read_model::UsageView;
use crate::{Error, Result};

/// Most groups one answer returns (`limit`'s maximum).
pub const MAX_GROUPS: i64 = 1000;

/// Query parameters of `GET /v1/usage`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Comma-separated dimensions among `run`, `step`, `tenant`, `model`, `provider`, `day`
    /// (none: one total).
    #[param(
        example = "model,day",
        max_length = 64,
        pattern = r"^((run|step|tenant|model|provider|day)(,(run|step|tenant|model|provider|day))*)?$"
    )]
    group_by: Option<String>,
    /// Calls made at or after this time (RFC 3339, or a date: its start, UTC).
    #[param(example = "2026-12-01")]
    from: Option<String>,
    /// Calls made before this time (RFC 3339), or on or before this date (UTC).
    #[param(example = "2026-12-31")]
    to: Option<String>,
    /// Groups to return, 1 to 1000 (default 100); `truncated` says when more exist.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// One group of model calls.
#[derive(Debug, Serialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct UsageGroup {
    /// The run (when grouped by run or step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<Uuid>,
    /// The step (when grouped by step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The tenant (when grouped by tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The provider (when grouped by provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model (when grouped by model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The UTC day (when grouped by day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    /// What the group's calls used and cost.
    pub usage: UsageView,
}

/// The answer of `GET /v1/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct UsageReport {
    /// The groups, ordered by their dimensions.
    pub groups: Vec<UsageGroup>,
    /// More groups exist than `limit` returned.
    pub truncated: bool,
}

/// What model calls are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
#[graphql(name = "UsageDimension")]
pub enum Dimension {
    /// The run.
    Run,
    /// The run and its step.
    Step,
    /// The tenant (always the caller's).
    Tenant,
    /// The model asked.
    Model,
    /// The provider called.
    Provider,
    /// The UTC day of the call.
    Day,
}

impl Dimension {
    fn parse(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "run" => Self::Run,
            "step" => Self::Step,
            "tenant" => Self::Tenant,
            "model" => Self::Model,
            "provider" => Self::Provider,
            "day" => Self::Day,
            _ => return None,
        })
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Self::Run => &["workflow_id"],
            Self::Step => &["workflow_id", "step_id"],
            Self::Tenant => &["tenant"],
            Self::Model => &["model"],
            Self::Provider => &["provider"],
            Self::Day => &["day"],
        }
    }
}

fn parse_bound(parameter: &'static str, text: &str, end: bool) -> Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let date =
        NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| Error::InvalidParameter {
            parameter,
            message: "not an RFC 3339 time or a date, e.g. 2026-12-01 or 2026-12-01T00:00:00Z"
                .into(),
        })?;
    // A `to` date includes its whole day.
    let date = if end {
        date.succ_opt().ok_or_else(|| Error::InvalidParameter {
            parameter,
            message: "date out of range".into(),
        })?
    } else {
        date
    };
    Ok(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// A validated usage question.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    dimensions: Vec<Dimension>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
}

impl UsageQuery {
    /// Validates the REST parameters; a bad one is a 400 naming it.
    pub fn parse(
        group_by: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        limit: Option<&str>,
    ) -> Result<Self> {
        let dimensions = group_by
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|part| {
                Dimension::parse(part).ok_or_else(|| Error::InvalidParameter {
                    parameter: "group_by",
                    message: format!(
                        "unknown dimension {:?}: use run, step, tenant, model, provider or day",
                        part.chars().take(64).collect::<String>()
                    ),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let limit = match limit {
            None => None,
            Some(text) => Some(text.parse::<i64>().map_err(|_| Error::InvalidParameter {
                parameter: "limit",
                message: format!("must be an integer from 1 to {MAX_GROUPS}"),
            })?),
        };
        Self::new(dimensions, from, to, (limit, "limit"))
    }

    /// Validates a question (GraphQL arguments, or the REST ones once parsed); `from` and
    /// `to` are RFC 3339 times or dates; the limit (100 when absent) comes with the name
    /// of the parameter that gave it, for the error.
    pub fn new(
        given: Vec<Dimension>,
        from: Option<&str>,
        to: Option<&str>,
        (limit, limit_parameter): (Option<i64>, &'static str),
    ) -> Result<Self> {
        let mut dimensions = Vec::with_capacity(given.len());
        for dimension in given {
            if !dimensions.contains(&dimension) {
                dimensions.push(dimension);
            }
        }
        let from = from.map(|t| parse_bound("from", t, false)).transpose()?;
        let to = to.map(|t| parse_bound("to", t, true)).transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(Error::InvalidParameter {
                parameter: "to",
                message: "is before `from`".into(),
            });
        }
        let limit = match limit {
            None => 100,
            Some(n) if (1..=MAX_GROUPS).contains(&n) => n,
            Some(_) => {
                return Err(Error::InvalidParameter {
                    parameter: limit_parameter,
                    message: format!("must be an integer from 1 to {MAX_GROUPS}"),
                });
            }
        };
        Ok(Self {
            dimensions,
            from,
            to,
            limit,
        })
    }

    /// Sums the tenant's calls in the window by the query's dimensions.
    pub async fn run(&self, pool: &sqlx::PgPool, tenant: &str) -> Result<UsageReport> {
        let mut columns: Vec<&str> = Vec::new();
        for dimension in &self.dimensions {
            for column in dimension.columns() {
                if !columns.contains(column) {
                    columns.push(column);
                }
            }
        }
        let grouped = columns.join(", ");
        let (select, group, order) = if columns.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            (
                format!("{grouped}, "),
                format!(" GROUP BY {grouped}"),
                format!(" ORDER BY {grouped}"),
            )
        };
        let sql = format!(
            "SELECT {select}count(*) AS model_calls, \
             count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls, \
             coalesce(sum(input_tokens), 0)::bigint AS input_tokens, \
             coalesce(sum(output_tokens), 0)::bigint AS output_tokens, \
             coalesce(sum(cache_read_tokens), 0)::bigint AS cache_read_tokens, \
             coalesce(sum(cache_write_tokens), 0)::bigint AS cache_write_tokens, \
             coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens, \
             trim_scale(coalesce(sum(cost_usd), 0))::text AS cost_usd \
             FROM usage_calls WHERE tenant = $1 \
             AND ($2::timestamptz IS NULL OR called_at >= $2) \
             AND ($3::timestamptz IS NULL OR called_at < $3){group}{order} LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(self.from)
            .bind(self.to)
            .bind(self.limit + 1)
            .fetch_all(pool)
            .await?;
        let has = |column: &str| columns.contains(&column);
        let mut groups = Vec::with_capacity(rows.len());
        for row in rows.iter().take(self.limit as usize) {
            groups.push(UsageGroup {
                run: if has("workflow_id") {
                    row.try_get("workflow_id")?
                } else {
                    None
                },
                step: if has("step_id") {
                    row.try_get("step_id")?
                } else {
                    None
                },
                tenant: if has("tenant") {
                    row.try_get("tenant")?
                } else {
                    None
                },
                provider: if has("provider") {
                    row.try_get("provider")?
                } else {
                    None
                },
                model: if has("model") {
                    row.try_get("model")?
                } else {
                    None
                },
                day: if has("day") {
                    row.try_get("day")?
                } else {
                    None
                },
                usage: usage_of(row)?,
            });
        }
        Ok(UsageReport {
            truncated: rows.len() as i64 > self.limit,
            groups,
        })
    }
}

/// The sums of one row of the usage query.
fn usage_of(row: &sqlx::postgres::PgRow) -> sqlx::Result<UsageView> {
    let count = |column: &str| row.try_get::<i64, _>(column).map(|n| n.max(0) as u64);
    let tokens = TokenUsage {
        input_tokens: count("input_tokens")?,
        output_tokens: count("output_tokens")?,
        cache_read_tokens: count("cache_read_tokens")?,
        cache_write_tokens: count("cache_write_tokens")?,
        reasoning_tokens: count("reasoning_tokens")?,
    };
    Ok(UsageView::new(
        count("model_calls")?,
        count("unpriced_calls")?,
        &tokens,
        row.try_get("cost_usd")?,
    ))
}

/// Tokens and cost of the caller's tenant's model calls, grouped.
///
/// Sums what the steps' events recorded (costs are never re-priced). Without `group_by`,
/// one group with the totals.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "The groups", body = UsageReport),
        (status = 400, description = "A parameter is invalid; `parameter` names it", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<UsageParams>,
) -> Result<Json<UsageReport>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    let query = UsageQuery::parse(
        params.group_by.as_deref(),
        params.from.as_deref(),
        params.to.as_deref(),
        params.limit.as_deref(),
    )?;
    Ok(Json(query.run(state.read_model.pool(), &tenant).await?))
}
