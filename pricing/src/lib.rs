//! The pricing engine: a versioned price table of model calls and the exact arithmetic of
//! their cost.
//!
//! Prices are USD per million tokens, per provider and model, each with the time range it
//! is in effect. A call is priced with the entry in effect when it was made; the cost is
//! `rust_decimal` arithmetic end to end (a price is parsed from its decimal text, never from
//! a float), and it is recorded on the step's event by the executor, so history is never
//! re-priced. Nothing here does I/O but [`PriceTable::load`], which reads the table's file.

use std::path::Path;

use chrono::{DateTime, Utc};
use flowline_domain::{ModelCall, TokenUsage};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Why a price table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("price table {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid table.
    #[error("price table: {0}")]
    Invalid(String),
}

/// Prices of one model in one time range, USD per million tokens of each class.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The provider's name (as in the providers file).
    pub provider: String,
    /// The model.
    pub model: String,
    /// First instant the price applies.
    pub effective_from: DateTime<Utc>,
    /// First instant it no longer applies (`None`: until a later entry starts).
    #[serde(default)]
    pub effective_to: Option<DateTime<Utc>>,
    /// Prompt tokens neither read from nor written to a cache.
    #[serde(deserialize_with = "decimal_text")]
    pub input: Decimal,
    /// Generated tokens.
    #[serde(deserialize_with = "decimal_text")]
    pub output: Decimal,
    /// Prompt tokens read from the cache.
    #[serde(deserialize_with = "decimal_text")]
    pub cache_read: Decimal,
    /// Prompt tokens written to the cache.
    #[serde(deserialize_with = "decimal_text")]
    pub cache_write: Decimal,
    /// Reasoning tokens reported apart from output.
    #[serde(deserialize_with = "decimal_text")]
    pub reasoning: Decimal,
}

/// A price written as decimal text: a TOML float would pass through binary floating
/// point before becoming a decimal, which is exactly what money must not do.
fn decimal_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim()
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("'{text}' is not a decimal: {e}")))
}

/// `pricing/prices.toml` as it was when this crate was built.
const SHIPPED: &str = include_str!("../prices.toml");

const PER_MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

fn tokens(n: u64) -> Decimal {
    Decimal::from(n)
}

impl Price {
    /// `provider/model@effective_from`: which entry priced a call, recorded beside its cost.
    pub fn reference(&self) -> String {
        format!(
            "{}/{}@{}",
            self.provider,
            self.model,
            self.effective_from
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    }

    /// Whether the price applies at `at`.
    pub fn applies_at(&self, at: DateTime<Utc>) -> bool {
        self.effective_from <= at && self.effective_to.is_none_or(|to| at < to)
    }

    /// The exact cost of `usage` at this price.
    pub fn cost(&self, usage: &TokenUsage) -> Decimal {
        (tokens(usage.input_tokens) * self.input
            + tokens(usage.output_tokens) * self.output
            + tokens(usage.cache_read_tokens) * self.cache_read
            + tokens(usage.cache_write_tokens) * self.cache_write
            + tokens(usage.reasoning_tokens) * self.reasoning)
            / PER_MILLION
    }

    /// The most a call can cost with `prompt_tokens` of prompt and at most
    /// `max_output_tokens` generated: every prompt token at the dearer of the input and
    /// cache-write prices, every generated token at the dearer of output and reasoning. A
    /// budget reserves this before the call.
    pub fn ceiling(&self, prompt_tokens: u64, max_output_tokens: u64) -> Decimal {
        (tokens(prompt_tokens) * self.input.max(self.cache_write)
            + tokens(max_output_tokens) * self.output.max(self.reasoning))
            / PER_MILLION
    }

    fn check(&self) -> Result<(), String> {
        let name = self.reference();
        for (field, value) in [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
            ("reasoning", self.reasoning),
        ] {
            if value.is_sign_negative() {
                return Err(format!("{name}: {field} is negative ({value})"));
            }
        }
        if self
            .effective_to
            .is_some_and(|to| to <= self.effective_from)
        {
            return Err(format!("{name}: effective_to is not after effective_from"));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    price: Vec<Price>,
}

/// Every price, validated: within one provider and model, no two entries are in effect
/// at the same instant.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: Vec<Price>,
}

impl PriceTable {
    /// Reads and validates the table at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The table shipped with this build (`pricing/prices.toml`).
    pub fn shipped() -> Result<Self, Error> {
        Self::from_toml(SHIPPED)
    }

    /// Parses and validates a table (the format of `pricing/prices.toml`).
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let file: TableFile = toml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::new(file.price)
    }

    /// A table of these prices, validated.
    pub fn new(mut prices: Vec<Price>) -> Result<Self, Error> {
        for price in &prices {
            price.check().map_err(Error::Invalid)?;
        }
        prices.sort_by(|a, b| {
            (&a.provider, &a.model, a.effective_from).cmp(&(
                &b.provider,
                &b.model,
                b.effective_from,
            ))
        });
        for pair in prices.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            let same_model = earlier.provider == later.provider && earlier.model == later.model;
            if same_model
                && earlier
                    .effective_to
                    .is_some_and(|to| to > later.effective_from)
            {
                return Err(Error::Invalid(format!(
                    "{} and {} are both in effect at {}",
                    earlier.reference(),
                    later.reference(),
                    later.effective_from
                )));
            }
            if same_model && earlier.effective_from == later.effective_from {
                return Err(Error::Invalid(format!(
                    "{} appears twice",
                    later.reference()
                )));
            }
        }
        Ok(Self { prices })
    }

    /// The price of `model` of `provider` in effect at `at`: the latest entry that started
    /// by then and has not ended.
    pub fn price(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.prices
            .iter()
            .rev()
            .filter(|p| p.provider == provider && p.model == model)
            .find(|p| p.applies_at(at))
    }

    /// A call made at `called_at`, priced with the entry then in effect (no cost when the
    /// table has none).
    pub fn price_call(
        &self,
        provider: &str,
        model: &str,
        called_at: DateTime<Utc>,
        usage: TokenUsage,
        complete: bool,
    ) -> ModelCall {
        let price = self.price(provider, model, called_at);
        ModelCall {
            provider: provider.to_owned(),
            model: model.to_owned(),
            called_at,
            usage,
            cost_usd: price.map(|p| p.cost(&usage)),
            price_ref: price.map(Price::reference),
            complete,
        }
    }

    /// How many entries the table has.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).unwrap()
    }

    fn dec(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    const TABLE: &str = r#"
        [[price]]
        provider = "openai"
        model = "gpt-4o"
        effective_from = "2024-10-01T00:00:00Z"
        effective_to = "2026-01-01T00:00:00Z"
        input = "2.50"
        output = "10.00"
        cache_read = "1.25"
        cache_write = "0"
        reasoning = "10.00"

        [[price]]
        provider = "openai"
        model = "gpt-4o"
        effective_from = "2026-01-01T00:00:00Z"
        input = "2.00"
        output = "8.00"
        cache_read = "1.00"
        cache_write = "0"
        reasoning = "8.00"

        [[price]]
        provider = "anthropic"
        model = "claude-sonnet-4-20250514"
        effective_from = "2025-05-22T00:00:00Z"
        input = "3.00"
        output = "15.00"
        cache_read = "0.30"
        cache_write = "3.75"
        reasoning = "15.00"
    "#;

    #[test]
    fn an_openai_call_with_cached_and_reasoning_tokens_costs_the_known_answer() {
        // Given OpenAI's report: prompt_tokens 1 200 of which 1 000 cached, completion_tokens
        // 500 of which 300 reasoning, normalised to each token counted once
        let usage = TokenUsage {
            input_tokens: 200,
            output_tokens: 200,
            cache_read_tokens: 1_000,
            cache_write_tokens: 0,
            reasoning_tokens: 300,
        };
        let table = PriceTable::from_toml(TABLE).unwrap();
        // When priced in 2025
        let call = table.price_call("openai", "gpt-4o", at(2025, 6, 1), usage, true);
        // Then 200×2.50 + 200×10 + 1000×1.25 + 300×10 = 500 + 2000 + 1250 + 3000 = 6750 µ$
        assert_eq!(call.cost_usd, Some(dec("0.00675")));
        assert_eq!(
            call.price_ref.as_deref(),
            Some("openai/gpt-4o@2024-10-01T00:00:00Z")
        );
    }

    #[test]
    fn an_anthropic_call_with_cache_reads_and_writes_costs_the_known_answer() {
        // Given Anthropic's report: input_tokens 50 (cache excluded), cache_read 10 000,
        // cache_creation 2 000, output 800
        let usage = TokenUsage {
            input_tokens: 50,
            output_tokens: 800,
            cache_read_tokens: 10_000,
            cache_write_tokens: 2_000,
            reasoning_tokens: 0,
        };
        let table = PriceTable::from_toml(TABLE).unwrap();
        let call = table.price_call(
            "anthropic",
            "claude-sonnet-4-20250514",
            at(2026, 3, 1),
            usage,
            true,
        );
        // 50×3 + 800×15 + 10000×0.30 + 2000×3.75 = 150 + 12000 + 3000 + 7500 = 22650 µ$
        assert_eq!(call.cost_usd, Some(dec("0.02265")));
    }

    #[test]
    fn each_call_is_priced_at_its_own_time() {
        let table = PriceTable::from_toml(TABLE).unwrap();
        let usage = TokenUsage {
            input_tokens: 1_000_000,
            ..TokenUsage::default()
        };
        let before = table.price_call("openai", "gpt-4o", at(2025, 12, 31), usage, true);
        let after = table.price_call("openai", "gpt-4o", at(2026, 1, 1), usage, true);
        assert_eq!(before.cost_usd, Some(dec("2.50")));
        assert_eq!(after.cost_usd, Some(dec("2.00")));
    }

    #[test]
    fn sums_of_many_tiny_costs_stay_exact() {
        let table = PriceTable::from_toml(TABLE).unwrap();
        let one_token = TokenUsage {
            cache_read_tokens: 1,
            ..TokenUsage::default()
        };
        let price = table.price("openai", "gpt-4o", at(2025, 1, 1)).unwrap();
        let total: Decimal = (0..1_000_000).map(|_| price.cost(&one_token)).sum();
        assert_eq!(total, dec("1.25"));
    }

    #[test]
    fn a_model_without_a_price_has_no_cost_rather_than_zero() {
        let table = PriceTable::from_toml(TABLE).unwrap();
        let call = table.price_call(
            "openai",
            "gpt-9",
            at(2025, 1, 1),
            TokenUsage::default(),
            true,
        );
        assert_eq!(call.cost_usd, None);
        assert_eq!(call.price_ref, None);
        assert!(table.price("openai", "gpt-4o", at(2024, 1, 1)).is_none());
    }

    #[test]
    fn the_ceiling_prices_every_token_at_the_dearest_rate() {
        let table = PriceTable::from_toml(TABLE).unwrap();
        let price = table
            .price("anthropic", "claude-sonnet-4-20250514", at(2026, 1, 1))
            .unwrap();
        // 1000 prompt × 3.75 (cache write) + 500 output × 15
        assert_eq!(price.ceiling(1_000, 500), dec("0.01125"));
    }

    #[test]
    fn overlapping_entries_negative_prices_and_floats_are_refused() {
        let overlap = TABLE.replacen(
            "effective_to = \"2026-01-01T00:00:00Z\"",
            "effective_to = \"2026-02-01T00:00:00Z\"",
            1,
        );
        assert_ne!(overlap, TABLE);
        assert!(
            PriceTable::from_toml(&overlap)
                .unwrap_err()
                .to_string()
                .contains("both in effect")
        );
        let negative = TABLE.replace("\"2.00\"", "\"-2.00\"");
        assert!(
            PriceTable::from_toml(&negative)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        let float = TABLE.replace("\"2.00\"", "2.00");
        assert!(PriceTable::from_toml(&float).is_err());
    }

    #[test]
    fn the_shipped_table_is_valid_and_names_its_source() {
        let table = PriceTable::shipped().unwrap();
        assert!(table.len() >= 6);
        assert!(SHIPPED.contains("Source:") && SHIPPED.contains("Transcribed on"));
        assert!(table.price("openai", "gpt-4o-mini", Utc::now()).is_some());
    }
}
