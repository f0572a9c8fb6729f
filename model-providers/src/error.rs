//! Why a call failed, classified the way the providers' own SDKs retry: 408, 409, 429 and
//! every 5xx (529 "overloaded" among them) may succeed later; other 4xx will not. A failed
//! call keeps what it received before it failed, so its tokens are still counted and paid.

use std::time::Duration;

use flowline_domain::TokenUsage;

/// What a call had received when it failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partial {
    /// Text streamed so far.
    pub text: String,
    /// Usage: as reported when the provider reported it, else estimated (prompt estimate
    /// for input, chunks received for output).
    pub usage: TokenUsage,
    /// Whether `usage` is the provider's report rather than an estimate.
    pub usage_reported: bool,
    /// Whether the provider was reached at all (a request refused before it was sent, e.g.
    /// for a missing key or a cool-down, costs nothing).
    pub sent: bool,
}

/// The class of a failed call; its `as_str` is the step failure's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 429, or the provider cooling down after one.
    RateLimited,
    /// 5xx, 529, 408, 409, or an `overloaded_error`/`api_error` event mid-stream.
    Unavailable,
    /// Any other 4xx: the request itself is wrong (bad model, bad key, too long...).
    Refused,
    /// The call took longer than the provider's `request_timeout`.
    TimedOut,
    /// No connection, or it broke before the answer began.
    Transport,
    /// The answer's stream ended or broke before its end.
    StreamCut,
    /// The answer is not the wire format (bad JSON, bad SSE).
    Malformed,
    /// The provider's key variable is not set.
    MissingKey,
}

impl FailureKind {
    /// The stable name a step's failure carries (what `retry.non_retryable` lists).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "model_rate_limited",
            Self::Unavailable => "model_unavailable",
            Self::Refused => "model_request_refused",
            Self::TimedOut => "model_timed_out",
            Self::Transport => "model_transport",
            Self::StreamCut => "model_stream_cut",
            Self::Malformed => "model_malformed_response",
            Self::MissingKey => "missing_api_key",
        }
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// Its class.
    pub kind: FailureKind,
    /// For a person; names the provider; never contains the key.
    pub message: String,
    /// Whether trying again could help.
    pub retryable: bool,
    /// The provider's `Retry-After` (or the remaining cool-down).
    pub retry_after: Option<Duration>,
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    /// What was received before the failure.
    pub partial: Partial,
}

impl CallError {
    pub(crate) fn new(kind: FailureKind, retryable: bool, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable,
            retry_after: None,
            status: None,
            partial: Partial::default(),
        }
    }
}

/// Whether a provider's status may succeed on another try (the OpenAI and Anthropic SDKs'
/// rule: 408, 409, 429 and 5xx; 529 is Anthropic's "overloaded").
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_the_sdks() {
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(status_is_retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(!status_is_retryable(status), "{status}");
        }
    }
}
