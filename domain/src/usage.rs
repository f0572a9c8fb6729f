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

    /// The sum of two usages, field by field.
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_read_tokens: self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens + other.reasoning_tokens,
        }
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
