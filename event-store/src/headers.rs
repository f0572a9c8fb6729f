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
