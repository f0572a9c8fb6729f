//! How large an event's record is on the log, before it is stored: the command service
//! refuses a command whose record the producer would refuse (`message.max.bytes`), since
//! a stored event must always be publishable.

use flowline_domain::EventEnvelope;
use flowline_schemas::EncodedEvent;

use crate::relay::{OutboxRow, record_key};

/// What librdkafka adds to a record's key, value and headers when it checks a record
/// against `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`), rounded up.
const RECORD_OVERHEAD: usize = 64;
/// The most bytes of one varint length prefix.
const VARINT_BYTES: usize = 5;

/// The bytes librdkafka counts for the record the relay will publish for `envelope`
/// (encoded as `encoded`): key, value and the very headers the relay adds, hashes
/// included, each length prefix at its largest.
pub fn record_bytes(
    envelope: &EventEnvelope,
    encoded: &EncodedEvent,
    cloudevents_source: &str,
) -> usize {
    let metadata = &envelope.metadata;
    let row = OutboxRow {
        position: 0,
        tenant: metadata.tenant.clone(),
        stream_id: metadata.stream_id,
        stream_version: metadata.stream_version as i64,
        event_id: metadata.event_id,
        command_id: metadata.command_id,
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version as i32,
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        traceparent: metadata.traceparent.clone(),
        tracestate: metadata.tracestate.clone(),
        payload: Vec::new(),
        occurred_at: metadata.occurred_at,
        prev_hash: Some(vec![0; 32]),
        event_hash: Some(vec![0; 32]),
    };
    let headers: usize = row
        .headers(cloudevents_source)
        .iter()
        .map(|(name, value)| 2 * VARINT_BYTES + name.len() + value.len())
        .sum();
    RECORD_OVERHEAD
        + record_key(metadata.stream_id).len()
        + encoded.payload.len()
        + VARINT_BYTES
        + headers
}
