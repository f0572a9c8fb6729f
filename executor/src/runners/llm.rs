//! `llm` steps: one streamed completion from a provider of the providers file (see
//! `flowline_model_providers` and `flowline_domain::llm` for the config).
//!
//! Each model call reserves its maximum cost against the tenant's monthly budget first
//! (prompt estimate at the dearest prompt price + `max_tokens` at the dearest output price)
//! and settles on the real cost afterwards (beside recording the outcome, off the step's
//! path), also when the call failed part-way. Every call
//! is priced when it is made and returned as a `ModelCall` with the attempt's outcome;
//! streamed text goes to the live channel as it arrives.
//!
//! `fallback_models` are tried, in order, within the attempt whose failure would end the
//! step: a failure the policy does not retry (a 4xx, a missing key) or a retryable one on
//! the last attempt. Budget refusals and invalid outputs never fall back.
//!
//! The output: `{text, model, provider, finish_reason, usage, cost_usd}` and, with
//! `response_format`, `parsed` (the text parsed as JSON and valid against the schema; a
//! text that is not fails the attempt with `invalid_output`, retryable).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flowline_domain::llm::{LlmStepConfig, ModelChoice};
use flowline_domain::{ModelCall, StepKind, StepPolicy};
use flowline_model_providers::{CallError, ChatRequest, Completion, Message, Providers};
use flowline_pricing::PriceTable;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{AttemptFailure, AttemptInput, StepOutput, StepRunner};
use crate::budget::{BudgetLedger, Reservation, ReserveError};

/// `llm` step settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LlmSettings {
    /// The providers file: which model servers `llm` steps may call, with their wire API,
    /// base URL, the environment variable holding each key, timeouts and limits (see
    /// `config/providers.example.toml`). Unset: `llm` steps fail with `not_configured`.
    #[arg(long = "llm-providers-file", env = "LLM_PROVIDERS_FILE")]
    pub providers_file: Option<PathBuf>,
    /// Keys given in-process, looked up before the environment (embedding and tests).
    #[arg(skip)]
    pub keys: ProviderKeys,
}

/// Provider keys by environment variable name, given in-process; never printed.
#[derive(Clone, Default)]
pub struct ProviderKeys(BTreeMap<String, String>);

impl ProviderKeys {
    /// The key held for `variable`.
    pub fn get(&self, variable: &str) -> Option<String> {
        self.0.get(variable).cloned()
    }
}

impl<const N: usize> From<[(&str, &str); N]> for ProviderKeys {
    fn from(keys: [(&str, &str); N]) -> Self {
        Self(
            keys.into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl LlmSettings {
    /// The providers of the file, keys from [`LlmSettings::keys`] then the environment;
    /// `None` without a file.
    pub fn providers(&self) -> Result<Option<Providers>, flowline_model_providers::Error> {
        let Some(path) = &self.providers_file else {
            return Ok(None);
        };
        let lookup = |variable: &str| {
            self.keys
                .get(variable)
                .or_else(|| std::env::var(variable).ok())
        };
        Providers::load(path, &lookup).map(Some)
    }
}

/// How long before an attempt's deadline a call ends itself.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Runs `llm` steps.
#[derive(Clone)]
pub struct LlmRunner {
    providers: Arc<Providers>,
    prices: Arc<PriceTable>,
    ledger: BudgetLedger,
}

impl std::fmt::Debug for LlmRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmRunner")
            .field("providers", &self.providers.names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Settles a reservation whose call was dropped (the attempt's deadline, a cancel) at its
/// full amount: what the provider billed for it is unknown, and a budget errs on the safe
/// side.
struct SettleOnDrop {
    ledger: BudgetLedger,
    reservation: Option<Reservation>,
}

impl SettleOnDrop {
    async fn settle(mut self, cost: Decimal) {
        if let Some(reservation) = self.reservation.take()
            && let Err(error) = self.ledger.settle(&reservation, cost).await
        {
            tracing::warn!(%error, "a model call's cost could not be settled; its reservation expires");
        }
    }
}

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let ledger = self.ledger.clone();
            tokio::spawn(async move {
                let amount = reservation.amount();
                if let Err(error) = ledger.settle(&reservation, amount).await {
                    tracing::warn!(%error, "a dropped model call's reservation could not be settled; it expires");
                }
            });
        }
    }
}

/// The text parsed as JSON: a model may wrap it in a Markdown code fence.
fn parse_json_output(text: &str) -> Result<Value, serde_json::Error> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim())
}

fn usage_json(call: &ModelCall) -> Value {
    serde_json::to_value(call.usage).expect("usage serialises")
}

impl LlmRunner {
    /// A runner over these providers, prices and ledger.
    pub fn new(providers: Arc<Providers>, prices: Arc<PriceTable>, ledger: BudgetLedger) -> Self {
        Self {
            providers,
            prices,
            ledger,
        }
    }

    /// The most a call can cost (the price's ceiling for the prompt estimate and
    /// `max_tokens`); `None` without a price.
    fn max_cost(
        &self,
        choice: &ModelChoice,
        request: &ChatRequest,
        at: chrono::DateTime<Utc>,
    ) -> Option<Decimal> {
        let price = self.prices.price(&choice.provider, &choice.model, at)?;
        Some(price.ceiling(
            request.estimate_prompt_tokens(),
            u64::from(request.max_tokens),
        ))
    }

    /// One model call with its reservation and settlement.
    async fn call(
        &self,
        attempt: &AttemptInput,
        choice: &ModelChoice,
        request: &ChatRequest,
    ) -> (Result<Completion, AttemptFailure>, Option<ModelCall>) {
        let Some(provider) = self.providers.get(&choice.provider) else {
            let known: Vec<_> = self.providers.names().collect();
            return (
                Err(AttemptFailure::permanent(
                    "unknown_provider",
                    format!(
                        "provider '{}' is not in the providers file (LLM_PROVIDERS_FILE); known: {}",
                        choice.provider,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                )),
                None,
            );
        };
        let called_at = Utc::now();
        let config = provider.config();
        let hold = config.request_timeout + config.max_cooldown_wait + Duration::from_secs(60);
        let reservation = match self
            .ledger
            .reserve(
                &attempt.tenant,
                (&choice.provider, &choice.model),
                called_at,
                self.max_cost(choice, request, called_at),
                hold,
            )
            .await
        {
            Ok(reservation) => reservation,
            Err(ReserveError::Exceeded(exceeded)) => {
                return (
                    Err(AttemptFailure::permanent(
                        "budget_exceeded",
                        exceeded.to_string(),
                    )),
                    None,
                );
            }
            Err(error @ ReserveError::Unpriced { .. }) => {
                return (
                    Err(AttemptFailure::permanent(
                        "budget_exceeded",
                        error.to_string(),
                    )),
                    None,
                );
            }
            Err(error @ ReserveError::Database(_)) => {
                return (
                    Err(AttemptFailure::transient(
                        "budget_unavailable",
                        error.to_string(),
                    )),
                    None,
                );
            }
        };
        let guard = SettleOnDrop {
            ledger: self.ledger.clone(),
            reservation: Some(reservation),
        };
        let live = attempt.live.clone();
        let mut on_text = move |chunk: &str| live.token(chunk);
        // Ends the call itself a little before the attempt's deadline, so that its usage
        // is reported instead of lost with the dropped attempt.
        let deadline = attempt.deadline.and_then(|at| {
            let left = (at - Utc::now()).to_std().unwrap_or_default();
            Some(std::time::Instant::now() + left.checked_sub(DEADLINE_MARGIN)?)
        });
        let outcome = provider.call(request, &mut on_text, deadline).await;
        let (usage, complete, sent) = match &outcome {
            Ok(completion) => (completion.usage, true, true),
            Err(error) => (error.partial.usage, false, error.partial.sent),
        };
        let call = sent.then(|| {
            self.prices
                .price_call(&choice.provider, &choice.model, called_at, usage, complete)
        });
        // Settled beside the recording of the outcome, not before it: until then the
        // reservation, never less than the cost, still counts against the budget, so
        // nothing can overspend in between (and a crash leaves it to expire, as before).
        tokio::spawn(guard.settle(call.as_ref().and_then(|c| c.cost_usd).unwrap_or_default()));
        let outcome = outcome.map_err(|error: CallError| AttemptFailure {
            kind: error.kind.as_str().to_owned(),
            message: error.message,
            retryable: error.retryable,
            retry_after: error.retry_after,
            calls: Vec::new(),
        });
        (outcome, call)
    }

    async fn attempt(self, attempt: AttemptInput) -> Result<StepOutput, AttemptFailure> {
        let config = LlmStepConfig::parse(&attempt.input)
            .map_err(|errors| AttemptFailure::permanent("invalid_config", errors.to_string()))?;
        let policy = StepPolicy::parse(StepKind::Llm, &attempt.input, "config").unwrap_or_default();
        let validator = match &config.response_format {
            None => None,
            Some(schema) => Some(jsonschema::validator_for(schema).map_err(|e| {
                AttemptFailure::permanent(
                    "invalid_config",
                    format!("config.response_format is not a valid JSON schema: {e}"),
                )
            })?),
        };
        let mut calls = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let models: Vec<&ModelChoice> = config.models().collect();
        for (index, choice) in models.iter().enumerate() {
            let request = ChatRequest {
                model: choice.model.clone(),
                system: config.system.clone(),
                messages: config
                    .messages
                    .iter()
                    .map(|m| Message {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect(),
                max_tokens: config.max_tokens,
                temperature: config.temperature,
                json_schema: config.response_format.clone(),
            };
            let (outcome, call) = self.call(&attempt, choice, &request).await;
            calls.extend(call.clone());
            let completion = match outcome {
                Ok(completion) => completion,
                Err(failure) => {
                    let ends_the_step = attempt.last_attempt
                        || !policy
                            .retry
                            .retries(attempt.attempt, &failure.kind, failure.retryable);
                    let falls_back = ends_the_step
                        && index + 1 < models.len()
                        && !matches!(
                            failure.kind.as_str(),
                            "budget_exceeded" | "budget_unavailable"
                        );
                    if falls_back {
                        tracing::info!(provider = %choice.provider, model = %choice.model, kind = %failure.kind, "falling back to the next model");
                        failures.push(format!(
                            "{}/{}: {}",
                            choice.provider, choice.model, failure.message
                        ));
                        continue;
                    }
                    let mut failure = failure.with_calls(calls);
                    if !failures.is_empty() {
                        failures.push(format!(
                            "{}/{}: {}",
                            choice.provider, choice.model, failure.message
                        ));
                        failure.message = format!("every model failed: {}", failures.join("; "));
                    }
                    return Err(failure);
                }
            };
            let call = call.expect("a completed call was sent");
            let mut output = json!({
                "text": completion.text,
                "model": completion.model,
                "provider": choice.provider,
                "finish_reason": completion.finish_reason,
                "usage": usage_json(&call),
                "cost_usd": call.cost_usd.map(|c| c.normalize().to_string()),
            });
            if index > 0 {
                output["fallback_from"] = json!(
                    models[..index]
                        .iter()
                        .map(|m| format!("{}/{}", m.provider, m.model))
                        .collect::<Vec<_>>()
                );
            }
            if let Some(validator) = &validator {
                let parsed = parse_json_output(&completion.text).map_err(|e| {
                    AttemptFailure::transient(
                        "invalid_output",
                        format!(
                            "{}/{}: the output is not JSON ({e})",
                            choice.provider, choice.model
                        ),
                    )
                    .with_calls(calls.clone())
                })?;
                let problems: Vec<String> = validator
                    .iter_errors(&parsed)
                    .take(5)
                    .map(|e| format!("{} at '{}'", e, e.instance_path()))
                    .collect();
                if !problems.is_empty() {
                    return Err(AttemptFailure::transient(
                        "invalid_output",
                        format!(
                            "{}/{}: the output does not match config.response_format: {}",
                            choice.provider,
                            choice.model,
                            problems.join("; ")
                        ),
                    )
                    .with_calls(calls));
                }
                output["parsed"] = parsed;
            }
            return Ok(StepOutput {
                value: output,
                calls,
            });
        }
        unreachable!("at least the primary model is tried")
    }
}

impl StepRunner for LlmRunner {
    fn run(&self, attempt: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>> {
        Box::pin(self.clone().attempt(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_may_come_in_a_code_fence() {
        assert_eq!(parse_json_output(" {\"a\": 1} ").unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_json_output("```json\n{\"a\": 1}\n```").unwrap(),
            json!({"a": 1})
        );
        assert!(parse_json_output("sure! {\"a\": 1}").is_err());
    }
}
