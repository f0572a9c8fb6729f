//! Consistency tokens: a position on the log that a reader can ask to have been passed.
//!
//! A command's answer names where its events landed (partition and offset); a query given
//! that token waits until the projection has read past it, which is read-your-writes
//! without sticky sessions. A token may hold several partitions (a client that wrote to
//! several streams can merge its tokens), written `partition:offset` pairs joined by
//! commas, e.g. `3:1041,5:77`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Most partitions one token may name (a bound on what a request makes the server check).
const MAX_PARTITIONS: usize = 1024;

/// The log positions a reader wants to have been projected: per partition, the offset of
/// the last record that must be visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    positions: BTreeMap<i32, i64>,
}

/// Why a token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a consistency token: {0} (expected `partition:offset` pairs separated by commas, as returned by a command)"
)]
pub struct InvalidToken(String);

impl ConsistencyToken {
    /// The token for one record.
    pub fn at(partition: i32, offset: i64) -> Self {
        Self {
            positions: BTreeMap::from([(partition, offset)]),
        }
    }

    /// The later of both tokens' positions, per partition.
    pub fn merge(mut self, other: &ConsistencyToken) -> Self {
        for (&partition, &offset) in &other.positions {
            let slot = self.positions.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        self
    }

    /// Per partition, the offset that must have been projected.
    pub fn positions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.positions.iter().map(|(&p, &o)| (p, o))
    }

    /// Whether a reader whose next offsets to read are `next_offsets` has passed the token.
    pub fn is_passed_by(&self, next_offsets: &BTreeMap<i32, i64>) -> bool {
        self.positions.iter().all(|(partition, offset)| {
            next_offsets
                .get(partition)
                .is_some_and(|next| next > offset)
        })
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (partition, offset) in &self.positions {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{partition}:{offset}")?;
        }
        Ok(())
    }
}

impl FromStr for ConsistencyToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut positions = BTreeMap::new();
        for pair in text.trim().split(',') {
            let (partition, offset) = pair
                .split_once(':')
                .ok_or_else(|| InvalidToken(format!("'{pair}' has no ':'")))?;
            let partition: i32 = partition
                .trim()
                .parse()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| InvalidToken(format!("'{partition}' is not a partition")))?;
            let offset: i64 = offset
                .trim()
                .parse()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| InvalidToken(format!("'{offset}' is not an offset")))?;
            let slot = positions.entry(partition).or_insert(offset);
            *slot = (*slot).max(offset);
        }
        if positions.len() > MAX_PARTITIONS {
            return Err(InvalidToken(format!(
                "names {} partitions, at most {MAX_PARTITIONS} allowed",
                positions.len()
            )));
        }
        Ok(Self { positions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges() {
        let token: ConsistencyToken = "3:1041, 5:77".parse().unwrap();
        assert_eq!(token.to_string(), "3:1041,5:77");
        let merged = token.merge(&ConsistencyToken::at(5, 80));
        assert_eq!(merged.to_string(), "3:1041,5:80");
    }

    #[test]
    fn passed_only_when_every_partition_read_beyond_it() {
        let token: ConsistencyToken = "0:10,1:4".parse().unwrap();
        assert!(!token.is_passed_by(&BTreeMap::from([(0, 11)])));
        assert!(!token.is_passed_by(&BTreeMap::from([(0, 10), (1, 5)])));
        assert!(token.is_passed_by(&BTreeMap::from([(0, 11), (1, 5)])));
    }

    #[test]
    fn rejects_what_a_command_never_returns() {
        for bad in ["", "3", "a:1", "1:-2", "-1:3", "1:2,x"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }
}
