//! Clients of the two model wire APIs that most servers speak: OpenAI Chat Completions and
//! Anthropic Messages, always streamed (SSE), written against the providers' published
//! formats with reqwest (rustls).
//!
//! A [`Provider`] is one entry of the providers file (see [`config`]): a base URL, a key
//! read from an environment variable, timeouts, and limits that hold for the whole process
//! (calls in flight, requests and tokens per minute, and a cool-down after a 429 that
//! every caller waits out instead of each hammering the provider on its own).
//! [`Provider::call`] streams one completion, hands each text chunk to a callback as it
//! arrives, and returns the text with its usage normalised into
//! [`flowline_domain::TokenUsage`], or a classified [`CallError`] that still carries what
//! was received before the failure.
//!
//! Keys never leave this crate except in the request header: [`config::ApiKey`] does not
//! print, and a provider's error message is scrubbed of the key before it is returned.

pub mod anthropic;
pub mod config;
pub mod error;
pub mod openai;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::Eventsource;
use flowline_domain::TokenUsage;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use config::{ApiKey, ProviderConfig, WireApi};
pub use error::{CallError, FailureKind, Partial};

/// Why the providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The providers file is missing or malformed.
    #[error("providers file: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `user` or `assistant` (a system prompt goes in [`ChatRequest::system`]).
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// One completion to ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The provider's model name.
    pub model: String,
    /// The system prompt.
    pub system: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Ask for a JSON document conforming to this schema (OpenAI `response_format`;
    /// Anthropic: an instruction in the system prompt).
    pub json_schema: Option<Value>,
}

/// Bytes of prompt per estimated token: English text averages about four bytes a token
/// with the current tokenizers, so three over-estimates most prompts, which is the safe
/// side for a budget reservation and a tokens-per-minute limit.
const PROMPT_BYTES_PER_TOKEN: u64 = 3;

impl ChatRequest {
    /// An upper estimate of the prompt's tokens (no tokenizer: a byte count; see
    /// [`PROMPT_BYTES_PER_TOKEN`]), with a few tokens of framing per message.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        let bytes: u64 = self
            .messages
            .iter()
            .map(|m| m.content.len() as u64)
            .chain(self.system.iter().map(|s| s.len() as u64))
            .chain(
                self.json_schema
                    .iter()
                    .map(|s| s.to_string().len() as u64 + 200),
            )
            .sum();
        bytes.div_ceil(PROMPT_BYTES_PER_TOKEN) + 4 * (self.messages.len() as u64 + 1) + 3
    }
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The model that answered, as the provider named it (or as asked).
    pub model: String,
    /// Why generation stopped (`stop`, `length`, `end_turn`, `max_tokens`...).
    pub finish_reason: Option<String>,
    /// Normalised usage.
    pub usage: TokenUsage,
    /// Whether `usage` is the provider's report rather than an estimate (a server that
    /// did not send it).
    pub usage_reported: bool,
}

/// What a stream delivered so far.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Text so far.
    pub text: String,
    /// Text chunks so far (the output estimate when no usage is reported).
    pub chunks: u64,
    /// Usage as last reported.
    pub usage: Option<TokenUsage>,
    /// Why generation stopped, once known.
    pub finish_reason: Option<String>,
    /// The answering model, once known.
    pub model: Option<String>,
    /// The stream's end marker arrived.
    pub done: bool,
}

impl StreamState {
    fn push_text(&mut self, text: &str, on_text: &mut (dyn FnMut(&str) + Send)) {
        self.text.push_str(text);
        self.chunks += 1;
        on_text(text);
    }

    /// Usage as reported, else estimated: the prompt estimate as input and one token per
    /// chunk received as output.
    fn usage_or_estimate(&self, prompt_estimate: u64) -> (TokenUsage, bool) {
        match self.usage {
            Some(mut usage) => {
                // A stream cut before `message_delta` reports only message_start's output.
                usage.output_tokens = usage.output_tokens.max(self.chunks);
                (usage, true)
            }
            None => (
                TokenUsage {
                    input_tokens: prompt_estimate,
                    output_tokens: self.chunks,
                    ..TokenUsage::default()
                },
                false,
            ),
        }
    }
}

/// Process-wide limits of one provider.
struct Gate {
    in_flight: Semaphore,
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    cooling_until: Mutex<Option<Instant>>,
}

/// One provider, shared by every step of the process.
pub struct Provider {
    config: ProviderConfig,
    client: reqwest::Client,
    gate: Gate,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Largest error body read from a provider.
const MAX_ERROR_BODY: usize = 64 * 1024;

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds.min(24.0 * 3600.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(wait.min(Duration::from_secs(24 * 3600)))
}

fn transport_error(provider: &str, error: &reqwest::Error) -> CallError {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let kind = if error.is_timeout() {
        FailureKind::TimedOut
    } else {
        FailureKind::Transport
    };
    CallError::new(kind, true, format!("provider '{provider}': {text}"))
}

impl Provider {
    /// A provider from its config (its HTTP client and limits).
    pub fn new(config: ProviderConfig) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("flowline-executor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        let gate = Gate {
            in_flight: Semaphore::new(config.max_concurrent_calls),
            requests: config
                .requests_per_minute
                .map(|n| RateLimiter::direct(Quota::per_minute(n))),
            tokens: config
                .tokens_per_minute
                .map(|n| (RateLimiter::direct(Quota::per_minute(n)), n)),
            cooling_until: Mutex::new(None),
        };
        Ok(Self {
            config,
            client,
            gate,
        })
    }

    /// Its config (the key inside does not print).
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The cool-down left after a 429, if any.
    pub fn cooldown_remaining(&self) -> Option<Duration> {
        let until = (*self.gate.cooling_until.lock().expect("not poisoned"))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    fn cool_down(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut cooling = self.gate.cooling_until.lock().expect("not poisoned");
        if cooling.is_none_or(|current| current < until) {
            *cooling = Some(until);
        }
    }

    /// Waits out a cool-down that ends within `max_cooldown_wait`; fails (retryable, with
    /// the remaining time) for a longer one.
    async fn wait_for_cooldown(&self) -> Result<(), CallError> {
        while let Some(remaining) = self.cooldown_remaining() {
            if remaining > self.config.max_cooldown_wait {
                let mut error = CallError::new(
                    FailureKind::RateLimited,
                    true,
                    format!(
                        "provider '{}' is cooling down after a 429 for another {} ms",
                        self.config.name,
                        remaining.as_millis()
                    ),
                );
                error.retry_after = Some(remaining);
                return Err(error);
            }
            tokio::time::sleep(remaining).await;
        }
        Ok(())
    }

    /// Streams one completion. `on_text` gets each text chunk as it arrives. The call ends
    /// at the provider's `request_timeout` or at `deadline`, whichever comes first, with
    /// a `model_timed_out` failure that keeps what arrived (a caller that would otherwise
    /// drop the call at its deadline learns its usage this way).
    pub async fn call(
        &self,
        request: &ChatRequest,
        on_text: &mut (dyn FnMut(&str) + Send),
        deadline: Option<std::time::Instant>,
    ) -> Result<Completion, CallError> {
        let name = &self.config.name;
        let Some(key) = &self.config.api_key else {
            return Err(CallError::new(
                FailureKind::MissingKey,
                false,
                format!(
                    "provider '{name}' has no API key: set the environment variable {} for the executor",
                    self.config.api_key_env
                ),
            ));
        };
        let prompt_estimate = request.estimate_prompt_tokens();
        self.wait_for_cooldown().await?;
        let _permit = self
            .gate
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let Some(limiter) = &self.gate.requests {
            limiter.until_ready().await;
        }
        if let Some((limiter, burst)) = &self.gate.tokens {
            let wanted = (prompt_estimate + u64::from(request.max_tokens))
                .clamp(1, u64::from(burst.get())) as u32;
            let wanted = NonZeroU32::new(wanted).expect("at least 1");
            limiter
                .until_n_ready(wanted)
                .await
                .expect("clamped to the burst size");
        }
        // A 429 seen by another call while this one queued.
        self.wait_for_cooldown().await?;

        let mut state = StreamState::default();
        let own_deadline = Instant::now() + self.config.request_timeout;
        let callers = deadline.map(Instant::from_std);
        let deadline = callers.map_or(own_deadline, |d| d.min(own_deadline));
        let outcome =
            tokio::time::timeout_at(deadline, self.stream(request, key, &mut state, on_text)).await;
        let (usage, usage_reported) = state.usage_or_estimate(prompt_estimate);
        let result = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                let mut error = CallError::new(
                    FailureKind::TimedOut,
                    true,
                    if deadline < own_deadline {
                        format!("provider '{name}' did not finish before the step's timeout")
                    } else {
                        format!(
                            "provider '{name}' did not finish within its request_timeout of {} ms",
                            self.config.request_timeout.as_millis()
                        )
                    },
                );
                // Sent or not, the provider may bill it: counted as sent.
                error.partial.sent = true;
                Err(error)
            }
        };
        match result {
            Ok(()) => Ok(Completion {
                text: state.text,
                model: state.model.unwrap_or_else(|| request.model.clone()),
                finish_reason: state.finish_reason,
                usage,
                usage_reported,
            }),
            Err(mut error) => {
                error.message = key.redact(&error.message);
                let sent = error.partial.sent;
                error.partial = Partial {
                    text: state.text,
                    usage: if sent { usage } else { TokenUsage::default() },
                    usage_reported: sent && usage_reported,
                    sent,
                };
                Err(error)
            }
        }
    }

    /// Sends the request and reads its stream into `state`; an error's `partial.sent`
    /// says whether the request went out.
    async fn stream(
        &self,
        request: &ChatRequest,
        key: &ApiKey,
        state: &mut StreamState,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), CallError> {
        let name = &self.config.name;
        let api = self.config.api;
        let (path, body) = match api {
            WireApi::Openai => (openai::PATH, openai::body(request)),
            WireApi::Anthropic => (anthropic::PATH, anthropic::body(request)),
        };
        let mut builder = self
            .client
            .post(format!("{}{path}", self.config.base_url))
            .header("accept", "text/event-stream")
            .json(&body);
        builder = match api {
            WireApi::Openai => builder.bearer_auth(key.expose()),
            WireApi::Anthropic => {
                let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                    CallError::new(
                        FailureKind::MissingKey,
                        false,
                        format!(
                            "provider '{name}': the key in {} is not a valid header value",
                            self.config.api_key_env
                        ),
                    )
                })?;
                value.set_sensitive(true);
                builder
                    .header("x-api-key", value)
                    .header("anthropic-version", anthropic::VERSION)
            }
        };
        let sent = |mut error: CallError| {
            error.partial.sent = true;
            error
        };
        let response = builder
            .send()
            .await
            .map_err(|e| sent(transport_error(name, &e)))?;
        let status = response.status();
        if !status.is_success() {
            // An error answer generated nothing, and providers bill none of it: its usage
            // is a reported zero rather than the prompt estimate a cut stream is charged.
            state.usage = Some(TokenUsage::default());
            let wait = retry_after(response.headers());
            let mut body = Vec::new();
            let mut chunks = response.bytes_stream();
            while let Some(Ok(chunk)) = chunks.next().await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ERROR_BODY {
                    break;
                }
            }
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let detail = parsed
                .as_ref()
                .and_then(|b| match api {
                    WireApi::Openai => openai::error_message(b),
                    WireApi::Anthropic => anthropic::error_message(b),
                })
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
                });
            let code = status.as_u16();
            let retryable = error::status_is_retryable(code);
            let kind = match code {
                429 => FailureKind::RateLimited,
                _ if retryable => FailureKind::Unavailable,
                _ => FailureKind::Refused,
            };
            let mut error = CallError::new(
                kind,
                retryable,
                format!("provider '{name}' answered {status}: {detail}"),
            );
            error.status = Some(code);
            error.retry_after = wait.filter(|_| retryable);
            if code == 429 {
                let cooldown = wait.unwrap_or(self.config.default_cooldown);
                self.cool_down(cooldown);
                error.retry_after = Some(cooldown);
            }
            return Err(sent(error));
        }
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| {
                let kind = match e {
                    eventsource_stream::EventStreamError::Transport(_) => FailureKind::StreamCut,
                    _ => FailureKind::Malformed,
                };
                let retryable = kind == FailureKind::StreamCut;
                sent(CallError::new(
                    kind,
                    retryable,
                    format!("provider '{name}': the answer's stream broke: {e}"),
                ))
            })?;
            let step = match api {
                WireApi::Openai => openai::on_event(state, &event.data, on_text),
                WireApi::Anthropic => {
                    anthropic::on_event(state, &event.event, &event.data, on_text)
                }
            };
            step.map_err(|mut e| {
                e.message = format!("provider '{name}': {}", e.message);
                sent(e)
            })?;
            if state.done {
                return Ok(());
            }
        }
        // OpenAI-compatible servers that end the stream after the finish reason without a
        // `[DONE]` marker still finished; anything else ended early.
        if api == WireApi::Openai && state.finish_reason.is_some() {
            return Ok(());
        }
        Err(sent(CallError::new(
            FailureKind::StreamCut,
            true,
            format!(
                "provider '{name}': the answer's stream ended before its end marker ({} chunks received)",
                state.chunks
            ),
        )))
    }
}

/// Every provider of the providers file.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// Reads the providers file; keys from `lookup` (the process environment in
    /// production: `&|var| std::env::var(var).ok()`).
    pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        Self::from_configs(config::load(path, lookup)?.into_values())
    }

    /// Providers from their configs.
    pub fn from_configs(configs: impl IntoIterator<Item = ProviderConfig>) -> Result<Self, Error> {
        let mut by_name = BTreeMap::new();
        for config in configs {
            by_name.insert(config.name.clone(), Arc::new(Provider::new(config)?));
        }
        Ok(Self { by_name })
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Provider>> {
        self.by_name.get(name).cloned()
    }

    /// Every provider's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
    }

    #[test]
    fn the_prompt_estimate_is_above_four_bytes_a_token() {
        let request = ChatRequest {
            model: "m".into(),
            system: None,
            messages: vec![Message::user("x".repeat(4000))],
            max_tokens: 1,
            temperature: None,
            json_schema: None,
        };
        assert!(request.estimate_prompt_tokens() > 1000);
    }
}
