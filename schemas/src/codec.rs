//! Encoding envelopes to single-object Avro and back, with schema resolution and upcasting.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
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

/// Writers and readers, prepared once: resolving a schema per event would cost more than
/// encoding it.
struct Prepared {
    writers: HashMap<&'static str, (Vec<u8>, GenericDatumWriter<'static>)>,
    /// Readers of the writer's exact schema (for old versions) or resolving into the newest
    /// (for the newest, where both are the same).
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
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&entry.fingerprint.to_le_bytes());
            let writer = GenericDatumWriter::builder(&entry.schema)
                .build()
                .expect("embedded schema resolves");
            writers.insert(entry.event_type, (header, writer));
        }
        let reader = GenericDatumReader::builder(&entry.schema)
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

    /// Decodes a payload written with any known version into the current model: read with
    /// the writer's schema, rename fields the newest schema knows by an alias, run the
    /// upcasters, then resolve into the newest schema (defaults for added fields).
    pub fn decode(&self, payload: &[u8]) -> Result<EventEnvelope> {
        let writer = self.writer_schema(payload)?;
        let mut datum = &payload[HEADER_LEN..];
        let value = self.prepared.readers[&writer.fingerprint].read_value(&mut datum)?;
        let latest = self.catalogue.latest(writer.event_type)?;
        let value = if latest.fingerprint == writer.fingerprint {
            value
        } else {
            let renamed = apply_field_aliases(value, &latest.schema);
            upcast(writer, renamed).resolve(&latest.schema)?
        };
        from_value(writer.event_type, &value)
    }
}

/// Renames record fields that `reader` declares under an alias, recursively. The Avro
/// specification resolves field aliases, but apache-avro's datum reader does not (its
/// compatibility checker does), so renames are applied here before resolution.
fn apply_field_aliases(value: Value, reader: &Schema) -> Value {
    match (value, reader) {
        (Value::Record(fields), Schema::Record(record)) => Value::Record(
            fields
                .into_iter()
                .map(|(name, value)| {
                    let target = record
                        .fields
                        .iter()
                        .find(|f| f.name == name || f.aliases.contains(&name));
                    match target {
                        Some(field) => (
                            field.name.clone(),
                            apply_field_aliases(value, &field.schema),
                        ),
                        None => (name, value),
                    }
                })
                .collect(),
        ),
        (Value::Array(items), Schema::Array(array)) => Value::Array(
            items
                .into_iter()
                .map(|item| apply_field_aliases(item, &array.items))
                .collect(),
        ),
        (value, _) => value,
    }
}

/// The principal v1 submissions are attributed to: v1 did not record one, which is not
/// the same as a v2 submission made without one (`null`).
pub const LEGACY_PRINCIPAL: &str = "legacy:unrecorded";

/// Semantic changes that Avro resolution cannot express (a field whose meaning changed,
/// a value computed from old fields) belong here, keyed by event type and writer version.
/// They see the writer's shape with aliased fields already renamed, and run before
/// resolution fills the newest schema's defaults.
fn upcast(writer: &SchemaEntry, value: Value) -> Value {
    match (writer.event_type, writer.version, value) {
        ("WorkflowSubmitted", 1, Value::Record(mut fields)) => {
            let principal = Value::Union(1, Box::new(Value::String(LEGACY_PRINCIPAL.into())));
            fields.push(("submitted_by".into(), principal));
            Value::Record(fields)
        }
        (_, _, value) => value,
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::GenericSingleObjectWriter;
    use chrono::{Duration, TimeZone, Utc};
    use flowline_domain::{
        EventMetadata, ModelCall, SignalReceived, StepDefinition, StepError, StepFailed, StepKind,
        StepRetried, StepSkipped, StepStarted, StepSucceeded, StepTimedOut, TokenUsage,
        WorkflowCancelled, WorkflowEvent, WorkflowFailed, WorkflowPaused, WorkflowResumed,
        WorkflowStarted, WorkflowSubmitted, WorkflowSucceeded,
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

    fn model_call(at: chrono::DateTime<Utc>, priced: bool) -> ModelCall {
        ModelCall {
            provider: "anthropic".into(),
            model: "claude-sonnet-4-20250514".into(),
            called_at: at,
            usage: TokenUsage {
                input_tokens: 50,
                output_tokens: 800,
                cache_read_tokens: 10_000,
                cache_write_tokens: 2_000,
                reasoning_tokens: 0,
            },
            // More digits than any float carries: the text is the value.
            cost_usd: priced.then(|| "0.022650000000000000000000001".parse().unwrap()),
            price_ref: priced
                .then(|| "anthropic/claude-sonnet-4-20250514@2025-05-22T00:00:00Z".into()),
            complete: priced,
        }
    }

    #[test]
    fn steps_recorded_before_model_calls_existed_read_back_with_none() {
        let codec = EventCodec::default();
        for event in every_event().into_iter().filter(|e| {
            matches!(
                e.event,
                WorkflowEvent::StepSucceeded(_) | WorkflowEvent::StepFailed(_)
            )
        }) {
            let v1 = recorded::encode_with_version(&event, 1);
            let decoded = codec.decode(&v1).unwrap();
            assert_eq!(codec.writer_schema(&v1).unwrap().version, 1);
            let (WorkflowEvent::StepSucceeded(StepSucceeded { calls, .. })
            | WorkflowEvent::StepFailed(StepFailed { calls, .. })) = decoded.event
            else {
                unreachable!()
            };
            assert!(calls.is_empty());
        }
    }

    fn every_event() -> Vec<EventEnvelope> {
        let at =
            Utc.with_ymd_and_hms(2026, 11, 26, 1, 2, 3).unwrap() + Duration::microseconds(456_789);
        let attempt_id = Uuid::now_v7();
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
                    StepDefinition {
                        id: "approval".into(),
                        kind: StepKind::Wait,
                        depends_on: vec!["summarize".into()],
                        config: json!({"signal": "approve", "timeout": "1h"}),
                    },
                ],
                submitted_by: Some("ana@acme".into()),
                timeout_ms: Some(3_600_000),
            })),
            envelope(WorkflowEvent::Submitted(WorkflowSubmitted {
                name: "every kind".into(),
                input: json!(null),
                steps: StepKind::ALL
                    .into_iter()
                    .map(|kind| StepDefinition {
                        id: kind.as_str().into(),
                        kind,
                        depends_on: vec![],
                        config: json!({}),
                    })
                    .collect(),
                submitted_by: None,
                timeout_ms: None,
            })),
            envelope(WorkflowEvent::Cancelled(WorkflowCancelled {
                reason: Some("stop".into()),
            })),
            envelope(WorkflowEvent::Cancelled(WorkflowCancelled { reason: None })),
            envelope(WorkflowEvent::SignalReceived(SignalReceived {
                name: "approve".into(),
                payload: json!([1, "two", null]),
            })),
            envelope(WorkflowEvent::Started(WorkflowStarted {
                started_at: at,
                deadline: Some(at + Duration::hours(1)),
            })),
            envelope(WorkflowEvent::Started(WorkflowStarted {
                started_at: at,
                deadline: None,
            })),
            envelope(WorkflowEvent::StepStarted(StepStarted {
                step_id: "fetch".into(),
                attempt: 2,
                attempt_id,
                input: json!({"url": "http://example.test/rust"}),
                started_at: at,
                deadline: Some(at + Duration::seconds(30)),
            })),
            envelope(WorkflowEvent::StepStarted(StepStarted {
                step_id: "approval".into(),
                attempt: 1,
                attempt_id,
                input: json!({"signal": "approve"}),
                started_at: at,
                deadline: None,
            })),
            envelope(WorkflowEvent::StepSucceeded(StepSucceeded {
                step_id: "fetch".into(),
                attempt: 2,
                attempt_id,
                output: json!({"status": 200, "body": "ok"}),
                output_ref: None,
                duration_ms: 1_234,
                calls: vec![model_call(at, true), model_call(at, false)],
            })),
            envelope(WorkflowEvent::StepSucceeded(StepSucceeded {
                step_id: "summarize".into(),
                attempt: 1,
                attempt_id,
                output: json!(null),
                output_ref: Some(format!("sha256:{}", "ab".repeat(32))),
                duration_ms: u64::try_from(i64::MAX).unwrap(),
                calls: vec![],
            })),
            envelope(WorkflowEvent::StepFailed(StepFailed {
                step_id: "fetch".into(),
                attempt: 1,
                attempt_id,
                error: StepError {
                    kind: "http_status".into(),
                    message: "503 Service Unavailable".into(),
                },
                retryable: true,
                next_attempt_at: Some(at + Duration::seconds(2)),
                calls: vec![model_call(at, false)],
            })),
            envelope(WorkflowEvent::StepFailed(StepFailed {
                step_id: "fetch".into(),
                attempt: 3,
                attempt_id,
                error: StepError {
                    kind: "http_status".into(),
                    message: "400 Bad Request".into(),
                },
                retryable: false,
                next_attempt_at: None,
                calls: vec![],
            })),
            envelope(WorkflowEvent::StepTimedOut(StepTimedOut {
                step_id: "fetch".into(),
                attempt: 1,
                attempt_id,
                next_attempt_at: Some(at + Duration::seconds(4)),
            })),
            envelope(WorkflowEvent::StepTimedOut(StepTimedOut {
                step_id: "approval".into(),
                attempt: 1,
                attempt_id,
                next_attempt_at: None,
            })),
            envelope(WorkflowEvent::StepSkipped(StepSkipped {
                step_id: "summarize".into(),
                reason: "fetch failed".into(),
            })),
            envelope(WorkflowEvent::StepRetried(StepRetried {
                step_id: "fetch".into(),
            })),
            envelope(WorkflowEvent::Succeeded(WorkflowSucceeded {})),
            envelope(WorkflowEvent::Failed(WorkflowFailed {
                reason: "step fetch failed".into(),
                step_id: Some("fetch".into()),
            })),
            envelope(WorkflowEvent::Failed(WorkflowFailed {
                reason: "the run timed out".into(),
                step_id: None,
            })),
            envelope(WorkflowEvent::Paused(WorkflowPaused {
                reason: Some("maintenance".into()),
            })),
            envelope(WorkflowEvent::Paused(WorkflowPaused { reason: None })),
            envelope(WorkflowEvent::Resumed(WorkflowResumed {})),
        ]
    }

    /// The domain's event types, one per variant: `every_event` must cover all of them.
    const EVENT_TYPES: [&str; 14] = [
        "WorkflowSubmitted",
        "WorkflowCancelled",
        "SignalReceived",
        "WorkflowStarted",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "StepTimedOut",
        "StepSkipped",
        "StepRetried",
        "WorkflowSucceeded",
        "WorkflowFailed",
        "WorkflowPaused",
        "WorkflowResumed",
    ];

    #[test]
    fn every_event_type_is_covered_and_has_a_schema() {
        let mut covered: Vec<&str> = every_event().iter().map(|e| e.event.event_type()).collect();
        covered.sort_unstable();
        covered.dedup();
        let mut expected = EVENT_TYPES.to_vec();
        expected.sort_unstable();
        assert_eq!(covered, expected);
        for event_type in EVENT_TYPES {
            Catalogue::embedded().latest(event_type).unwrap();
        }
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
    fn the_framing_is_avro_single_object_encoding_with_the_specs_fingerprint() {
        // C3 01, then the CRC-64-AVRO of the Parsing Canonical Form, little endian: the
        // fingerprints fastavro computes for the same files (checked by hand with
        // `fastavro.schema.fingerprint(to_parsing_canonical_form(...), "CRC-64-AVRO")`,
        // and on the log by tests/clients/python/read_log.py).
        let spec = [
            ("SignalReceived", 0xec82_d443_c22f_8259_u64),
            ("StepFailed", 0xaf36_ec59_24af_e3dc),
            ("StepRetried", 0x4ac0_758f_f870_c9b3),
            ("StepSkipped", 0xf2ba_e5fc_fc82_26a6),
            ("StepStarted", 0x8531_11a5_4969_922f),
            ("StepSucceeded", 0xddc8_e4f8_d167_a2b1),
            ("StepTimedOut", 0xcb26_a7af_7bb7_b520),
            ("WorkflowCancelled", 0xe040_142d_79d7_c8eb),
            ("WorkflowFailed", 0x5c98_f84a_d669_c976),
            ("WorkflowPaused", 0x2aa2_f081_7124_f802),
            ("WorkflowResumed", 0x7fb2_04a4_c0a2_7d1e),
            ("WorkflowStarted", 0x7e7e_4b72_8c25_d096),
            ("WorkflowSubmitted", 0x507b_0482_9d1f_2d17),
            ("WorkflowSucceeded", 0x4546_a157_46b4_878d),
        ];
        let codec = EventCodec::default();
        for event in every_event() {
            let encoded = codec.encode(&event).unwrap();
            let (_, expected) = spec
                .iter()
                .find(|(name, _)| *name == encoded.event_type)
                .unwrap();
            assert_eq!(encoded.payload[..2], MAGIC);
            assert_eq!(
                encoded.payload[2..HEADER_LEN],
                expected.to_be_bytes(),
                "{}",
                encoded.event_type
            );
        }
    }

    #[test]
    fn every_schema_file_has_the_fingerprint_fastavro_computes() {
        // Older versions too: payloads written with them name them by these values. Same
        // computation as tests/clients/python/read_log.py, run with fastavro 1.13.1 over
        // every file of schemas/avro/ (hex of the header bytes, as fastavro prints them).
        let fastavro = [
            ("SignalReceived.v1.avsc", 0xec82_d443_c22f_8259_u64),
            ("StepFailed.v1.avsc", 0x4080_7037_3b5b_552a),
            ("StepFailed.v2.avsc", 0xaf36_ec59_24af_e3dc),
            ("StepRetried.v1.avsc", 0x4ac0_758f_f870_c9b3),
            ("StepSkipped.v1.avsc", 0xf2ba_e5fc_fc82_26a6),
            ("StepStarted.v1.avsc", 0x8531_11a5_4969_922f),
            ("StepSucceeded.v1.avsc", 0xd465_b45d_7d81_a017),
            ("StepSucceeded.v2.avsc", 0xddc8_e4f8_d167_a2b1),
            ("StepTimedOut.v1.avsc", 0xcb26_a7af_7bb7_b520),
            ("WorkflowCancelled.v1.avsc", 0xe040_142d_79d7_c8eb),
            ("WorkflowFailed.v1.avsc", 0x5c98_f84a_d669_c976),
            ("WorkflowPaused.v1.avsc", 0x2aa2_f081_7124_f802),
            ("WorkflowResumed.v1.avsc", 0x7fb2_04a4_c0a2_7d1e),
            ("WorkflowStarted.v1.avsc", 0x7e7e_4b72_8c25_d096),
            ("WorkflowSubmitted.v1.avsc", 0x604f_6d62_5387_d6c0),
            ("WorkflowSubmitted.v2.avsc", 0x9fe5_6cba_c2f0_b836),
            ("WorkflowSubmitted.v3.avsc", 0x507b_0482_9d1f_2d17),
            ("WorkflowSucceeded.v1.avsc", 0x4546_a157_46b4_878d),
        ];
        let entries = Catalogue::embedded().entries();
        assert_eq!(entries.len(), fastavro.len());
        for (file, expected) in fastavro {
            let entry = entries.iter().find(|e| e.file == file).unwrap();
            assert_eq!(
                entry.fingerprint.to_le_bytes(),
                expected.to_be_bytes(),
                "{file}"
            );
        }
    }

    #[test]
    fn payloads_framed_with_apache_avros_own_fingerprint_still_decode() {
        // What this codec wrote before it used the specification's fingerprint (and what
        // apache-avro's single-object writer writes): still on logs, still readable.
        let codec = EventCodec::default();
        let event = &every_event()
            .into_iter()
            .find(|e| e.event.event_type() == "WorkflowCancelled")
            .unwrap();
        let schema: &Schema = &Catalogue::embedded()
            .latest("WorkflowCancelled")
            .unwrap()
            .schema;
        let mut writer = GenericSingleObjectWriter::new_with_capacity(schema, 1024).unwrap();
        let mut legacy = Vec::new();
        writer.write_value(to_value(event), &mut legacy).unwrap();
        assert_ne!(
            legacy[..HEADER_LEN],
            codec.encode(event).unwrap().payload[..HEADER_LEN]
        );
        assert_eq!(&codec.decode(&legacy).unwrap(), event);
    }

    #[test]
    fn the_crc_is_the_one_apache_avro_computes_over_the_same_text() {
        for entry in Catalogue::embedded().entries() {
            assert_eq!(
                crate::catalogue::crc64_avro(entry.schema.canonical_form().as_bytes()),
                crate::catalogue::legacy_fingerprint_of(&entry.schema)
            );
        }
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

/// Records written by earlier versions of this build, kept byte for byte: the log holds
/// them forever, so every later build must still decode them.
#[cfg(test)]
pub(crate) mod recorded {
    use std::path::PathBuf;

    use chrono::{TimeZone, Utc};
    use flowline_domain::{
        EventMetadata, SignalReceived, StepDefinition, StepKind, WorkflowCancelled, WorkflowEvent,
        WorkflowSubmitted,
    };
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    /// Single-object encodes `envelope` with an older schema version, as the build that
    /// wrote that version did: the newest shape's record less the fields `schema` lacks
    /// (fields added later are appended; renamed ones keep their newest name only where
    /// `schema` has it).
    pub(super) fn encode_with_version(envelope: &EventEnvelope, version: u32) -> Vec<u8> {
        let entry = Catalogue::embedded()
            .entries()
            .iter()
            .find(|e| e.event_type == envelope.event.event_type() && e.version == version)
            .unwrap();
        let Schema::Record(record) = &entry.schema else {
            panic!("{} is not a record", entry.file)
        };
        let Value::Record(fields) = to_value(envelope) else {
            unreachable!("to_value builds records")
        };
        let fields = fields
            .into_iter()
            .filter(|(name, _)| record.fields.iter().any(|f| &f.name == name))
            .collect();
        let mut payload = MAGIC.to_vec();
        payload.extend_from_slice(&entry.fingerprint.to_le_bytes());
        GenericDatumWriter::builder(&entry.schema)
            .build()
            .unwrap()
            .write_value(&mut payload, Value::Record(fields))
            .unwrap();
        payload
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    fn metadata(version: u64) -> EventMetadata {
        let id = |n: u128| Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n);
        EventMetadata {
            event_id: id(version as u128),
            tenant: "acme".into(),
            stream_id: id(100),
            stream_version: version,
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap(),
            command_id: id(200 + version as u128),
            correlation_id: id(300),
            causation_id: id(200 + version as u128),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        }
    }

    /// The v1 stream as the v1 build wrote it.
    pub(super) fn v1_stream() -> Vec<EventEnvelope> {
        vec![
            EventEnvelope {
                metadata: metadata(1),
                event: WorkflowEvent::Submitted(WorkflowSubmitted {
                    name: "legacy".into(),
                    input: json!({"topic": "avro"}),
                    steps: vec![StepDefinition {
                        id: "fetch".into(),
                        kind: StepKind::Http,
                        depends_on: vec![],
                        config: json!({"url": "http://example.test"}),
                    }],
                    submitted_by: None,
                    timeout_ms: None,
                }),
            },
            EventEnvelope {
                metadata: metadata(2),
                event: WorkflowEvent::SignalReceived(SignalReceived {
                    name: "approve".into(),
                    payload: json!({"by": "ana"}),
                }),
            },
            EventEnvelope {
                metadata: metadata(3),
                event: WorkflowEvent::Cancelled(WorkflowCancelled {
                    reason: Some("done".into()),
                }),
            },
        ]
    }

    /// Submissions as the v2 build wrote them (before `wait` steps and `timeout_ms`).
    pub(super) fn v2_stream() -> Vec<EventEnvelope> {
        let steps = [
            StepKind::Llm,
            StepKind::McpTool,
            StepKind::Template,
            StepKind::Http,
        ];
        vec![
            EventEnvelope {
                metadata: metadata(1),
                event: WorkflowEvent::Submitted(WorkflowSubmitted {
                    name: "v2".into(),
                    input: json!({"topic": "avro", "n": 2}),
                    steps: steps
                        .into_iter()
                        .enumerate()
                        .map(|(i, kind)| StepDefinition {
                            id: kind.as_str().into(),
                            kind,
                            depends_on: steps[..i].iter().map(|k| k.as_str().into()).collect(),
                            config: json!({"i": i}),
                        })
                        .collect(),
                    submitted_by: Some("ana@acme".into()),
                    timeout_ms: None,
                }),
            },
            EventEnvelope {
                metadata: metadata(2),
                event: WorkflowEvent::Submitted(WorkflowSubmitted {
                    name: "v2 anonymous".into(),
                    input: json!(null),
                    steps: vec![],
                    submitted_by: None,
                    timeout_ms: None,
                }),
            },
        ]
    }

    /// `WRITE_FIXTURES=1 cargo test -p flowline-schemas` records the v2 encoding (with the
    /// v2 schema, whatever the newest is) of fixtures that are missing; never rerun it to
    /// "fix" this test.
    #[test]
    fn records_written_by_v2_still_decode() {
        let codec = EventCodec::default();
        for (index, expected) in v2_stream().into_iter().enumerate() {
            let path = fixture(&format!("v2-stream-{index}.avro"));
            if std::env::var_os("WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::write(&path, encode_with_version(&expected, 2)).unwrap();
            }
            let bytes = std::fs::read(&path).unwrap();
            let writer = codec.writer_schema(&bytes).unwrap();
            assert_eq!(
                (writer.event_type, writer.version),
                ("WorkflowSubmitted", 2)
            );
            // Resolution fills the v3 default: no timeout.
            assert_eq!(
                codec.decode(&bytes).unwrap(),
                expected,
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn a_wait_step_and_a_timeout_need_v3() {
        let codec = EventCodec::default();
        let mut submitted = v2_stream().remove(0);
        if let WorkflowEvent::Submitted(s) = &mut submitted.event {
            s.steps[0].kind = StepKind::Wait;
            s.timeout_ms = Some(60_000);
        }
        let encoded = codec.encode(&submitted).unwrap();
        assert_eq!(encoded.schema_version, 3);
        assert_eq!(codec.decode(&encoded.payload).unwrap(), submitted);
    }

    /// `WRITE_FIXTURES=1 cargo test -p flowline-schemas` records the current encoding; run
    /// it only when a new version starts being written, never to "fix" this test.
    #[test]
    fn records_written_by_v1_still_decode() {
        let codec = EventCodec::default();
        for (index, expected) in v1_stream().into_iter().enumerate() {
            let path = fixture(&format!("v1-stream-{index}.avro"));
            if std::env::var_os("WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::write(&path, codec.encode(&expected).unwrap().payload).unwrap();
            }
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(codec.writer_schema(&bytes).unwrap().version, 1);
            let mut expected = expected;
            // Resolution renamed input_json to input; the upcaster attributed the legacy
            // submission.
            if let WorkflowEvent::Submitted(submitted) = &mut expected.event {
                submitted.submitted_by = Some(LEGACY_PRINCIPAL.into());
            }
            assert_eq!(
                codec.decode(&bytes).unwrap(),
                expected,
                "{}",
                path.display()
            );
        }
    }
}
