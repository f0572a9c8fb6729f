//! Step and run policies as callers write them in a step's `config` (and the run's
//! `timeout`): retries with backoff, per-attempt timeouts, what a failure means for the
//! run, and the `wait` step's signal. Parsed once at submit, so a bad policy is a 422
//! naming the field rather than a run that misbehaves later.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::StepKind;
use crate::validation::ValidationErrors;

/// Longest duration a policy may name (a week): timers further out are almost always a
/// unit mistake.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most attempts a retry policy may allow.
pub const MAX_ATTEMPTS: u32 = 100;

/// Parses `500ms`, `30s`, `5m`, `2h` (a whole number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // Echoed in messages: a prefix only.
    let echo = crate::validation::shown(text);
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{echo}' has no unit; write e.g. 500ms, 30s, 5m or 2h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{echo}' must start with a whole number, e.g. 500ms, 30s, 5m"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("'{echo}': unit must be one of ms, s, m, h")),
    };
    let duration = millis
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| format!("'{echo}' is longer than the maximum of 7 days"))?;
    Ok(duration)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(3_600_000) && millis > 0 {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) && millis > 0 {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1_000) {
        format!("{}s", millis / 1_000)
    } else {
        format!("{millis}ms")
    }
}

/// Retries of a step (`config.retry`). Defaults follow Temporal's: 1 s, doubling, capped at
/// 100 × the initial interval; three attempts in all unless said otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Pause before the second attempt.
    pub initial_interval: Duration,
    /// Each further pause is the previous one times this.
    pub backoff_coefficient: f64,
    /// No pause is longer.
    pub max_interval: Duration,
    /// Error kinds that are never retried.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(100),
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based), before jitter: initial ×
    /// coefficient^(attempt-1), capped.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let seconds = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max_interval.as_secs_f64()))
    }

    /// The pause after failed attempt `attempt` with "equal jitter": half the base delay
    /// plus `jitter` (0.0..=1.0, chosen by the caller) of the other half, so pauses still
    /// grow while concurrent retries spread out. A server's `Retry-After` is a floor.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let jittered = Duration::from_secs_f64(base / 2.0 + base / 2.0 * jitter.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |floor| jittered.max(floor))
    }

    /// Whether a failure of `kind` after attempt `attempt` gets another attempt.
    pub fn retries(&self, attempt: u32, kind: &str, retryable: bool) -> bool {
        retryable && attempt < self.max_attempts && !self.non_retryable.iter().any(|k| k == kind)
    }
}

/// What a step's failure for good means for its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// The run fails (the default).
    #[default]
    FailRun,
    /// The run goes on; steps depending on this one are skipped.
    Continue,
}

/// Everything the engine reads from a step's `config` besides the kind's own settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepPolicy {
    /// Retries.
    pub retry: RetryPolicy,
    /// Per attempt, start to close; `None` = no limit (an `http` step has the request's
    /// own default).
    pub timeout: Option<Duration>,
    /// See [`OnFailure`].
    pub on_failure: OnFailure,
    /// For `wait` steps: the signal that completes it.
    pub signal: Option<String>,
}

fn duration_field(
    config: &Value,
    key: &str,
    field: &str,
    errors: &mut ValidationErrors,
) -> Option<Duration> {
    match config.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => match parse_duration(text) {
            Ok(duration) if duration.is_zero() => {
                errors.push(field, "must be longer than 0");
                None
            }
            Ok(duration) => Some(duration),
            Err(message) => {
                errors.push(field, message);
                None
            }
        },
        Some(_) => {
            errors.push(field, "must be a duration string such as 500ms, 30s or 5m");
            None
        }
    }
}

impl StepPolicy {
    /// Reads the policy of a step of `kind` from its `config`; `at` is the config's path in
    /// the request (`steps[2].config`) for error names.
    pub fn parse(kind: StepKind, config: &Value, at: &str) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut policy = StepPolicy {
            timeout: duration_field(config, "timeout", &format!("{at}.timeout"), &mut errors),
            ..StepPolicy::default()
        };
        if kind == StepKind::Wait {
            // A wait fails once when its timeout passes; retrying a wait means nothing.
            policy.retry.max_attempts = 1;
            match config.get("signal") {
                Some(Value::String(name)) if crate::command::is_identifier(name) => {
                    policy.signal = Some(name.clone());
                }
                Some(Value::String(_)) => errors.push(
                    format!("{at}.signal"),
                    "must be 1-128 ASCII letters, digits, '_', '-' or '.'",
                ),
                _ => errors.push(
                    format!("{at}.signal"),
                    "is required for a wait step: the name of the signal that completes it",
                ),
            }
        }
        match config.get("on_failure") {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) if text == "fail" => {}
            Some(Value::String(text)) if text == "continue" => {
                policy.on_failure = OnFailure::Continue;
            }
            Some(_) => errors.push(
                format!("{at}.on_failure"),
                "must be \"fail\" (the default) or \"continue\"",
            ),
        }
        match config.get("retry") {
            None | Some(Value::Null) => {}
            Some(retry @ Value::Object(_)) => {
                let at = format!("{at}.retry");
                policy.retry = parse_retry(retry, &at, policy.retry, &mut errors);
            }
            Some(_) => errors.push(format!("{at}.retry"), "must be an object"),
        }
        errors.into_result().map(|()| policy)
    }
}

fn parse_retry(
    retry: &Value,
    at: &str,
    mut policy: RetryPolicy,
    errors: &mut ValidationErrors,
) -> RetryPolicy {
    const KNOWN: [&str; 5] = [
        "max_attempts",
        "initial_interval",
        "backoff_coefficient",
        "max_interval",
        "non_retryable",
    ];
    if let Some(object) = retry.as_object() {
        for key in object.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
            errors.push(
                format!("{at}.{key}"),
                format!("unknown retry setting; known: {}", KNOWN.join(", ")),
            );
        }
    }
    match retry.get("max_attempts") {
        None | Some(Value::Null) => {}
        Some(value) => match value.as_u64() {
            Some(n @ 1..) if n <= u64::from(MAX_ATTEMPTS) => policy.max_attempts = n as u32,
            _ => errors.push(
                format!("{at}.max_attempts"),
                format!("must be a whole number from 1 to {MAX_ATTEMPTS}"),
            ),
        },
    }
    let initial = duration_field(
        retry,
        "initial_interval",
        &format!("{at}.initial_interval"),
        errors,
    );
    if let Some(initial) = initial {
        policy.initial_interval = initial;
        policy.max_interval = (initial * 100).min(MAX_DURATION);
    }
    if let Some(max) = duration_field(retry, "max_interval", &format!("{at}.max_interval"), errors)
    {
        if max < policy.initial_interval {
            errors.push(
                format!("{at}.max_interval"),
                "must not be shorter than initial_interval",
            );
        }
        policy.max_interval = max;
    }
    match retry.get("backoff_coefficient") {
        None | Some(Value::Null) => {}
        Some(value) => match value.as_f64() {
            Some(c) if (1.0..=10.0).contains(&c) => policy.backoff_coefficient = c,
            _ => errors.push(
                format!("{at}.backoff_coefficient"),
                "must be a number from 1 to 10",
            ),
        },
    }
    match retry.get("non_retryable") {
        None | Some(Value::Null) => {}
        Some(Value::Array(kinds)) if kinds.iter().all(Value::is_string) && kinds.len() <= 32 => {
            policy.non_retryable = kinds
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect();
        }
        Some(_) => errors.push(
            format!("{at}.non_retryable"),
            "must be a list of at most 32 error kinds (strings)",
        ),
    }
    policy
}

/// When a timeout of `duration` started at `from` fires.
pub fn deadline(from: DateTime<Utc>, duration: Option<Duration>) -> Option<DateTime<Utc>> {
    duration
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| from.checked_add_signed(d))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_read_and_write_alike() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
        ] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(duration.as_millis(), millis);
            assert_eq!(format_duration(duration), text);
        }
        for bad in ["", "5", "ms", "1.5s", "3d", "-1s", "9999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_millis(500),
            non_retryable: vec![],
        };
        assert_eq!(policy.base_delay(1), Duration::from_millis(100));
        assert_eq!(policy.base_delay(2), Duration::from_millis(200));
        assert_eq!(policy.base_delay(4), Duration::from_millis(500));
        // Equal jitter: between half and all of the base delay.
        assert_eq!(policy.delay(2, 0.0, None), Duration::from_millis(100));
        assert_eq!(policy.delay(2, 1.0, None), Duration::from_millis(200));
        assert_eq!(
            policy.delay(1, 0.5, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn retries_stop_at_max_attempts_and_for_non_retryable_kinds() {
        let policy = RetryPolicy {
            non_retryable: vec!["http_status".into()],
            ..RetryPolicy::default()
        };
        assert!(policy.retries(1, "timed_out", true));
        assert!(policy.retries(2, "timed_out", true));
        assert!(!policy.retries(3, "timed_out", true));
        assert!(!policy.retries(1, "http_status", true));
        assert!(!policy.retries(1, "timed_out", false));
    }

    #[test]
    fn a_policy_is_read_from_config_with_defaults() {
        let policy = StepPolicy::parse(
            StepKind::Http,
            &json!({"url": "http://x", "timeout": "2s", "on_failure": "continue",
                    "retry": {"max_attempts": 5, "initial_interval": "200ms"}}),
            "steps[0].config",
        )
        .unwrap();
        assert_eq!(policy.timeout, Some(Duration::from_secs(2)));
        assert_eq!(policy.on_failure, OnFailure::Continue);
        assert_eq!(policy.retry.max_attempts, 5);
        assert_eq!(policy.retry.initial_interval, Duration::from_millis(200));
        assert_eq!(policy.retry.max_interval, Duration::from_secs(20));
        assert_eq!(
            StepPolicy::parse(StepKind::Template, &json!({}), "c").unwrap(),
            StepPolicy::default()
        );
    }

    #[test]
    fn every_bad_setting_is_named() {
        let errors = StepPolicy::parse(
            StepKind::Wait,
            &json!({"timeout": "soon", "on_failure": "ignore",
                    "retry": {"max_attempts": 0, "backoff_coefficient": 99, "jitter": true,
                              "initial_interval": "2s", "max_interval": "1s"}}),
            "steps[3].config",
        )
        .unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "steps[3].config.timeout",
                "steps[3].config.signal",
                "steps[3].config.on_failure",
                "steps[3].config.retry.jitter",
                "steps[3].config.retry.max_attempts",
                "steps[3].config.retry.max_interval",
                "steps[3].config.retry.backoff_coefficient",
            ]
        );
    }
}
