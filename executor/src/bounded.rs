//! What the executor writes onto events from sources it does not control (servers'
//! answers, rendered templates, error texts) is made storable everywhere the event goes:
//! PostgreSQL `jsonb` and `text` refuse NUL characters, so a projection would set the event
//! aside, and every later event of its run with it; error texts are capped so an event stays
//! small whatever a server or a template said.

use serde_json::Value;

/// Longest error kind or message kept on an event, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

fn clean(text: &str) -> String {
    text.replace('\u{0}', "\u{FFFD}")
}

/// `value` with every string shaped like an encrypted value replaced by `[unreadable]`:
/// what a server answers or a template makes is never taken for one of our envelopes,
/// which the query service would open for the run's reader (ADR 26).
pub fn without_envelopes(value: Value) -> Value {
    match value {
        Value::String(text) if flowline_domain::personal::is_envelope(&text) => {
            Value::from(flowline_domain::personal::UNREADABLE)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(without_envelopes).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| (key, without_envelopes(value)))
                .collect(),
        ),
        other => other,
    }
}

/// `value` with every NUL in its strings and keys replaced by U+FFFD.
pub fn text_of(value: Value) -> Value {
    match value {
        Value::String(text) if text.contains('\u{0}') => Value::String(clean(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(text_of).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let key = if key.contains('\u{0}') {
                        clean(&key)
                    } else {
                        key
                    };
                    (key, text_of(value))
                })
                .collect(),
        ),
        other => other,
    }
}

/// An error text as an event keeps it: no NUL, at most [`MAX_MESSAGE_CHARS`] characters.
pub fn message(text: &str) -> String {
    let mut kept: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    if kept.len() < text.len() {
        kept.push('…');
    }
    clean(&kept)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_characters_are_replaced_at_any_depth_keys_included() {
        assert_eq!(
            text_of(json!({"a\u{0}": ["x\u{0}y", {"b": "\u{0}"}], "n": 1})),
            json!({"a\u{FFFD}": ["x\u{FFFD}y", {"b": "\u{FFFD}"}], "n": 1})
        );
    }

    #[test]
    fn messages_are_capped_and_cleaned() {
        let long = "é".repeat(5_000);
        let kept = message(&long);
        assert_eq!(kept.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(kept.ends_with('…'));
        assert_eq!(message("a\u{0}b"), "a\u{FFFD}b");
    }
}
