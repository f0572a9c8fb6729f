//! What a step's model calls used and cost, as its events record it.
//!
//! Token counts are normalised across wire APIs so that each token is counted, and billed,
//! once: `input_tokens` excludes cached reads and cache writes (Anthropic's convention;
//! OpenAI's `prompt_tokens` includes its cached tokens, which an adapter subtracts), and
//! `output_tokens` excludes `reasoning_tokens` (OpenAI reports reasoning inside
//! `completion_tokens`; Anthropic does not report it apart, so it stays in output there).
//! The cost is computed when the call is made, with the price in effect then, and travels
//! on the event: a rebuild reads it back and never re-prices history.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Tokens of one model call, normalised (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens read neither from nor into a cache.
    pub input_tokens: u64,
    /// Generated tokens, reasoning excluded.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written into the provider's cache.
    pub cache_write_tokens: u64,
    /// Tokens the model spent reasoning, where the provider reports them apart.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Every token of the call.
    pub fn total(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.reasoning_tokens
    }

    /// Adds `other` into this one, field by field.
    pub fn add(&mut self, other: &Self) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }
}

/// One call to a model made by a step attempt (an attempt that falls back to other models
/// makes several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCall {
    /// The provider's name in the providers file.
    pub provider: String,
    /// The model asked.
    pub model: String,
    /// When the call was made: the time its price is taken at.
    pub called_at: DateTime<Utc>,
    /// What it used (for a call cut short, what was reported before the cut).
    pub usage: TokenUsage,
    /// Its cost in US dollars, exact; `None` when the price table has no price for the
    /// model at that time.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub cost_usd: Option<Decimal>,
    /// The price table entry the cost was computed with (`provider/model@effective_from`).
    pub price_ref: Option<String>,
    /// `false` when the call did not finish (a stream cut, a timeout, an error status).
    pub complete: bool,
}

/// What a set of model calls (an attempt's, a step's, a run's) used and cost, summed: what
/// reads show next to a run, a step and an attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// Model calls made.
    pub model_calls: u64,
    /// Of those, calls without a price: their cost is not in `cost_usd`.
    pub unpriced_calls: u64,
    /// Their tokens, field by field.
    #[serde(flatten)]
    pub tokens: TokenUsage,
    /// Their cost in US dollars, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub cost_usd: Decimal,
}

impl UsageSummary {
    /// The sum of `calls`; `None` when there are none (a step that calls no model has no
    /// usage, rather than a usage of zero).
    pub fn of(calls: &[ModelCall]) -> Option<Self> {
        calls.iter().fold(None, |sum, call| {
            let mut sum = sum.unwrap_or_default();
            sum.model_calls += 1;
            match call.cost_usd {
                Some(cost) => sum.cost_usd += cost,
                None => sum.unpriced_calls += 1,
            }
            sum.tokens.add(&call.usage);
            Some(sum)
        })
    }

    /// The sum of several summaries; `None` when none is given.
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a UsageSummary>) -> Option<Self> {
        parts.into_iter().fold(None, |sum, part| {
            let mut sum = sum.unwrap_or_default();
            sum.add(part);
            Some(sum)
        })
    }

    /// Adds `other` into this one.
    pub fn add(&mut self, other: &UsageSummary) {
        self.model_calls += other.model_calls;
        self.unpriced_calls += other.unpriced_calls;
        self.cost_usd += other.cost_usd;
        self.tokens.add(&other.tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn call(input: u64, output: u64, cache_read: u64, cost: Option<&str>) -> ModelCall {
        ModelCall {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            called_at: Utc::now(),
            usage: TokenUsage {
                input_tokens: input,
                output_tokens: output,
                cache_read_tokens: cache_read,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
            },
            cost_usd: cost.map(|c| Decimal::from_str(c).unwrap()),
            price_ref: None,
            complete: true,
        }
    }

    #[test]
    fn no_calls_have_no_usage() {
        assert_eq!(UsageSummary::of(&[]), None);
        assert_eq!(UsageSummary::total([]), None);
    }

    #[test]
    fn calls_sum_exactly_and_unpriced_ones_are_counted_apart() {
        let first =
            UsageSummary::of(&[call(100, 20, 50, Some("0.000000123")), call(1, 2, 0, None)])
                .unwrap();
        let second = UsageSummary::of(&[call(10, 5, 0, Some("0.1"))]).unwrap();
        let sum = UsageSummary::total([&first, &second]).unwrap();
        assert_eq!(sum.model_calls, 3);
        assert_eq!(sum.unpriced_calls, 1);
        assert_eq!(sum.tokens.input_tokens, 111);
        assert_eq!(sum.tokens.output_tokens, 27);
        assert_eq!(sum.tokens.cache_read_tokens, 50);
        assert_eq!(sum.cost_usd.to_string(), "0.100000123");
    }

    #[test]
    fn the_stored_form_keeps_the_cost_as_exact_text() {
        let summary = UsageSummary::of(&[call(3, 4, 0, Some("0.30000000000000000001"))]).unwrap();
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["cost_usd"], "0.30000000000000000001");
        assert_eq!(json["input_tokens"], 3);
        assert_eq!(
            serde_json::from_value::<UsageSummary>(json).unwrap(),
            summary
        );
    }
}
