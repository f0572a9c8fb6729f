//! The budget ledger of model calls in PostgreSQL (ADR 24): before a call, its maximum
//! cost is reserved against the tenant's monthly limit under a row lock of the tenant's
//! budget (spent + reserved + this call ≤ limit, or the call is refused); after it, the
//! reservation is replaced by the real cost. Every executor process shares the ledger, so
//! concurrent calls never overspend by more than what their reservations underestimated.
//! A reservation of a process that died expires and stops counting.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use flowline_domain::budget::{BudgetExceeded, month_of};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The call would pass the budget.
    #[error(transparent)]
    Exceeded(#[from] BudgetExceeded),
    /// The tenant has a budget, and the model has no price to reserve with.
    #[error(
        "tenant '{tenant}' has a budget, and {provider}/{model} has no price in the price table: \
         its cost could not be held against the budget"
    )]
    Unpriced {
        /// The tenant.
        tenant: String,
        /// The provider.
        provider: String,
        /// The model.
        model: String,
    },
    /// The ledger could not be read or written.
    #[error("budget ledger: {0}")]
    Database(#[from] sqlx::Error),
}

/// A call's hold on its tenant's month (none for a tenant without a budget).
#[derive(Debug, Clone)]
pub struct Reservation {
    id: Option<Uuid>,
    tenant: String,
    month: NaiveDate,
    amount: Decimal,
}

impl Reservation {
    /// What was reserved.
    pub fn amount(&self) -> Decimal {
        self.amount
    }
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct BudgetLedger {
    pool: PgPool,
}

fn decimal(text: &str) -> Decimal {
    text.parse().unwrap_or_default()
}

impl BudgetLedger {
    /// A ledger over `pool` (migration 24's tables).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Reserves `amount` (the call's maximum cost; `None` when the model has no price) for
    /// a call of `tenant` made `at`, held at most `hold`.
    pub async fn reserve(
        &self,
        tenant: &str,
        provider_model: (&str, &str),
        at: DateTime<Utc>,
        amount: Option<Decimal>,
        hold: Duration,
    ) -> Result<Reservation, ReserveError> {
        let month = month_of(at);
        let mut transaction = self.pool.begin().await?;
        // The row lock serialises every reservation of the tenant across processes.
        let limit: Option<String> = sqlx::query_scalar(
            "SELECT monthly_limit_usd::text FROM tenant_budgets WHERE tenant = $1 FOR UPDATE",
        )
        .bind(tenant)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(limit) = limit.as_deref().map(decimal) else {
            return Ok(Reservation {
                id: None,
                tenant: tenant.to_owned(),
                month,
                amount: Decimal::ZERO,
            });
        };
        let Some(amount) = amount else {
            return Err(ReserveError::Unpriced {
                tenant: tenant.to_owned(),
                provider: provider_model.0.to_owned(),
                model: provider_model.1.to_owned(),
            });
        };
        sqlx::query("DELETE FROM budget_reservations WHERE tenant = $1 AND expires_at <= now()")
            .bind(tenant)
            .execute(&mut *transaction)
            .await?;
        // One statement, one snapshot: a settlement committing in between cannot make the
        // spend read before it and the reservations after it.
        let (spent, reserved): (String, String) = sqlx::query_as(
            "SELECT \
               coalesce((SELECT spent_usd FROM budget_spend WHERE tenant = $1 AND month = $2), 0)::text, \
               coalesce((SELECT sum(amount_usd) FROM budget_reservations \
                         WHERE tenant = $1 AND month = $2 AND expires_at > now()), 0)::text",
        )
        .bind(tenant)
        .bind(month)
        .fetch_one(&mut *transaction)
        .await?;
        let (spent, reserved) = (decimal(&spent), decimal(&reserved));
        if spent + reserved + amount > limit {
            return Err(BudgetExceeded {
                tenant: tenant.to_owned(),
                month: month.format("%Y-%m").to_string(),
                limit_usd: limit.normalize(),
                spent_usd: spent.normalize(),
                reserved_usd: reserved.normalize(),
                needed_usd: amount.normalize(),
            }
            .into());
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO budget_reservations (id, tenant, month, amount_usd, expires_at) \
             VALUES ($1, $2, $3, $4::numeric, now() + make_interval(secs => $5))",
        )
        .bind(id)
        .bind(tenant)
        .bind(month)
        .bind(amount.to_string())
        .bind(hold.as_secs_f64())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Reservation {
            id: Some(id),
            tenant: tenant.to_owned(),
            month,
            amount,
        })
    }

    /// Replaces the reservation by the call's real `cost` (also for a call that failed
    /// part-way). The spend of tenants without a budget is recorded too, so a budget set
    /// mid-month counts what the month already spent.
    pub async fn settle(
        &self,
        reservation: &Reservation,
        cost: Decimal,
    ) -> Result<(), sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        if let Some(id) = reservation.id {
            sqlx::query("DELETE FROM budget_reservations WHERE id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query(
            "INSERT INTO budget_spend (tenant, month, spent_usd, calls) VALUES ($1, $2, $3::numeric, 1) \
             ON CONFLICT (tenant, month) DO UPDATE \
             SET spent_usd = budget_spend.spent_usd + EXCLUDED.spent_usd, calls = budget_spend.calls + 1",
        )
        .bind(&reservation.tenant)
        .bind(reservation.month)
        .bind(cost.to_string())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await
    }
}
