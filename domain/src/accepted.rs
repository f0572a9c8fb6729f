//! The accepted language of commands (ADR 0017): which JSON values, names and texts a
//! command may carry, and how long a run's stream may grow.
//!
//! Everything a command carries ends up in an Avro record on the log, in PostgreSQL
//! `jsonb` columns, in snapshots, in REST and GraphQL answers and in subscriptions, each
//! wrapping it a few levels deeper and each with limits of its own (serde_json stops at 128
//! levels, `jsonb` refuses U+0000, a btree index row holds about 2.7 kB). The command
//! boundary accepts only what all of them can hold, so a later stage never meets a value
//! it cannot store or read; the rest is refused with the JSON path of the offending part.
//!
//! The total size of a command is bounded where its encoding is known: the command service
//! refuses an event whose record would not fit the log (`MAX_EVENT_BYTES`).

use std::fmt::Write;

use serde_json::Value;

use crate::event::{StepKind, WorkflowEvent};
use crate::policy::StepPolicy;
use crate::validation::{ValidationErrors, shown};
use crate::workflow::DomainError;

/// Deepest nesting of arrays and objects in one value (`{"a":[1]}` is 2 deep). Far below
/// serde_json's 128, so a value still parses when events, snapshots and GraphQL answers
/// wrap it a few levels deeper.
pub const MAX_DEPTH: usize = 32;
/// Longest object key, in characters.
pub const MAX_KEY_CHARS: usize = 256;
/// Most items of one array, and most members of one object.
pub const MAX_ITEMS: usize = 10_000;
/// Longest name that a read model indexes (workflow names, `llm` models, `mcp_tool`
/// servers and tools), in characters: with four bytes a character, two of them still fit
/// one btree index row.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest free text (a cancel or pause reason), in characters.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Default of the most events one run's stream holds (`MAX_STREAM_EVENTS`).
pub const DEFAULT_MAX_STREAM_EVENTS: u64 = 100_000;
/// Longest JSON path a message names; longer ones keep their start and end.
const MAX_PATH_CHARS: usize = 200;

/// Checks a JSON value carried at `field` (`input`, `steps[2].config`, `payload`) against
/// the accepted language, naming each refused part by its JSON path (`input.a.b[3]`).
pub fn check_json(value: &Value, field: &str, errors: &mut ValidationErrors) {
    let mut path = Vec::new();
    walk(value, 0, field, &mut path, errors);
}

/// One step of a JSON path.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn walk<'a>(
    value: &'a Value,
    depth: usize,
    field: &str,
    path: &mut Vec<Segment<'a>>,
    errors: &mut ValidationErrors,
) {
    if errors.is_full() {
        return;
    }
    let container_items = match value {
        Value::String(text) => {
            if text.contains('\0') {
                errors.push(json_path(field, path), NUL_MESSAGE);
            } else if crate::personal::is_envelope(text) {
                // Only the service seals values; a caller's look-alike could otherwise
                // ask the edge to decrypt a value copied from elsewhere (ADR 26).
                errors.push(
                    json_path(field, path),
                    format!(
                        "must not start with '{}': reserved for encrypted personal data",
                        crate::personal::ENVELOPE_PREFIX
                    ),
                );
            }
            return;
        }
        Value::Array(items) => items.len(),
        Value::Object(members) => members.len(),
        Value::Null | Value::Bool(_) | Value::Number(_) => return,
    };
    if depth + 1 > MAX_DEPTH {
        errors.push(
            json_path(field, path),
            format!("nests deeper than {MAX_DEPTH} levels of arrays and objects"),
        );
        return;
    }
    if container_items > MAX_ITEMS {
        errors.push(
            json_path(field, path),
            format!("has {container_items} items; at most {MAX_ITEMS} are accepted"),
        );
        return;
    }
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                walk(item, depth + 1, field, path, errors);
                path.pop();
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                path.push(Segment::Key(key));
                if key.contains('\0') {
                    errors.push(json_path(field, path), format!("key: {NUL_MESSAGE}"));
                } else if key.chars().count() > MAX_KEY_CHARS {
                    errors.push(
                        json_path(field, path),
                        format!("key is longer than {MAX_KEY_CHARS} characters"),
                    );
                }
                walk(member, depth + 1, field, path, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// `field.key[3]["odd key"]`, keys shortened to a prefix, the whole at most
/// [`MAX_PATH_CHARS`] characters.
fn json_path(field: &str, path: &[Segment<'_>]) -> String {
    let mut text = field.to_owned();
    for segment in path {
        match segment {
            Segment::Index(index) => {
                let _ = write!(text, "[{index}]");
            }
            Segment::Key(key) if is_plain_key(key) => {
                let _ = write!(text, ".{}", shown(key));
            }
            Segment::Key(key) => {
                let quoted = serde_json::to_string(&shown(&key.replace('\0', "\\u0000")))
                    .unwrap_or_default();
                let _ = write!(text, "[{quoted}]");
            }
        }
    }
    let chars = text.chars().count();
    if chars <= MAX_PATH_CHARS {
        return text;
    }
    let head: String = text.chars().take(MAX_PATH_CHARS / 2).collect();
    let tail: String = text.chars().skip(chars - MAX_PATH_CHARS / 2).collect();
    format!("{head}…{tail}")
}

fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a name that read models index: not blank, at most `max_chars` characters, no
/// control characters.
pub fn check_name(value: &str, field: &str, max_chars: usize, errors: &mut ValidationErrors) {
    if value.trim().is_empty() {
        errors.push(field, "is required and must not be empty");
    } else if value.chars().count() > max_chars {
        errors.push(field, format!("must be at most {max_chars} characters"));
    } else if value.chars().any(char::is_control) {
        errors.push(
            field,
            "must not contain control characters (U+0000-U+001F, U+007F-U+009F)",
        );
    }
}

/// Checks a free text: at most `max_chars` characters and no NUL (line breaks and tabs
/// are fine).
pub fn check_text(value: &str, field: &str, max_chars: usize, errors: &mut ValidationErrors) {
    if value.chars().count() > max_chars {
        errors.push(field, format!("must be at most {max_chars} characters"));
    } else if value.contains('\0') {
        errors.push(field, NUL_MESSAGE);
    }
}

/// The most events a run of these steps can write without any caller command: the run's
/// own events and, per step, an outcome for a start of every attempt its policy allows.
pub fn worst_case_events<'a>(steps: impl IntoIterator<Item = (StepKind, &'a Value)>) -> u64 {
    // Submitted, started, and succeeded, failed or cancelled, and one to spare.
    const RUN_EVENTS: u64 = 4;
    RUN_EVENTS
        + steps
            .into_iter()
            .map(|(kind, config)| {
                let attempts = StepPolicy::parse(kind, config, "")
                    .map(|policy| policy.retry.max_attempts)
                    .unwrap_or(crate::policy::MAX_ATTEMPTS);
                2 * u64::from(attempts)
            })
            .sum::<u64>()
}

/// Whether a run's stream, now at `version`, has room for `event` under a maximum of
/// `max_events`.
///
/// Half of the maximum is the budget of what callers make a stream grow: a submit whose
/// worst case (see [`worst_case_events`]) exceeds it is refused, and so is every caller
/// command but cancel once the stream reached it. What the executor records is never
/// refused: one round of attempts (a submit's, or a step retry's, started below the budget)
/// fits the other half, so no stream grows past `max_events`.
pub fn check_stream_room(
    event: &WorkflowEvent,
    version: u64,
    max_events: u64,
) -> Result<(), DomainError> {
    let budget = max_events / 2;
    match event {
        WorkflowEvent::Submitted(submitted) => {
            let worst =
                worst_case_events(submitted.steps.iter().map(|step| (step.kind, &step.config)));
            if worst > budget {
                let mut errors = ValidationErrors::default();
                errors.push(
                    "steps",
                    format!(
                        "these steps and their retry.max_attempts can write {worst} events; a \
                         run may write at most {budget} (its stream holds at most {max_events})"
                    ),
                );
                return Err(errors.into());
            }
            Ok(())
        }
        WorkflowEvent::SignalReceived(_)
        | WorkflowEvent::Paused(_)
        | WorkflowEvent::Resumed(_)
        | WorkflowEvent::StepRetried(_)
            if version >= budget =>
        {
            Err(DomainError::StreamFull {
                version,
                max_events,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validation::MORE_ERRORS_FIELD;

    fn refused(value: &Value) -> Vec<(String, String)> {
        let mut errors = ValidationErrors::default();
        check_json(value, "input", &mut errors);
        errors.0.into_iter().map(|e| (e.field, e.message)).collect()
    }

    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_one_more_is_refused_at_its_path() {
        assert!(refused(&nested(MAX_DEPTH)).is_empty());
        let errors = refused(&nested(MAX_DEPTH + 1));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let expected = format!("input{}", ".a".repeat(MAX_DEPTH));
        assert_eq!(errors[0].0, expected);
        assert!(errors[0].1.contains("deeper than 32"), "{errors:?}");
    }

    #[test]
    fn nul_is_refused_in_strings_and_keys_other_control_characters_are_not() {
        assert!(refused(&json!({"tab": "a\tb\u{1}\u{7f}", "line": "x\ny"})).is_empty());
        let errors = refused(&json!({"a": ["ok", "n\u{0}l"], "k\u{0}y": 1}));
        let fields: Vec<_> = errors.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(fields, ["input.a[1]", "input[\"k\\\\u0000y\"]"]);
    }

    #[test]
    fn long_keys_and_too_many_items_are_refused() {
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        let errors = refused(&json!({ long.clone(): 1 }));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].0.len() < 100,
            "the path shows a prefix: {}",
            errors[0].0
        );
        assert!(refused(&json!({ "k".repeat(MAX_KEY_CHARS): 1 })).is_empty());
        let errors = refused(&json!({ "list": vec![0; MAX_ITEMS + 1] }));
        assert_eq!(errors[0].0, "input.list");
        assert!(refused(&json!({ "list": vec![0; MAX_ITEMS] })).is_empty());
    }

    #[test]
    fn a_value_wrong_everywhere_yields_a_short_list() {
        let value = Value::Array(vec![json!("\u{0}"); 5_000]);
        let errors = refused(&value);
        assert_eq!(errors.len(), crate::validation::MAX_FIELD_ERRORS + 1);
        assert_eq!(errors.last().unwrap().0, MORE_ERRORS_FIELD);
    }

    #[test]
    fn deep_paths_are_shortened() {
        let key = "x".repeat(MAX_KEY_CHARS);
        let value = (0..MAX_DEPTH + 1).fold(json!(1), |inner, _| json!({ key.clone(): inner }));
        let errors = refused(&value);
        assert!(
            errors[0].0.chars().count() <= MAX_PATH_CHARS + 1,
            "{}",
            errors[0].0
        );
    }

    #[test]
    fn names_refuse_control_characters_and_length() {
        let mut errors = ValidationErrors::default();
        check_name("ok name ü", "name", MAX_NAME_CHARS, &mut errors);
        assert!(errors.is_empty());
        check_name("a\u{0}b", "name", MAX_NAME_CHARS, &mut errors);
        check_name(
            &"n".repeat(MAX_NAME_CHARS + 1),
            "name",
            MAX_NAME_CHARS,
            &mut errors,
        );
        check_name("  ", "name", MAX_NAME_CHARS, &mut errors);
        assert_eq!(errors.0.len(), 3);
    }
}

/// Proptest strategies for values of the accepted language, awkward ones on purpose:
/// nesting at the limit, keys at the limit, every kind of Unicode and escape, numbers at
/// the edges of what JSON carries.
#[cfg(any(test, feature = "strategies"))]
pub mod strategies {
    use proptest::prelude::*;
    use serde_json::{Map, Number, Value};

    use super::{MAX_DEPTH, MAX_KEY_CHARS};

    /// Text with what serializers and databases trip over: quotes, backslashes, control
    /// characters other than NUL, line and paragraph separators, astral characters,
    /// right-to-left marks, noncharacters.
    pub fn awkward_text(max_chars: usize) -> impl Strategy<Value = String> {
        let awkward = prop_oneof![
            Just('"'),
            Just('\\'),
            Just('/'),
            (1u32..0x20).prop_map(|c| char::from_u32(c).expect("control character")),
            Just('\u{7f}'),
            Just('\u{85}'),
            Just('\u{2028}'),
            Just('\u{2029}'),
            Just('\u{200f}'),
            Just('\u{feff}'),
            Just('\u{fffe}'),
            Just('\u{ffff}'),
            Just('\u{1f600}'),
            Just('\u{10ffff}'),
            any::<char>().prop_filter("no NUL", |c| *c != '\0'),
            proptest::char::range('a', 'z'),
        ];
        proptest::collection::vec(awkward, 0..=max_chars).prop_map(String::from_iter)
    }

    /// Numbers at the edges: the integer extremes, tiny and huge finite floats, negative
    /// zero, and any finite float.
    pub fn awkward_number() -> impl Strategy<Value = Number> {
        prop_oneof![
            any::<i64>().prop_map(Number::from),
            any::<u64>().prop_map(Number::from),
            Just(Number::from(u64::MAX)),
            Just(Number::from(i64::MIN)),
            prop_oneof![
                Just(f64::MAX),
                Just(f64::MIN),
                Just(f64::MIN_POSITIVE),
                Just(5e-324),
                Just(-0.0),
                Just(1e19),
                Just(0.1),
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
            ]
            .prop_map(|f| Number::from_f64(f).expect("finite")),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            awkward_number().prop_map(Value::Number),
            awkward_text(40).prop_map(Value::String),
        ]
    }

    /// An object key: short and awkward, or exactly as long as accepted.
    pub fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => awkward_text(12),
            1 => awkward_text(8).prop_map(|start| {
                let mut key: String = start.chars().take(MAX_KEY_CHARS).collect();
                let missing = MAX_KEY_CHARS - key.chars().count();
                key.extend(std::iter::repeat_n('k', missing));
                key
            }),
        ]
    }

    /// Any value of the accepted language: a small tree of awkward leaves, sometimes
    /// with a branch nested exactly [`MAX_DEPTH`] deep.
    pub fn accepted_value() -> impl Strategy<Value = Value> {
        let tree = leaf().prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((key(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        });
        prop_oneof![
            3 => tree.clone(),
            1 => (tree, key(), leaf(), any::<bool>())
                .prop_map(|(tree, key, leaf, arrays)| with_deep_branch(tree, &key, leaf, arrays)),
        ]
    }

    /// An object of the accepted language (what `input` and step configs must be).
    pub fn accepted_object() -> impl Strategy<Value = Value> {
        proptest::collection::vec((key(), accepted_value()), 0..5).prop_map(|members| {
            // Members nest one level below the object: keep the deep branch in bounds.
            let members: Map<String, Value> = members
                .into_iter()
                .map(|(key, value)| (key, shallower(value)))
                .collect();
            Value::Object(members)
        })
    }

    /// `value` with one more member, or item, that nests exactly [`MAX_DEPTH`] deep.
    fn with_deep_branch(value: Value, key: &str, leaf: Value, arrays: bool) -> Value {
        let deep = (0..MAX_DEPTH - 1).fold(leaf, |inner, level| {
            if arrays && level % 2 == 0 {
                Value::Array(vec![inner])
            } else {
                Value::Object(Map::from_iter([(key.to_owned(), inner)]))
            }
        });
        Value::Object(Map::from_iter([
            ("value".to_owned(), value),
            ("deep".to_owned(), deep),
        ]))
    }

    /// One level less of the deepest branch, so a value fits one level further down.
    fn shallower(value: Value) -> Value {
        match value {
            Value::Object(mut members) if members.contains_key("deep") => {
                if let Some(deep) = members.get_mut("deep") {
                    *deep = unwrap_one(deep.take());
                }
                Value::Object(members)
            }
            other => other,
        }
    }

    fn unwrap_one(value: Value) -> Value {
        match value {
            Value::Array(mut items) if items.len() == 1 => items.pop().unwrap_or(Value::Null),
            Value::Object(members) if members.len() == 1 => {
                members.into_iter().next().map_or(Value::Null, |(_, v)| v)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::strategies::{accepted_object, accepted_value};
    use super::*;

    proptest! {
        #[test]
        fn generated_values_are_accepted(value in accepted_value()) {
            let mut errors = ValidationErrors::default();
            check_json(&value, "payload", &mut errors);
            prop_assert!(errors.is_empty(), "{errors}");
        }

        #[test]
        fn generated_objects_are_accepted_as_input(input in accepted_object()) {
            let mut errors = ValidationErrors::default();
            check_json(&input, "input", &mut errors);
            prop_assert!(errors.is_empty(), "{errors}");
        }

        #[test]
        fn accepted_values_survive_serde(value in accepted_value()) {
            let text = serde_json::to_string(&value).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, value);
        }
    }
}
