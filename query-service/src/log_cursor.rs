//! Where a reader of the event feed is: the last log offset it has seen per partition.
//!
//! Each partition's events are committed to the read model in offset order by one projector
//! at a time (ADR 4), so "every event of partition p with an offset above the cursor's"
//! is exactly what a reader has not seen yet, whenever it asks. That makes the cursor a
//! gap-free, duplicate-free resume point, across query-service restarts and projection
//! rebuilds alike (the log positions do not change). No wall clock or sequence is involved:
//! a sequence number taken at insert could commit out of order.
//!
//! The text form is opaque to clients: URL-safe base64 of `partition:offset` pairs
//! joined by commas. The empty cursor (`""`) is "before the first event".

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Error, Result};

/// Most partitions a cursor may name (as a consistency token): what a client sends stays
/// bounded work.
const MAX_PARTITIONS: usize = 1024;

/// Last seen offset per partition; a partition not named has had nothing seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor(BTreeMap<i32, i64>);

impl LogCursor {
    /// From per-partition positions.
    pub fn from_positions(positions: impl IntoIterator<Item = (i32, i64)>) -> Self {
        Self(positions.into_iter().collect())
    }

    /// Whether the event at `partition`/`offset` comes after the cursor.
    pub fn precedes(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_none_or(|seen| offset > *seen)
    }

    /// Moves past the event at `partition`/`offset`.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let seen = self.0.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
    }

    /// The positions, partition by partition.
    pub fn positions(&self) -> (Vec<i32>, Vec<i64>) {
        self.0.iter().map(|(p, o)| (*p, *o)).unzip()
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        let text = self
            .0
            .iter()
            .map(|(partition, offset)| format!("{partition}:{offset}"))
            .collect::<Vec<_>>()
            .join(",");
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a cursor given as `parameter`.
    pub fn decode(cursor: &str, parameter: &'static str) -> Result<Self> {
        let invalid = || Error::InvalidParameter {
            parameter,
            message: "not a cursor returned by this API".into(),
        };
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut positions = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (partition, offset) = pair.split_once(':').ok_or_else(invalid)?;
            let partition: i32 = partition.parse().map_err(|_| invalid())?;
            let offset: i64 = offset.parse().map_err(|_| invalid())?;
            if partition < 0 || offset < 0 {
                return Err(invalid());
            }
            positions.insert(partition, offset);
            if positions.len() > MAX_PARTITIONS {
                return Err(invalid());
            }
        }
        Ok(Self(positions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_per_partition() {
        let mut cursor = LogCursor::default();
        assert!(cursor.precedes(3, 0));
        cursor.advance(3, 7);
        cursor.advance(0, 2);
        cursor.advance(3, 5);
        assert!(!cursor.precedes(3, 7));
        assert!(cursor.precedes(3, 8));
        assert!(cursor.precedes(1, 0));
        let text = cursor.encode();
        assert_eq!(LogCursor::decode(&text, "after").unwrap(), cursor);
    }

    #[test]
    fn the_empty_cursor_is_the_start() {
        assert_eq!(
            LogCursor::decode("", "after").unwrap(),
            LogCursor::default()
        );
        assert_eq!(LogCursor::default().encode(), "");
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        for bad in ["%%%", "eA", "MTot", "YTox"] {
            assert!(
                matches!(
                    LogCursor::decode(bad, "after"),
                    Err(Error::InvalidParameter {
                        parameter: "after",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
