//! Field-level validation errors, named the way a client addresses its JSON body
//! (`name`, `steps[1].kind`, `steps[2].depends_on[0]`).
//!
//! A hostile body can be wrong in a million places; the list is capped at
//! [`MAX_FIELD_ERRORS`] entries plus one note that more were found, so an error body stays
//! small and validation stops early (see [`ValidationErrors::is_full`]).

use serde::Serialize;

/// Most field errors one refusal lists; past it, one more entry says that more were found.
pub const MAX_FIELD_ERRORS: usize = 20;

/// The `field` of the entry that says more errors were found than listed.
pub const MORE_ERRORS_FIELD: &str = "(more)";

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON path of the field in the request body.
    pub field: String,
    /// What is wrong with it, for a person.
    pub message: String,
}

/// Every field error found in one command (at most [`MAX_FIELD_ERRORS`] and a note);
/// never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationErrors {
    /// Records a refused field; past [`MAX_FIELD_ERRORS`], only notes once that there were
    /// more.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        match self.0.len() {
            n if n < MAX_FIELD_ERRORS => self.0.push(FieldError {
                field: field.into(),
                message: message.into(),
            }),
            MAX_FIELD_ERRORS => self.0.push(FieldError {
                field: MORE_ERRORS_FIELD.to_owned(),
                message: format!(
                    "more fields were refused; only the first {MAX_FIELD_ERRORS} are listed"
                ),
            }),
            _ => {}
        }
    }

    /// Records every error of `other`, within the same cap.
    pub fn append(&mut self, other: ValidationErrors) {
        for error in other.0 {
            if error.field == MORE_ERRORS_FIELD {
                // Keeps the note even when `other` alone reached the cap.
                self.push(MORE_ERRORS_FIELD, "");
                self.push(MORE_ERRORS_FIELD, "");
                continue;
            }
            self.push(error.field, error.message);
        }
    }

    /// Whether the cap is reached: checking further finds nothing that will be listed.
    pub fn is_full(&self) -> bool {
        self.0.len() > MAX_FIELD_ERRORS
    }

    /// Whether nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was refused.
    pub fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// At most [`SHOWN_CHARS`] characters of `value`, for echoing a refused value in a
/// message without echoing a megabyte.
pub fn shown(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        value.to_owned()
    } else {
        let prefix: String = value.chars().take(SHOWN_CHARS).collect();
        format!("{prefix}…")
    }
}

/// How much of a refused value a message echoes, in characters.
pub const SHOWN_CHARS: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_past_the_cap_are_counted_once_not_listed() {
        let mut errors = ValidationErrors::default();
        for index in 0..1_000 {
            errors.push(format!("steps[{index}].id"), "must not be empty");
        }
        assert_eq!(errors.0.len(), MAX_FIELD_ERRORS + 1);
        assert_eq!(errors.0[MAX_FIELD_ERRORS].field, MORE_ERRORS_FIELD);
        assert!(errors.is_full());
    }

    #[test]
    fn appending_a_full_list_keeps_the_note() {
        let mut full = ValidationErrors::default();
        for _ in 0..50 {
            full.push("a", "b");
        }
        let mut errors = ValidationErrors::default();
        errors.push("name", "is required");
        errors.append(full);
        assert_eq!(errors.0.len(), MAX_FIELD_ERRORS + 1);
        assert_eq!(errors.0.last().unwrap().field, MORE_ERRORS_FIELD);
    }

    #[test]
    fn shown_values_are_short() {
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown(&"x".repeat(10_000)).chars().count(), SHOWN_CHARS + 1);
    }
}
