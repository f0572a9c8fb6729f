//! Budgets per tenant per calendar month (UTC) for model calls: the limit a caller sets,
//! the month a call counts in, and the refusal a step fails with when a call would pass
//! it. The ledger itself (reservations, settled spend) lives with the executor, in
//! PostgreSQL.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;

/// Largest monthly limit accepted, in US dollars.
pub const MAX_MONTHLY_LIMIT_USD: i64 = 1_000_000_000;

/// Most decimal places of a limit (the ledger's scale).
pub const MAX_SCALE: u32 = 12;

/// Parses a monthly limit written as a decimal string (`"12.50"`): 0 or more, at most
/// [`MAX_MONTHLY_LIMIT_USD`], at most [`MAX_SCALE`] decimal places. Money is never read
/// from a JSON number (a float).
pub fn parse_monthly_limit(text: &str) -> Result<Decimal, String> {
    let shown = crate::validation::shown(text);
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "'{shown}' is not a decimal number of US dollars such as \"12.50\""
        ));
    }
    let limit: Decimal = trimmed
        .parse()
        .map_err(|_| format!("'{shown}' is not a decimal number such as \"12.50\""))?;
    if limit.scale() > MAX_SCALE {
        return Err(format!("at most {MAX_SCALE} decimal places"));
    }
    if limit > Decimal::from(MAX_MONTHLY_LIMIT_USD) {
        return Err(format!("at most {MAX_MONTHLY_LIMIT_USD} US dollars"));
    }
    Ok(limit.normalize())
}

/// The month (its first day, UTC) a call made at `at` counts in.
pub fn month_of(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).expect("the first of a month exists")
}

/// A call that would pass its tenant's budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "budget exceeded: tenant '{tenant}' has a budget of {limit_usd} USD for {month}; \
     {spent_usd} USD is spent and {reserved_usd} USD reserved by calls in flight, so this \
     call's maximum cost of {needed_usd} USD does not fit"
)]
pub struct BudgetExceeded {
    /// The tenant.
    pub tenant: String,
    /// The month (`YYYY-MM`).
    pub month: String,
    /// Its monthly limit.
    pub limit_usd: Decimal,
    /// Settled spend this month.
    pub spent_usd: Decimal,
    /// Held by calls in flight.
    pub reserved_usd: Decimal,
    /// What this call would have reserved.
    pub needed_usd: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_decimal_strings() {
        assert_eq!(parse_monthly_limit("12.50").unwrap().to_string(), "12.5");
        assert_eq!(parse_monthly_limit("0").unwrap(), Decimal::ZERO);
        for bad in [
            "",
            "-1",
            "1e3",
            "12,50",
            "abc",
            "1.0000000000001",
            "2000000000",
        ] {
            assert!(parse_monthly_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_call_counts_in_its_utc_month() {
        let at: DateTime<Utc> = "2026-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(month_of(at).to_string(), "2026-12-01");
    }
}
