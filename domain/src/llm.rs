//! The `config` of an `llm` step, read in two places with one parser: at submit, where
//! the members present must have their types (a bad one is a 422 naming the field), and
//! when an attempt starts, on the rendered config, where the required members must also
//! be there (a missing one fails the step with `invalid_config`, not retried).
//!
//! Required members are not enforced at submit because `llm` steps without a config have
//! always been accepted as placeholders of a graph (its read models and views index the
//! `model`); a run of such a step fails at its first attempt naming what is missing.
//!
//! Members: `provider`, `model` (strings); `prompt` (a string) or `messages` (a list of
//! `{role: user|assistant, content}`), not both; `system` (a string); `max_tokens` (1 to
//! [`MAX_TOKENS`], default [`DEFAULT_MAX_TOKENS`]); `temperature` (0 to 2);
//! `response_format` (a JSON schema object: the output is parsed and validated against
//! it); `fallback_models` (up to [`MAX_FALLBACKS`] entries, each a model name of the same
//! provider or `{provider, model}`). Template strings (`{{ ... }}`) stand in for any member
//! at submit.

use serde_json::Value;

use crate::validation::ValidationErrors;

/// `max_tokens` when a step sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Largest `max_tokens` accepted.
pub const MAX_TOKENS: u32 = 1_000_000;

/// Most `fallback_models` entries.
pub const MAX_FALLBACKS: usize = 8;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// A model to try: a provider of the providers file and one of its models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// The provider's name.
    pub provider: String,
    /// The model's name at that provider.
    pub model: String,
}

/// A rendered `llm` config, every required member present.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmStepConfig {
    /// The model asked first.
    pub primary: ModelChoice,
    /// The system prompt.
    pub system: Option<String>,
    /// The conversation (`prompt` is one user message).
    pub messages: Vec<LlmMessage>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// The JSON schema the output must conform to.
    pub response_format: Option<Value>,
    /// Tried in order once the primary model failed for good.
    pub fallback_models: Vec<ModelChoice>,
}

fn is_template(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| text.contains("{{") || text.contains("{%"))
}

/// Reads the members of an `llm` config. `complete`: the config is rendered, required
/// members must be present and templates are no longer accepted in place of numbers.
fn read(
    config: &Value,
    at: &str,
    complete: bool,
    errors: &mut ValidationErrors,
) -> Option<LlmStepConfig> {
    let field = |name: &str| format!("{at}.{name}");
    let string = |name: &str, required: bool, errors: &mut ValidationErrors| -> Option<String> {
        match config.get(name) {
            None | Some(Value::Null) => {
                if required && complete {
                    errors.push(field(name), "is required for an llm step");
                }
                None
            }
            Some(Value::String(text)) if required && text.trim().is_empty() => {
                errors.push(field(name), "must not be empty");
                None
            }
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                errors.push(field(name), "must be a string");
                None
            }
        }
    };
    let provider = string("provider", true, errors);
    let model = string("model", true, errors);
    let system = string("system", false, errors);
    let prompt = string("prompt", false, errors);

    let mut messages = Vec::new();
    match config.get("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if !items.is_empty() => {
            for (index, item) in items.iter().enumerate() {
                let at = format!("{at}.messages[{index}]");
                let role = item.get("role").and_then(Value::as_str);
                let content = item.get("content").and_then(Value::as_str);
                match role {
                    Some("user" | "assistant") => {}
                    Some(role) if complete || !is_template(&Value::from(role)) => {
                        errors.push(format!("{at}.role"), "must be \"user\" or \"assistant\"");
                    }
                    Some(_) => {}
                    None => errors.push(format!("{at}.role"), "is required, a string"),
                }
                if content.is_none() {
                    errors.push(format!("{at}.content"), "is required, a string");
                }
                if let (Some(role), Some(content)) = (role, content) {
                    messages.push(LlmMessage {
                        role: role.to_owned(),
                        content: content.to_owned(),
                    });
                }
            }
        }
        Some(_) => errors.push(
            field("messages"),
            "must be a non-empty list of {role, content} objects",
        ),
    }
    let has_messages = config.get("messages").is_some_and(|m| !m.is_null());
    match (&prompt, has_messages) {
        (Some(_), true) => errors.push(field("prompt"), "give either prompt or messages, not both"),
        (None, false) if complete => {
            errors.push(field("prompt"), "an llm step needs a prompt or messages")
        }
        (Some(prompt), false) => messages.push(LlmMessage {
            role: "user".into(),
            content: prompt.clone(),
        }),
        _ => {}
    }

    let max_tokens = match config.get("max_tokens") {
        None | Some(Value::Null) => Some(DEFAULT_MAX_TOKENS),
        Some(value) if !complete && is_template(value) => Some(DEFAULT_MAX_TOKENS),
        Some(value) => {
            let number = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
            match number {
                Some(n @ 1..) if n <= u64::from(MAX_TOKENS) => Some(n as u32),
                _ => {
                    errors.push(
                        field("max_tokens"),
                        format!("must be a whole number from 1 to {MAX_TOKENS}"),
                    );
                    None
                }
            }
        }
    };
    let temperature = match config.get("temperature") {
        None | Some(Value::Null) => None,
        Some(value) if !complete && is_template(value) => None,
        Some(value) => {
            let number = value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
            match number {
                Some(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => {
                    errors.push(field("temperature"), "must be a number from 0 to 2");
                    None
                }
            }
        }
    };
    let response_format = match config.get("response_format") {
        None | Some(Value::Null) => None,
        Some(schema @ (Value::Object(_) | Value::Bool(true))) => Some(schema.clone()),
        Some(_) => {
            errors.push(
                field("response_format"),
                "must be a JSON schema (an object) the output must conform to",
            );
            None
        }
    };
    let mut fallback_models = Vec::new();
    match config.get("fallback_models") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= MAX_FALLBACKS => {
            for (index, item) in items.iter().enumerate() {
                let at = format!("{at}.fallback_models[{index}]");
                match item {
                    Value::String(model) if !model.trim().is_empty() => {
                        if let Some(provider) = &provider {
                            fallback_models.push(ModelChoice {
                                provider: provider.clone(),
                                model: model.clone(),
                            });
                        }
                    }
                    Value::Object(choice) => {
                        match (
                            choice.get("provider").and_then(Value::as_str),
                            choice.get("model").and_then(Value::as_str),
                        ) {
                            (Some(p), Some(m)) if !p.is_empty() && !m.is_empty() => fallback_models
                                .push(ModelChoice {
                                    provider: p.to_owned(),
                                    model: m.to_owned(),
                                }),
                            _ => errors.push(at, "must have a non-empty string provider and model"),
                        }
                    }
                    _ => errors.push(
                        at,
                        "must be a model name (same provider) or {provider, model}",
                    ),
                }
            }
        }
        Some(_) => errors.push(
            field("fallback_models"),
            format!("must be a list of at most {MAX_FALLBACKS} models"),
        ),
    }
    Some(LlmStepConfig {
        primary: ModelChoice {
            provider: provider?,
            model: model?,
        },
        system,
        messages,
        max_tokens: max_tokens?,
        temperature,
        response_format,
        fallback_models,
    })
}

/// Checks the members present in a submitted `llm` config (`at`: its path in the request,
/// e.g. `steps[2].config`).
pub fn check_submitted(config: &Value, at: &str, errors: &mut ValidationErrors) {
    read(config, at, false, errors);
}

impl LlmStepConfig {
    /// Reads a rendered `llm` config; every refused or missing member is named (as
    /// `config.<member>`).
    pub fn parse(config: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let parsed = read(config, "config", true, &mut errors);
        match (errors.into_result(), parsed) {
            (Ok(()), Some(parsed)) => Ok(parsed),
            (Err(errors), _) => Err(errors),
            (Ok(()), None) => unreachable!("a member missing without an error"),
        }
    }

    /// The primary model, then the fallbacks.
    pub fn models(&self) -> impl Iterator<Item = &ModelChoice> {
        std::iter::once(&self.primary).chain(&self.fallback_models)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_complete_config_reads_with_defaults() {
        let config = LlmStepConfig::parse(&json!({
            "provider": "openai", "model": "gpt-x", "prompt": "hi",
            "fallback_models": ["gpt-y", {"provider": "anthropic", "model": "claude"}]
        }))
        .unwrap();
        assert_eq!(config.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(
            config.messages,
            [LlmMessage {
                role: "user".into(),
                content: "hi".into()
            }]
        );
        let models: Vec<_> = config
            .models()
            .map(|m| format!("{}/{}", m.provider, m.model))
            .collect();
        assert_eq!(models, ["openai/gpt-x", "openai/gpt-y", "anthropic/claude"]);
    }

    #[test]
    fn submit_checks_types_but_not_presence() {
        let mut errors = ValidationErrors::default();
        check_submitted(&json!({"model": "gpt-x"}), "steps[0].config", &mut errors);
        check_submitted(
            &json!({"model": "m", "max_tokens": "{{ input.n }}", "temperature": "{{ input.t }}"}),
            "steps[0].config",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors}");
        check_submitted(
            &json!({"provider": 3, "prompt": "a", "messages": [{"role": "robot"}],
                    "max_tokens": 0, "temperature": 5, "response_format": "json",
                    "fallback_models": [7]}),
            "steps[1].config",
            &mut errors,
        );
        assert_eq!(
            fields(&errors),
            [
                "steps[1].config.provider",
                "steps[1].config.messages[0].role",
                "steps[1].config.messages[0].content",
                "steps[1].config.prompt",
                "steps[1].config.max_tokens",
                "steps[1].config.temperature",
                "steps[1].config.response_format",
                "steps[1].config.fallback_models[0]",
            ]
        );
    }

    #[test]
    fn a_rendered_config_needs_provider_model_and_a_prompt() {
        let errors = LlmStepConfig::parse(&json!({"max_tokens": "{{ x }}"})).unwrap_err();
        assert_eq!(
            fields(&errors),
            [
                "config.provider",
                "config.model",
                "config.prompt",
                "config.max_tokens"
            ]
        );
        let rendered = LlmStepConfig::parse(
            &json!({"provider": "p", "model": "m", "prompt": "x", "max_tokens": "64", "temperature": "0.5"}),
        )
        .unwrap();
        assert_eq!((rendered.max_tokens, rendered.temperature), (64, Some(0.5)));
    }
}
