//! Mapping between the domain's events and Avro values of the newest schema versions.

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use flowline_domain::{
    EventEnvelope, EventMetadata, ModelCall, SignalReceived, StepDefinition, StepError, StepFailed,
    StepKind, StepRetried, StepSkipped, StepStarted, StepSucceeded, StepTimedOut, TokenUsage,
    WorkflowCancelled, WorkflowEvent, WorkflowFailed, WorkflowPaused, WorkflowResumed,
    WorkflowStarted, WorkflowSubmitted, WorkflowSucceeded,
};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{Error, Result};

fn optional_string(value: &Option<String>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
    }
}

fn timestamp(at: &DateTime<Utc>) -> Value {
    Value::TimestampMicros(at.timestamp_micros())
}

fn optional_timestamp(at: &Option<DateTime<Utc>>) -> Value {
    match at {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(at) => Value::Union(1, Box::new(timestamp(at))),
    }
}

/// An unsigned count as an Avro `long`. Counts past `i64::MAX` (292 million years of
/// milliseconds) do not occur; they saturate rather than wrap to a negative number.
fn long(n: u64) -> Value {
    Value::Long(i64::try_from(n).unwrap_or(i64::MAX))
}

/// An attempt number as an Avro `int`; retry policies cap attempts far below `i32::MAX`.
fn attempt(n: u32) -> Value {
    Value::Int(i32::try_from(n).unwrap_or(i32::MAX))
}

fn metadata_value(metadata: &EventMetadata) -> Value {
    Value::Record(vec![
        ("event_id".into(), Value::Uuid(metadata.event_id)),
        ("tenant".into(), Value::String(metadata.tenant.clone())),
        ("stream_id".into(), Value::Uuid(metadata.stream_id)),
        (
            "stream_version".into(),
            Value::Long(metadata.stream_version as i64),
        ),
        ("occurred_at".into(), timestamp(&metadata.occurred_at)),
        ("command_id".into(), Value::Uuid(metadata.command_id)),
        (
            "correlation_id".into(),
            Value::Uuid(metadata.correlation_id),
        ),
        ("causation_id".into(), Value::Uuid(metadata.causation_id)),
        ("traceparent".into(), optional_string(&metadata.traceparent)),
        ("tracestate".into(), optional_string(&metadata.tracestate)),
    ])
}

fn calls_value(calls: &[ModelCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|call| {
                let usage = &call.usage;
                Value::Record(vec![
                    ("provider".into(), Value::String(call.provider.clone())),
                    ("model".into(), Value::String(call.model.clone())),
                    ("called_at".into(), timestamp(&call.called_at)),
                    ("input_tokens".into(), long(usage.input_tokens)),
                    ("output_tokens".into(), long(usage.output_tokens)),
                    ("cache_read_tokens".into(), long(usage.cache_read_tokens)),
                    ("cache_write_tokens".into(), long(usage.cache_write_tokens)),
                    ("reasoning_tokens".into(), long(usage.reasoning_tokens)),
                    (
                        "cost_usd".into(),
                        optional_string(&call.cost_usd.map(|cost| cost.to_string())),
                    ),
                    ("price_ref".into(), optional_string(&call.price_ref)),
                    ("complete".into(), Value::Boolean(call.complete)),
                ])
            })
            .collect(),
    )
}

fn json_text(value: &serde_json::Value) -> Value {
    Value::String(value.to_string())
}

/// The Avro record for an envelope, shaped like the newest schema of its event type.
pub(crate) fn to_value(envelope: &EventEnvelope) -> Value {
    let metadata = ("metadata".to_owned(), metadata_value(&envelope.metadata));
    let mut fields = vec![metadata];
    match &envelope.event {
        WorkflowEvent::Submitted(submitted) => {
            fields.push(("name".into(), Value::String(submitted.name.clone())));
            fields.push(("input".into(), json_text(&submitted.input)));
            let steps = submitted
                .steps
                .iter()
                .map(|step| {
                    let kind_index = StepKind::ALL
                        .iter()
                        .position(|k| *k == step.kind)
                        .expect("every kind is in ALL");
                    Value::Record(vec![
                        ("id".into(), Value::String(step.id.clone())),
                        (
                            "kind".into(),
                            Value::Enum(kind_index as u32, step.kind.as_str().into()),
                        ),
                        (
                            "depends_on".into(),
                            Value::Array(
                                step.depends_on
                                    .iter()
                                    .map(|d| Value::String(d.clone()))
                                    .collect(),
                            ),
                        ),
                        ("config_json".into(), json_text(&step.config)),
                    ])
                })
                .collect();
            fields.push(("steps".into(), Value::Array(steps)));
            fields.push((
                "submitted_by".into(),
                optional_string(&submitted.submitted_by),
            ));
            let timeout_ms = match submitted.timeout_ms {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(ms) => Value::Union(1, Box::new(long(ms))),
            };
            fields.push(("timeout_ms".into(), timeout_ms));
        }
        WorkflowEvent::Cancelled(cancelled) => {
            fields.push(("reason".into(), optional_string(&cancelled.reason)));
        }
        WorkflowEvent::SignalReceived(signal) => {
            fields.push(("name".into(), Value::String(signal.name.clone())));
            fields.push(("payload_json".into(), json_text(&signal.payload)));
        }
        WorkflowEvent::Started(started) => {
            fields.push(("started_at".into(), timestamp(&started.started_at)));
            fields.push(("deadline".into(), optional_timestamp(&started.deadline)));
        }
        WorkflowEvent::StepStarted(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
            fields.push(("attempt".into(), attempt(step.attempt)));
            fields.push(("attempt_id".into(), Value::Uuid(step.attempt_id)));
            fields.push(("input_json".into(), json_text(&step.input)));
            fields.push(("started_at".into(), timestamp(&step.started_at)));
            fields.push(("deadline".into(), optional_timestamp(&step.deadline)));
        }
        WorkflowEvent::StepSucceeded(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
            fields.push(("attempt".into(), attempt(step.attempt)));
            fields.push(("attempt_id".into(), Value::Uuid(step.attempt_id)));
            fields.push(("output_json".into(), json_text(&step.output)));
            fields.push(("output_ref".into(), optional_string(&step.output_ref)));
            fields.push(("duration_ms".into(), long(step.duration_ms)));
            fields.push(("calls".into(), calls_value(&step.calls)));
        }
        WorkflowEvent::StepFailed(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
            fields.push(("attempt".into(), attempt(step.attempt)));
            fields.push(("attempt_id".into(), Value::Uuid(step.attempt_id)));
            fields.push((
                "error".into(),
                Value::Record(vec![
                    ("kind".into(), Value::String(step.error.kind.clone())),
                    ("message".into(), Value::String(step.error.message.clone())),
                ]),
            ));
            fields.push(("retryable".into(), Value::Boolean(step.retryable)));
            fields.push((
                "next_attempt_at".into(),
                optional_timestamp(&step.next_attempt_at),
            ));
            fields.push(("calls".into(), calls_value(&step.calls)));
        }
        WorkflowEvent::StepTimedOut(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
            fields.push(("attempt".into(), attempt(step.attempt)));
            fields.push(("attempt_id".into(), Value::Uuid(step.attempt_id)));
            fields.push((
                "next_attempt_at".into(),
                optional_timestamp(&step.next_attempt_at),
            ));
        }
        WorkflowEvent::StepSkipped(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
            fields.push(("reason".into(), Value::String(step.reason.clone())));
        }
        WorkflowEvent::StepRetried(step) => {
            fields.push(("step_id".into(), Value::String(step.step_id.clone())));
        }
        WorkflowEvent::Succeeded(WorkflowSucceeded {})
        | WorkflowEvent::Resumed(WorkflowResumed {}) => {}
        WorkflowEvent::Failed(failed) => {
            fields.push(("reason".into(), Value::String(failed.reason.clone())));
            fields.push(("step_id".into(), optional_string(&failed.step_id)));
        }
        WorkflowEvent::Paused(paused) => {
            fields.push(("reason".into(), optional_string(&paused.reason)));
        }
    }
    Value::Record(fields)
}

/// Field access on a decoded record, with errors that name the event and field.
struct Fields<'a> {
    event_type: &'a str,
    fields: &'a [(String, Value)],
}

impl<'a> Fields<'a> {
    fn of(event_type: &'a str, value: &'a Value) -> Result<Self> {
        match value {
            Value::Record(fields) => Ok(Self { event_type, fields }),
            other => Err(malformed(
                event_type,
                format!("expected a record, got {other:?}"),
            )),
        }
    }

    fn get(&self, name: &str) -> Result<&'a Value> {
        let value = self
            .fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
            .ok_or_else(|| malformed(self.event_type, format!("missing field {name}")))?;
        // Unions arrive wrapped; the model only cares about the branch's value.
        Ok(match value {
            Value::Union(_, inner) => inner,
            other => other,
        })
    }

    fn string(&self, name: &str) -> Result<String> {
        match self.get(name)? {
            Value::String(s) | Value::Enum(_, s) => Ok(s.clone()),
            other => Err(self.wrong(name, "a string", other)),
        }
    }

    fn optional_string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(self.wrong(name, "a string or null", other)),
        }
    }

    fn uuid(&self, name: &str) -> Result<Uuid> {
        match self.get(name)? {
            Value::Uuid(uuid) => Ok(*uuid),
            Value::String(s) => {
                Uuid::parse_str(s).map_err(|e| malformed(self.event_type, format!("{name}: {e}")))
            }
            other => Err(self.wrong(name, "a uuid", other)),
        }
    }

    fn long(&self, name: &str) -> Result<i64> {
        match self.get(name)? {
            Value::Long(n) | Value::TimestampMicros(n) => Ok(*n),
            Value::Int(n) => Ok(i64::from(*n)),
            other => Err(self.wrong(name, "a long", other)),
        }
    }

    fn optional_long(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name)? {
            Value::Null => Ok(None),
            _ => self.long(name).map(Some),
        }
    }

    fn unsigned(&self, name: &str) -> Result<u64> {
        let n = self.long(name)?;
        u64::try_from(n).map_err(|_| malformed(self.event_type, format!("{name}: {n} < 0")))
    }

    fn attempt(&self, name: &str) -> Result<u32> {
        let n = self.long(name)?;
        u32::try_from(n)
            .map_err(|_| malformed(self.event_type, format!("{name}: {n} is no attempt number")))
    }

    fn boolean(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.wrong(name, "a boolean", other)),
        }
    }

    fn timestamp(&self, name: &str) -> Result<DateTime<Utc>> {
        let micros = self.long(name)?;
        DateTime::<Utc>::from_timestamp_micros(micros)
            .ok_or_else(|| malformed(self.event_type, format!("{name} {micros} out of range")))
    }

    fn optional_timestamp(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        match self.get(name)? {
            Value::Null => Ok(None),
            _ => self.timestamp(name).map(Some),
        }
    }

    fn json(&self, name: &str) -> Result<serde_json::Value> {
        let text = self.string(name)?;
        serde_json::from_str(&text).map_err(|e| malformed(self.event_type, format!("{name}: {e}")))
    }

    fn array(&self, name: &str) -> Result<&'a [Value]> {
        match self.get(name)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong(name, "an array", other)),
        }
    }

    fn wrong(&self, name: &str, expected: &str, got: &Value) -> Error {
        malformed(
            self.event_type,
            format!("{name}: expected {expected}, got {got:?}"),
        )
    }
}

fn malformed(event_type: &str, detail: String) -> Error {
    Error::Malformed {
        event_type: event_type.to_owned(),
        detail,
    }
}

fn metadata_from(event_type: &str, value: &Value) -> Result<EventMetadata> {
    let fields = Fields::of(event_type, value)?;
    let occurred_at = fields.timestamp("occurred_at")?;
    let stream_version = fields.long("stream_version")?;
    Ok(EventMetadata {
        event_id: fields.uuid("event_id")?,
        tenant: fields.string("tenant")?,
        stream_id: fields.uuid("stream_id")?,
        stream_version: u64::try_from(stream_version)
            .map_err(|_| malformed(event_type, format!("stream_version {stream_version}")))?,
        occurred_at,
        command_id: fields.uuid("command_id")?,
        correlation_id: fields.uuid("correlation_id")?,
        causation_id: fields.uuid("causation_id")?,
        traceparent: fields.optional_string("traceparent")?,
        tracestate: fields.optional_string("tracestate")?,
    })
}

/// Builds the domain envelope from a record already in the newest schema's shape.
fn calls_from(event_type: &str, fields: &Fields<'_>) -> Result<Vec<ModelCall>> {
    fields
        .array("calls")?
        .iter()
        .map(|call| {
            let call = Fields::of(event_type, call)?;
            let cost_usd = call
                .optional_string("cost_usd")?
                .map(|text| {
                    text.parse::<Decimal>()
                        .map_err(|e| malformed(event_type, format!("cost_usd '{text}': {e}")))
                })
                .transpose()?;
            Ok(ModelCall {
                provider: call.string("provider")?,
                model: call.string("model")?,
                called_at: call.timestamp("called_at")?,
                usage: TokenUsage {
                    input_tokens: call.unsigned("input_tokens")?,
                    output_tokens: call.unsigned("output_tokens")?,
                    cache_read_tokens: call.unsigned("cache_read_tokens")?,
                    cache_write_tokens: call.unsigned("cache_write_tokens")?,
                    reasoning_tokens: call.unsigned("reasoning_tokens")?,
                },
                cost_usd,
                price_ref: call.optional_string("price_ref")?,
                complete: call.boolean("complete")?,
            })
        })
        .collect()
}

pub(crate) fn from_value(event_type: &str, value: &Value) -> Result<EventEnvelope> {
    let fields = Fields::of(event_type, value)?;
    let metadata = metadata_from(event_type, fields.get("metadata")?)?;
    let event = match event_type {
        "WorkflowSubmitted" => {
            let steps = fields
                .array("steps")?
                .iter()
                .map(|step| {
                    let step = Fields::of(event_type, step)?;
                    let kind = step.string("kind")?;
                    Ok(StepDefinition {
                        id: step.string("id")?,
                        kind: StepKind::parse(&kind)
                            .ok_or_else(|| malformed(event_type, format!("step kind {kind}")))?,
                        depends_on: step
                            .array("depends_on")?
                            .iter()
                            .map(|d| match d {
                                Value::String(s) => Ok(s.clone()),
                                other => {
                                    Err(malformed(event_type, format!("depends_on {other:?}")))
                                }
                            })
                            .collect::<Result<_>>()?,
                        config: step.json("config_json")?,
                    })
                })
                .collect::<Result<_>>()?;
            WorkflowEvent::Submitted(WorkflowSubmitted {
                name: fields.string("name")?,
                input: fields.json("input")?,
                steps,
                submitted_by: fields.optional_string("submitted_by")?,
                timeout_ms: fields
                    .optional_long("timeout_ms")?
                    .map(|ms| {
                        u64::try_from(ms)
                            .map_err(|_| malformed(event_type, format!("timeout_ms: {ms} < 0")))
                    })
                    .transpose()?,
            })
        }
        "WorkflowCancelled" => WorkflowEvent::Cancelled(WorkflowCancelled {
            reason: fields.optional_string("reason")?,
        }),
        "SignalReceived" => WorkflowEvent::SignalReceived(SignalReceived {
            name: fields.string("name")?,
            payload: fields.json("payload_json")?,
        }),
        "WorkflowStarted" => WorkflowEvent::Started(WorkflowStarted {
            started_at: fields.timestamp("started_at")?,
            deadline: fields.optional_timestamp("deadline")?,
        }),
        "StepStarted" => WorkflowEvent::StepStarted(StepStarted {
            step_id: fields.string("step_id")?,
            attempt: fields.attempt("attempt")?,
            attempt_id: fields.uuid("attempt_id")?,
            input: fields.json("input_json")?,
            started_at: fields.timestamp("started_at")?,
            deadline: fields.optional_timestamp("deadline")?,
        }),
        "StepSucceeded" => WorkflowEvent::StepSucceeded(StepSucceeded {
            step_id: fields.string("step_id")?,
            attempt: fields.attempt("attempt")?,
            attempt_id: fields.uuid("attempt_id")?,
            output: fields.json("output_json")?,
            output_ref: fields.optional_string("output_ref")?,
            duration_ms: fields.unsigned("duration_ms")?,
            calls: calls_from(event_type, &fields)?,
        }),
        "StepFailed" => {
            let error = Fields::of(event_type, fields.get("error")?)?;
            WorkflowEvent::StepFailed(StepFailed {
                step_id: fields.string("step_id")?,
                attempt: fields.attempt("attempt")?,
                attempt_id: fields.uuid("attempt_id")?,
                error: StepError {
                    kind: error.string("kind")?,
                    message: error.string("message")?,
                },
                retryable: fields.boolean("retryable")?,
                next_attempt_at: fields.optional_timestamp("next_attempt_at")?,
                calls: calls_from(event_type, &fields)?,
            })
        }
        "StepTimedOut" => WorkflowEvent::StepTimedOut(StepTimedOut {
            step_id: fields.string("step_id")?,
            attempt: fields.attempt("attempt")?,
            attempt_id: fields.uuid("attempt_id")?,
            next_attempt_at: fields.optional_timestamp("next_attempt_at")?,
        }),
        "StepSkipped" => WorkflowEvent::StepSkipped(StepSkipped {
            step_id: fields.string("step_id")?,
            reason: fields.string("reason")?,
        }),
        "StepRetried" => WorkflowEvent::StepRetried(StepRetried {
            step_id: fields.string("step_id")?,
        }),
        "WorkflowSucceeded" => WorkflowEvent::Succeeded(WorkflowSucceeded {}),
        "WorkflowFailed" => WorkflowEvent::Failed(WorkflowFailed {
            reason: fields.string("reason")?,
            step_id: fields.optional_string("step_id")?,
        }),
        "WorkflowPaused" => WorkflowEvent::Paused(WorkflowPaused {
            reason: fields.optional_string("reason")?,
        }),
        "WorkflowResumed" => WorkflowEvent::Resumed(WorkflowResumed {}),
        other => return Err(Error::UnknownEventType(other.to_owned())),
    };
    Ok(EventEnvelope { metadata, event })
}
