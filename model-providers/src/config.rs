//! The providers file: which model servers steps may call, how to reach them, with which
//! key, and how hard. See `config/providers.example.toml` for a documented example.
//!
//! A key is read once, at load, from the environment variable the file names (never from
//! the file itself, so the file can be committed); it lives in an [`ApiKey`] whose `Debug`
//! and `Display` never show it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Which wire API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireApi {
    /// OpenAI Chat Completions, `POST {base_url}/v1/chat/completions`.
    Openai,
    /// Anthropic Messages, `POST {base_url}/v1/messages`.
    Anthropic,
}

impl WireApi {
    /// The name the providers file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// A provider's secret key. Shown nowhere: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced (a provider's error message may
    /// echo the key it refused).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One `[[provider]]` table as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    api: WireApi,
    base_url: String,
    api_key_env: String,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    request_timeout: Option<String>,
    #[serde(default)]
    max_concurrent_calls: Option<u32>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_minute: Option<u32>,
    #[serde(default)]
    max_cooldown_wait: Option<String>,
    #[serde(default)]
    default_cooldown: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default, rename = "provider")]
    providers: Vec<ProviderEntry>,
}

/// One provider, ready to be called.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// What steps name in `config.provider`.
    pub name: String,
    /// Its wire API.
    pub api: WireApi,
    /// Scheme, host and port (and a path prefix, if any) before `/v1/...`.
    pub base_url: String,
    /// The environment variable that holds its key.
    pub api_key_env: String,
    /// The key, when the variable was set.
    pub api_key: Option<ApiKey>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for a whole call, the streamed answer included.
    pub request_timeout: Duration,
    /// Most calls in flight at once from this process.
    pub max_concurrent_calls: usize,
    /// Requests per minute from this process; `None`: unlimited.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens (prompt estimate + `max_tokens`) per minute; `None`: unlimited.
    pub tokens_per_minute: Option<NonZeroU32>,
    /// After a 429, how long a call waits for the cool-down to end before it fails
    /// (retryable, with the remaining cool-down as its `retry_after`).
    pub max_cooldown_wait: Duration,
    /// The cool-down after a 429 that carries no `Retry-After`.
    pub default_cooldown: Duration,
}

/// Parses `500ms`, `30s`, `5m` (a whole number and a unit: ms, s, m, h).
fn duration(text: Option<&str>, default: Duration, field: &str) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => {
            flowline_domain::policy::parse_duration(text).map_err(|e| format!("{field}: {e}"))
        }
    }
}

/// Reads the providers file `path`; `lookup` reads an environment variable (the process
/// environment in production).
pub fn load(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, ProviderConfig>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    parse(&text, lookup).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Parses a providers file's text.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, ProviderConfig>, String> {
    let file: ProvidersFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut providers = BTreeMap::new();
    for entry in file.providers {
        let at = format!("provider '{}'", entry.name);
        if entry.name.is_empty() {
            return Err("a provider has an empty name".into());
        }
        let base_url = entry.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| format!("{at}: base_url '{base_url}': {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{at}: base_url must be http or https"));
        }
        if entry.api_key_env.is_empty() {
            return Err(format!("{at}: api_key_env is empty"));
        }
        let api_key = lookup(&entry.api_key_env)
            .filter(|key| !key.is_empty())
            .map(ApiKey::new);
        let positive = |value: Option<u32>, field: &str| match value {
            None => Ok(None),
            Some(0) => Err(format!("{at}: {field} must be at least 1")),
            Some(n) => Ok(NonZeroU32::new(n)),
        };
        let config = ProviderConfig {
            connect_timeout: duration(
                entry.connect_timeout.as_deref(),
                Duration::from_secs(10),
                &format!("{at}: connect_timeout"),
            )?,
            request_timeout: duration(
                entry.request_timeout.as_deref(),
                Duration::from_secs(600),
                &format!("{at}: request_timeout"),
            )?,
            max_concurrent_calls: positive(entry.max_concurrent_calls, "max_concurrent_calls")?
                .map_or(64, |n| n.get() as usize),
            requests_per_minute: positive(entry.requests_per_minute, "requests_per_minute")?,
            tokens_per_minute: positive(entry.tokens_per_minute, "tokens_per_minute")?,
            max_cooldown_wait: duration(
                entry.max_cooldown_wait.as_deref(),
                Duration::from_secs(30),
                &format!("{at}: max_cooldown_wait"),
            )?,
            default_cooldown: duration(
                entry.default_cooldown.as_deref(),
                Duration::from_secs(1),
                &format!("{at}: default_cooldown"),
            )?,
            name: entry.name.clone(),
            api: entry.api,
            base_url,
            api_key_env: entry.api_key_env,
            api_key,
        };
        if providers.insert(entry.name.clone(), config).is_some() {
            return Err(format!("{at} is defined twice"));
        }
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_keys_come_from_the_environment() {
        let text = include_str!("../../config/providers.example.toml");
        let providers = parse(text, &|var| {
            (var == "OPENAI_API_KEY").then(|| "sk-test".into())
        })
        .expect("the example parses");
        let openai = &providers["openai"];
        assert_eq!(openai.api, WireApi::Openai);
        assert_eq!(openai.api_key.as_ref().map(ApiKey::expose), Some("sk-test"));
        assert!(providers["anthropic"].api_key.is_none());
        assert!(!format!("{openai:?}").contains("sk-test"));
    }

    #[test]
    fn bad_entries_are_named() {
        let none = |_: &str| None;
        for (text, wanted) in [
            (
                "[[provider]]\nname='a'\napi='grpc'\nbase_url='http://x'\napi_key_env='K'",
                "grpc",
            ),
            (
                "[[provider]]\nname='a'\napi='openai'\nbase_url='ftp://x'\napi_key_env='K'",
                "http or https",
            ),
            (
                "[[provider]]\nname='a'\napi='openai'\nbase_url='http://x'\napi_key_env='K'\nrequest_timeout='soon'",
                "request_timeout",
            ),
            (
                "[[provider]]\nname='a'\napi='openai'\nbase_url='http://x'\napi_key_env='K'\nmax_concurrent_calls=0",
                "max_concurrent_calls",
            ),
            (
                "[[provider]]\nname='a'\napi='openai'\nbase_url='http://x'\napi_key_env='K'\n[[provider]]\nname='a'\napi='openai'\nbase_url='http://x'\napi_key_env='K'",
                "twice",
            ),
        ] {
            let error = parse(text, &none).unwrap_err();
            assert!(error.contains(wanted), "{error}");
        }
    }

    #[test]
    fn a_key_is_redacted_from_text() {
        let key = ApiKey::new("sk-secret-123");
        assert_eq!(
            key.redact("bad key sk-secret-123 given"),
            "bad key [redacted] given"
        );
        assert_eq!(format!("{key} {key:?}"), "[redacted] ApiKey([redacted])");
    }
}
