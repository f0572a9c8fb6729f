//! Encoding envelopes to single-object Avro and back, with schema resolution and upcasting.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use flowline_domain::EventEnvelope;

use crate::catalogue::{Catalogue, SchemaEntry};
use crate::value::{from_value, to_value};
use crate::{Error, Result};

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// An event encoded for the log, with what its record headers need.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    /// The event type (Avro record name).
    pub event_type: &'static str,
    /// The schema version it was written with.
    pub schema_version: u32,
    /// Single-object encoded Avro bytes.
    pub payload: Vec<u8>,
}

/// Writers and resolving readers, prepared once: resolving a schema per event would cost
/// more than encoding it.
struct Prepared {
    writers: HashMap<&'static str, (Vec<u8>, GenericDatumWriter<'static>)>,
    readers: HashMap<u64, GenericDatumReader<'static>>,
}

static PREPARED: LazyLock<Prepared> = LazyLock::new(|| {
    let catalogue = Catalogue::embedded();
    let mut writers = HashMap::new();
    let mut readers = HashMap::new();
    for entry in catalogue.entries() {
        let latest = catalogue
            .latest(entry.event_type)
            .expect("entry has a type");
        if latest.fingerprint == entry.fingerprint {
            let header = RabinFingerprintHeader::from_schema(&entry.schema).build_header();
            let writer = GenericDatumWriter::builder(&entry.schema)
                .build()
                .expect("embedded schema resolves");
            writers.insert(entry.event_type, (header, writer));
        }
        let reader = GenericDatumReader::builder(&entry.schema)
            .reader_schema(&latest.schema)
            .build()
            .expect("embedded schemas resolve");
        readers.insert(entry.fingerprint, reader);
    }
    Prepared { writers, readers }
});

/// Encodes with the newest schema of each event type; decodes any known version.
#[derive(Clone, Copy)]
pub struct EventCodec {
    catalogue: &'static Catalogue,
    prepared: &'static Prepared,
}

impl std::fmt::Debug for EventCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCodec").finish_non_exhaustive()
    }
}

impl Default for EventCodec {
    fn default() -> Self {
        Self {
            catalogue: Catalogue::embedded(),
            prepared: &PREPARED,
        }
    }
}

impl EventCodec {
    /// Encodes an envelope with the newest schema version of its event type.
    pub fn encode(&self, envelope: &EventEnvelope) -> Result<EncodedEvent> {
        let entry = self.catalogue.latest(envelope.event.event_type())?;
        let (header, writer) = &self.prepared.writers[entry.event_type];
        let mut payload = Vec::with_capacity(256);
        payload.extend_from_slice(header);
        writer.write_value(&mut payload, to_value(envelope))?;
        Ok(EncodedEvent {
            event_type: entry.event_type,
            schema_version: entry.version,
            payload,
        })
    }

    /// The schema a payload names in its header.
    pub fn writer_schema(&self, payload: &[u8]) -> Result<&'static SchemaEntry> {
        if payload.len() < HEADER_LEN || payload[..2] != MAGIC {
            return Err(Error::NotSingleObject);
        }
        let fingerprint = u64::from_le_bytes(payload[2..HEADER_LEN].try_into().expect("8 bytes"));
        self.catalogue.by_fingerprint(fingerprint)
    }

    /// Decodes a payload written with any known version into the current model.
    pub fn decode(&self, payload: &[u8]) -> Result<EventEnvelope> {
        let writer = self.writer_schema(payload)?;
        let mut datum = &payload[HEADER_LEN..];
        let value = self.prepared.readers[&writer.fingerprint].read_value(&mut datum)?;
        let value = upcast(writer, value);
        from_value(writer.event_type, &value)
    }
}

/// Semantic changes that Avro resolution cannot express (a field whose meaning changed,
/// a value computed from old fields) belong here, keyed by event type and writer version.
/// Renames and added fields need none: the reader schema's aliases and defaults do it.
fn upcast(writer: &SchemaEntry, value: Value) -> Value {
    let _ = writer; // no version needs more than resolution yet
    value
}

#[cfg(test)]
mod tests {
    use apache_avro::{GenericSingleObjectWriter, Schema};
    use chrono::{TimeZone, Utc};
    use flowline_domain::{
        EventMetadata, SignalReceived, StepDefinition, StepKind, WorkflowCancelled, WorkflowEvent,
        WorkflowSubmitted,
    };
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn envelope(event: WorkflowEvent) -> EventEnvelope {
        EventEnvelope {
            metadata: EventMetadata {
                event_id: Uuid::now_v7(),
                tenant: "acme".into(),
                stream_id: Uuid::now_v7(),
                stream_version: 7,
                occurred_at: Utc.with_ymd_and_hms(2026, 11, 26, 1, 2, 3).unwrap(),
                command_id: Uuid::now_v7(),
                correlation_id: Uuid::now_v7(),
                causation_id: Uuid::now_v7(),
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
                tracestate: None,
            },
            event,
        }
    }

    fn every_event() -> Vec<EventEnvelope> {
        vec![
            envelope(WorkflowEvent::Submitted(WorkflowSubmitted {
                name: "research".into(),
                input: json!({"topic": "avro", "n": 3}),
                steps: vec![
                    StepDefinition {
                        id: "fetch".into(),
                        kind: StepKind::Http,
                        depends_on: vec![],
                        config: json!({"url": "http://example.test"}),
                    },
                    StepDefinition {
                        id: "summarize".into(),
                        kind: StepKind::McpTool,
                        depends_on: vec!["fetch".into()],
                        config: json!({}),
                    },
                ],
            })),
            envelope(WorkflowEvent::Cancelled(WorkflowCancelled {
                reason: Some("stop".into()),
            })),
            envelope(WorkflowEvent::Cancelled(WorkflowCancelled { reason: None })),
            envelope(WorkflowEvent::SignalReceived(SignalReceived {
                name: "approve".into(),
                payload: json!([1, "two", null]),
            })),
        ]
    }

    #[test]
    fn every_event_round_trips() {
        let codec = EventCodec::default();
        for original in every_event() {
            let encoded = codec.encode(&original).unwrap();
            assert_eq!(encoded.event_type, original.event.event_type());
            assert_eq!(codec.decode(&encoded.payload).unwrap(), original);
        }
    }

    #[test]
    fn the_framing_is_avro_single_object_encoding() {
        // Another single-object writer (the library's own) must produce the same header,
        // so any Avro implementation can read our payloads by fingerprint.
        let codec = EventCodec::default();
        let event = &every_event()[1];
        let encoded = codec.encode(event).unwrap();
        let schema: &Schema = &Catalogue::embedded()
            .latest("WorkflowCancelled")
            .unwrap()
            .schema;
        let mut writer = GenericSingleObjectWriter::new_with_capacity(schema, 1024).unwrap();
        let mut expected = Vec::new();
        writer.write_value(to_value(event), &mut expected).unwrap();
        assert_eq!(encoded.payload, expected);
    }

    #[test]
    fn garbage_and_unknown_schemas_are_refused() {
        let codec = EventCodec::default();
        assert!(matches!(
            codec.decode(b"{\"json\":1}"),
            Err(Error::NotSingleObject)
        ));
        let mut unknown = vec![0xC3, 0x01];
        unknown.extend(42u64.to_le_bytes());
        assert!(matches!(
            codec.decode(&unknown),
            Err(Error::UnknownSchema(42))
        ));
    }
}
