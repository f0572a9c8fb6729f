//! The per-stream hash chain that makes the log tamper-evident: every event's hash covers
//! its stream's previous hash, so a reader of the Kafka log alone can check that no event
//! of a stream was altered, dropped or reordered (see `docs/adr/0009-cloudevents-and-hash-chain.md`).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The previous hash of a chain's first event: version 1, or the first event appended
/// after events that predate the chain.
pub const GENESIS: Hash = [0; 32];

/// Domain separation, and the encoding's version should it ever change.
const CHAIN_TAG: &[u8] = b"flowline-chain-v1\0";

/// What an event's hash covers (besides the previous hash).
#[derive(Debug, Clone, Copy)]
pub struct ChainedEvent<'a> {
    /// Tenant owning the stream.
    pub tenant: &'a str,
    /// The stream.
    pub stream_id: Uuid,
    /// 1-based version in the stream.
    pub stream_version: u64,
    /// The event id.
    pub event_id: Uuid,
    /// Event type (Avro record name).
    pub event_type: &'a str,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// When it occurred; the hash covers whole microseconds, the precision PostgreSQL
    /// stores and `ce_time` carries.
    pub occurred_at: DateTime<Utc>,
    /// The Avro single-object bytes exactly as published.
    pub payload: &'a [u8],
}

impl ChainedEvent<'_> {
    /// SHA-256 over the canonical encoding: the tag, `prev`, then every field in a fixed
    /// order, variable-length ones prefixed by their big-endian length, so no two
    /// different events encode alike.
    pub fn hash(&self, prev: &Hash) -> Hash {
        let mut digest = Sha256::new();
        digest.update(CHAIN_TAG);
        digest.update(prev);
        digest.update((self.tenant.len() as u32).to_be_bytes());
        digest.update(self.tenant.as_bytes());
        digest.update(self.stream_id.as_bytes());
        digest.update(self.stream_version.to_be_bytes());
        digest.update(self.event_id.as_bytes());
        digest.update((self.event_type.len() as u32).to_be_bytes());
        digest.update(self.event_type.as_bytes());
        digest.update(self.schema_version.to_be_bytes());
        digest.update(self.occurred_at.timestamp_micros().to_be_bytes());
        digest.update((self.payload.len() as u64).to_be_bytes());
        digest.update(self.payload);
        digest.finalize().into()
    }
}

/// Lower-case hex, as the record headers carry hashes.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// A hash from its hex form; `None` unless it is 64 hex digits.
pub fn from_hex(text: &str) -> Option<Hash> {
    let mut hash = GENESIS;
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

/// A hash from its stored bytes; `None` unless exactly 32.
pub fn from_bytes(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &[u8]) -> ChainedEvent<'_> {
        ChainedEvent {
            tenant: "acme",
            stream_id: Uuid::nil(),
            stream_version: 1,
            event_id: Uuid::nil(),
            event_type: "WorkflowSubmitted",
            schema_version: 2,
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            payload,
        }
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let base = event(b"abc").hash(&GENESIS);
        assert_ne!(base, event(b"abd").hash(&GENESIS));
        assert_ne!(base, event(b"abc").hash(&[1; 32]));
        let mut later = event(b"abc");
        later.stream_version = 2;
        assert_ne!(base, later.hash(&GENESIS));
        assert_eq!(from_hex(&to_hex(&base)), Some(base));
        assert_eq!(from_hex("zz"), None);
    }
}
