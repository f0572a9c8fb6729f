//! Names of the Kafka record headers every event carries, so consumers can route and trace
//! without decoding the Avro value.

/// Event type (Avro record name), e.g. `WorkflowSubmitted`.
pub const EVENT_TYPE: &str = "event-type";
/// Schema version of the value (the `vN` of the `.avsc` file).
pub const SCHEMA_VERSION: &str = "schema-version";
/// Event id (UUID).
pub const EVENT_ID: &str = "event-id";
/// Tenant owning the stream.
pub const TENANT: &str = "tenant";
/// Stream id (also the record key).
pub const STREAM_ID: &str = "stream-id";
/// 1-based version of the event in its stream.
pub const STREAM_VERSION: &str = "stream-version";
/// Id of the command that produced the event.
pub const COMMAND_ID: &str = "command-id";
/// Correlation id.
pub const CORRELATION_ID: &str = "correlation-id";
/// Causation id.
pub const CAUSATION_ID: &str = "causation-id";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// How the value is encoded.
pub const CONTENT_TYPE: &str = "content-type";
/// The value's content type: Avro single-object encoding.
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.apache.avro+binary; encoding=single-object";

/// CloudEvents Kafka protocol binding, binary content mode: the attributes as `ce_` headers
/// and `content-type` as `datacontenttype`, the record value being the event data.
pub mod cloudevents {
    /// CloudEvents version.
    pub const SPECVERSION: &str = "ce_specversion";
    /// Event id (the same UUID as `event-id`).
    pub const ID: &str = "ce_id";
    /// Source URI (per tenant, configurable).
    pub const SOURCE: &str = "ce_source";
    /// Type: the Avro full name and schema version, `ai.flowline.workflow.<EventType>.v<N>`.
    pub const TYPE: &str = "ce_type";
    /// RFC 3339 time the event occurred.
    pub const TIME: &str = "ce_time";
    /// Subject: the stream id.
    pub const SUBJECT: &str = "ce_subject";
    /// The CloudEvents version written.
    pub const SPEC_VERSION_1_0: &str = "1.0";
    /// Default `ce_source` template; `{tenant}` is replaced by the stream's tenant.
    pub const DEFAULT_SOURCE: &str = "flowline://{tenant}/workflows";

    /// `ce_type` of an event type at a schema version.
    pub fn event_type(event_type: &str, schema_version: u32) -> String {
        format!("ai.flowline.workflow.{event_type}.v{schema_version}")
    }

    /// `ce_source` from a template.
    pub fn source(template: &str, tenant: &str) -> String {
        template.replace("{tenant}", tenant)
    }
}

/// Hex SHA-256 of the stream's previous event (64 zeros for a chain's first event).
/// Absent on events stored before the chain existed.
pub const PREV_HASH: &str = "flowline_prev_hash";
/// Hex SHA-256 of this event (see [`crate::chain`]).
pub const HASH: &str = "flowline_hash";

/// The schema file a payload was written with, relative to the repository root.
pub fn schema_file(event_type: &str, schema_version: u32) -> String {
    format!("schemas/avro/{event_type}.v{schema_version}.avsc")
}

/// The record's `content-type`: [`AVRO_CONTENT_TYPE`] plus the writer schema's file, so a
/// consumer without the catalogue knows which `.avsc` to decode with.
pub fn content_type(event_type: &str, schema_version: u32) -> String {
    format!(
        "{AVRO_CONTENT_TYPE}; schema=\"{}\"",
        schema_file(event_type, schema_version)
    )
}
