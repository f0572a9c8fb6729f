//! Personal data, as the domain sees it: the *shape* of an encrypted value on the log, the
//! marker an erased one reads as, and which fields a tenant marks as personal. The keys and
//! the cryptography live in `flowline-personal-data`; nothing here does I/O
//! (ADR 26).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::accepted::check_name;
use crate::validation::ValidationErrors;

/// How every encrypted value starts: `flowline:pd:v1:<key id>:<base64url(nonce ‖ ciphertext)>`.
/// A string, so it fits both the Avro string fields (`submitted_by`) and any place in a
/// JSON document without changing a schema. Callers cannot submit strings that start so
/// ([`crate::accepted::check_json`]), so every such string on the log was written by us.
pub const ENVELOPE_PREFIX: &str = "flowline:pd:v1:";

/// What a personal value reads as once its subject's key was destroyed.
pub const ERASED: &str = "[erased]";

/// What a personal value reads as when its key exists but the value does not decrypt
/// (altered bytes, or a key of another tenant).
pub const UNREADABLE: &str = "[unreadable]";

/// The subject of a run submitted with neither `subject` nor a known submitter: the run
/// itself, so its personal fields are still encrypted and erasable.
pub fn run_subject(workflow_id: Uuid) -> String {
    format!("run:{workflow_id}")
}

/// An encrypted value's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The data key that sealed it (names a row of the key table, never the subject).
    pub key_id: Uuid,
    /// Nonce and ciphertext, base64url without padding.
    pub sealed: &'a str,
}

impl<'a> Envelope<'a> {
    /// The envelope `text` is, if it is one.
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix(ENVELOPE_PREFIX)?;
        let (key_id, sealed) = rest.split_once(':')?;
        Some(Self {
            key_id: Uuid::try_parse(key_id).ok()?,
            sealed,
        })
    }

    /// Its text.
    pub fn format(key_id: Uuid, sealed: &str) -> String {
        format!("{ENVELOPE_PREFIX}{}:{sealed}", key_id.simple())
    }
}

/// Whether `text` has the shape of an encrypted value.
pub fn is_envelope(text: &str) -> bool {
    text.starts_with(ENVELOPE_PREFIX)
}

/// Whether any string in `value` is an encrypted value.
pub fn contains_envelope(value: &Value) -> bool {
    match value {
        Value::String(text) => is_envelope(text),
        Value::Array(items) => items.iter().any(contains_envelope),
        Value::Object(members) => members.values().any(contains_envelope),
        _ => false,
    }
}

/// Most paths one list of a privacy config may hold.
pub const MAX_PATHS: usize = 100;
/// Most signal names a privacy config may list.
pub const MAX_SIGNALS: usize = 100;
/// Longest path, in characters.
pub const MAX_PATH_CHARS: usize = 200;

/// Which fields of a tenant's runs name or describe a person, besides `submitted_by`
/// (always personal). Paths are dot-separated member names (`customer.email`); `*` stands
/// for every member of an object or every item of an array, a number for one item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Paths into a run's `input`.
    #[serde(default)]
    pub input: Vec<String>,
    /// Per signal name (or `*` for every signal): paths into its payload.
    #[serde(default)]
    pub signals: BTreeMap<String, Vec<String>>,
}

impl PrivacyConfig {
    /// Checks every path, naming each refused one (`input[2]`, `signals.approve[0]`).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_paths(&self.input, "input", &mut errors);
        if self.signals.len() > MAX_SIGNALS {
            errors.push(
                "signals",
                format!("must name at most {MAX_SIGNALS} signals"),
            );
        }
        for (name, paths) in &self.signals {
            let field = format!("signals.{}", crate::validation::shown(name));
            if name != "*" && !crate::command::is_identifier(name) {
                errors.push(
                    &field,
                    "must be a signal name (ASCII letters, digits, '_', '-', '.') or '*'",
                );
            }
            check_paths(paths, &field, &mut errors);
        }
        errors.into_result()
    }

    /// The paths of signal `name`'s payload that are personal.
    pub fn signal_paths<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a String> + 'a {
        let named = self.signals.get(name).into_iter().flatten();
        let every = self.signals.get("*").into_iter().flatten();
        named.chain(every)
    }
}

fn check_paths(paths: &[String], field: &str, errors: &mut ValidationErrors) {
    if paths.len() > MAX_PATHS {
        errors.push(field, format!("must hold at most {MAX_PATHS} paths"));
        return;
    }
    for (index, path) in paths.iter().enumerate() {
        let at = format!("{field}[{index}]");
        let before = errors.0.len();
        check_name(path, &at, MAX_PATH_CHARS, errors);
        if errors.0.len() == before && path.split('.').any(str::is_empty) {
            errors.push(&at, "must be member names separated by single dots");
        }
    }
}

/// Calls `each` on every node of `value` that `path` selects and that is present (absent
/// members are not created, `null` is left alone: there is nothing to protect).
pub fn for_each_at_path(value: &mut Value, path: &str, each: &mut impl FnMut(&mut Value)) {
    let segments: Vec<&str> = path.split('.').collect();
    visit(value, &segments, each);
}

fn visit(value: &mut Value, segments: &[&str], each: &mut impl FnMut(&mut Value)) {
    let Some((first, rest)) = segments.split_first() else {
        if !value.is_null() {
            each(value);
        }
        return;
    };
    match value {
        Value::Object(members) if *first == "*" => {
            members.values_mut().for_each(|m| visit(m, rest, each));
        }
        Value::Object(members) => {
            if let Some(member) = members.get_mut(*first) {
                visit(member, rest, each);
            }
        }
        Value::Array(items) if *first == "*" => {
            items.iter_mut().for_each(|item| visit(item, rest, each));
        }
        Value::Array(items) => {
            if let Some(item) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                visit(item, rest, each);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelopes_parse_back() {
        let id = Uuid::now_v7();
        let text = Envelope::format(id, "abc_-");
        assert!(is_envelope(&text));
        assert_eq!(
            Envelope::parse(&text),
            Some(Envelope {
                key_id: id,
                sealed: "abc_-"
            })
        );
        assert_eq!(Envelope::parse("flowline:pd:v1:nope:x"), None);
        assert!(contains_envelope(&json!({"a": [1, text]})));
        assert!(!contains_envelope(&json!({"a": [1, "plain"]})));
    }

    #[test]
    fn paths_select_present_nodes_only() {
        let mut input = json!({
            "customer": {"email": "a@b", "name": null},
            "items": [{"owner": "x"}, {"owner": "y"}, {}]
        });
        let mut seen = Vec::new();
        for path in [
            "customer.email",
            "customer.name",
            "customer.phone",
            "items.*.owner",
            "items.0",
        ] {
            for_each_at_path(&mut input, path, &mut |node| seen.push(node.clone()));
        }
        assert_eq!(
            seen,
            vec![json!("a@b"), json!("x"), json!("y"), json!({"owner": "x"})]
        );
    }

    #[test]
    fn configs_name_their_bad_paths() {
        let config: PrivacyConfig = serde_json::from_value(json!({
            "input": ["customer.email", "a..b", ""],
            "signals": {"approve": ["by"], "bad name!": ["x"], "*": ["note"]}
        }))
        .unwrap();
        let errors = config.validate().unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["input[1]", "input[2]", "signals.bad name!"]);
        let paths: Vec<_> = config.signal_paths("approve").collect();
        assert_eq!(paths, vec!["by", "note"]);
    }
}
