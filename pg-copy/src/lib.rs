//! Bulk writes with PostgreSQL's `COPY … FROM STDIN` (text format) inside the caller's
//! transaction.
//!
//! Projections insert most of their rows exactly once (every new event, every new run and
//! its steps), so those rows go in as COPY data: the server parses them like `COPY` and
//! skips the planner, the array binds and the conflict checks of `INSERT … SELECT unnest`.
//! Only rows that may already exist keep their `INSERT … ON CONFLICT`.
//!
//! The caller guarantees the rows are new (for the projections: the batch holds the
//! checkpoint lock and folded against the stored versions). A duplicate fails the COPY and
//! with it the transaction, exactly like a duplicate `INSERT` would.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Bytes sent to the server per COPY data message: large enough to amortise the round
/// trip, small enough that parsing on the server overlaps with encoding here.
const CHUNK_BYTES: usize = 1 << 20;

/// One COPY's rows in text format, written field by field.
#[derive(Debug, Default)]
pub struct CopyRows {
    buffer: String,
    rows: u64,
    at_line_start: bool,
}

/// A value that can be one COPY text field.
pub trait CopyField {
    /// Appends the field's text (escaped) to `out`.
    fn write_to(&self, out: &mut String);
}

impl CopyRows {
    /// No rows yet.
    pub fn new() -> Self {
        Self {
            buffer: String::with_capacity(CHUNK_BYTES),
            rows: 0,
            at_line_start: true,
        }
    }

    /// Appends one field to the current row.
    pub fn field(&mut self, value: impl CopyField) -> &mut Self {
        if !self.at_line_start {
            self.buffer.push('\t');
        }
        self.at_line_start = false;
        value.write_to(&mut self.buffer);
        self
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.buffer.push('\n');
        self.at_line_start = true;
        self.rows += 1;
    }

    /// Rows written so far.
    pub fn len(&self) -> u64 {
        self.rows
    }

    /// Whether no row was written.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The COPY data as written (for tests and golden files).
    pub fn as_text(&self) -> &str {
        &self.buffer
    }

    /// Sends the rows with `COPY <table> (<columns>) FROM STDIN` on `connection` (a
    /// transaction derefs to one); returns the rows the server stored.
    pub async fn copy_into(
        &self,
        connection: &mut PgConnection,
        table: &str,
        columns: &[&str],
    ) -> sqlx::Result<u64> {
        if self.is_empty() {
            return Ok(0);
        }
        debug_assert!(self.at_line_start, "the last row was not ended");
        let statement = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
        let mut copy = connection.copy_in_raw(&statement).await?;
        for chunk in chunks(&self.buffer) {
            copy.send(chunk).await?;
        }
        copy.finish().await
    }
}

/// Splits at line ends into pieces of about [`CHUNK_BYTES`] (the server accepts any split;
/// whole lines keep the pieces readable in a packet capture). Works on bytes: a newline
/// byte never occurs inside a multi-byte UTF-8 character, so every cut is valid.
fn chunks(text: &str) -> impl Iterator<Item = &[u8]> {
    let mut rest = text.as_bytes();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= CHUNK_BYTES {
            rest.len()
        } else {
            rest[CHUNK_BYTES..]
                .iter()
                .position(|byte| *byte == b'\n')
                .map_or(rest.len(), |at| CHUNK_BYTES + at + 1)
        };
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        Some(chunk)
    })
}

/// Appends `text` with the COPY text format's escapes: backslash, and the characters that
/// would end a field or a row.
fn escape_into(out: &mut String, text: &str) {
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
}

impl CopyField for &str {
    fn write_to(&self, out: &mut String) {
        escape_into(out, self);
    }
}

impl CopyField for &String {
    fn write_to(&self, out: &mut String) {
        escape_into(out, self);
    }
}

impl<T: CopyField> CopyField for Option<T> {
    fn write_to(&self, out: &mut String) {
        match self {
            Some(value) => value.write_to(out),
            None => out.push_str("\\N"),
        }
    }
}

impl CopyField for Uuid {
    fn write_to(&self, out: &mut String) {
        out.push_str(self.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
}

impl CopyField for i64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl CopyField for i32 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl CopyField for DateTime<Utc> {
    fn write_to(&self, out: &mut String) {
        // Whole microseconds, PostgreSQL's precision, cut the way sqlx's binary encoding
        // cuts them (text input would round instead).
        out.push_str(&self.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
}

/// A `jsonb` (or `json`) field.
pub struct Json<'a>(pub &'a serde_json::Value);

impl CopyField for Json<'_> {
    fn write_to(&self, out: &mut String) {
        // JSON text has no raw tabs or newlines, but its escapes contain backslashes.
        escape_into(out, &self.0.to_string());
    }
}

/// A `text[]` field: an array literal whose elements are always quoted.
pub struct TextArray<'a, S>(pub &'a [S]);

impl<S: AsRef<str>> CopyField for TextArray<'_, S> {
    fn write_to(&self, out: &mut String) {
        let mut literal = String::from("{");
        for (index, element) in self.0.iter().enumerate() {
            if index > 0 {
                literal.push(',');
            }
            literal.push('"');
            for character in element.as_ref().chars() {
                if matches!(character, '"' | '\\') {
                    literal.push('\\');
                }
                literal.push(character);
            }
            literal.push('"');
        }
        literal.push('}');
        escape_into(out, &literal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_rows_end_with_a_newline() {
        let mut rows = CopyRows::new();
        rows.field("a\tb\\c\nd")
            .field(None::<&str>)
            .field(7_i64)
            .field(Json(&serde_json::json!({"q": "x\"y\\z\n"})));
        rows.end_row();
        assert_eq!(
            rows.as_text(),
            "a\\tb\\\\c\\nd\t\\N\t7\t{\"q\":\"x\\\\\"y\\\\\\\\z\\\\n\"}\n"
        );
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn text_arrays_quote_every_element() {
        let mut rows = CopyRows::new();
        rows.field(TextArray(&["a", "b\"c", "NULL", ""]));
        rows.field(TextArray::<&str>(&[]));
        rows.end_row();
        assert_eq!(rows.as_text(), "{\"a\",\"b\\\\\"c\",\"NULL\",\"\"}\t{}\n");
    }

    #[test]
    fn chunks_split_at_line_ends_and_keep_everything() {
        let line = "x".repeat(1000) + "\n";
        let text = line.repeat(3000);
        let pieces: Vec<&[u8]> = chunks(&text).collect();
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|piece| piece.ends_with(b"\n")));
        assert_eq!(pieces.concat(), text.as_bytes());
    }

    #[test]
    fn a_chunk_boundary_inside_a_multibyte_character_is_safe() {
        let text = "x".repeat(CHUNK_BYTES - 1) + "é\n" + &"y".repeat(10) + "\n";
        let pieces: Vec<&[u8]> = chunks(&text).collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces.concat(), text.as_bytes());
    }

    #[test]
    fn timestamps_carry_whole_microseconds() {
        let time = chrono::DateTime::parse_from_rfc3339("2026-11-26T07:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut rows = CopyRows::new();
        rows.field(time).end_row();
        assert_eq!(rows.as_text(), "2026-11-26T07:00:00.123456Z\n");
    }
}
