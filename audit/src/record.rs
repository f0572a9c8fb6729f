//! One log record as the audit sees it: the chain's inputs read from the headers, the
//! value kept as published.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use flowline_event_store::chain::{self, ChainedEvent, Hash};
use flowline_event_store::headers;
use flowline_schemas::EventCodec;
use rdkafka::Message;
use rdkafka::message::Headers;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A record of the event log with its headers parsed.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Tenant.
    pub tenant: String,
    /// Stream id.
    pub stream_id: Uuid,
    /// 1-based version in the stream.
    pub stream_version: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Schema version of the value.
    pub schema_version: u32,
    /// When it occurred (`ce_time`, or the value's metadata on records older than it).
    pub occurred_at: DateTime<Utc>,
    /// `flowline_prev_hash`; `None` on records from before the chain.
    pub prev_hash: Option<Hash>,
    /// `flowline_hash` as the record claims it.
    pub claimed_hash: Option<Hash>,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// The value (Avro single-object bytes).
    pub payload: Vec<u8>,
}

/// A record whose headers do not describe an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// What is wrong.
    pub reason: String,
}

impl AuditRecord {
    /// Parses a record; `codec` recovers the time of records that predate `ce_time`.
    pub fn parse<M: Message>(message: &M, codec: &EventCodec) -> Result<Self, Unreadable> {
        let unreadable = |reason: String| Unreadable {
            partition: message.partition(),
            offset: message.offset(),
            reason,
        };
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|list| {
                list.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let text = |name: &str| {
            headers
                .get(name)
                .cloned()
                .ok_or_else(|| unreadable(format!("header {name} is missing")))
        };
        fn parsed<T: std::str::FromStr>(name: &str, value: String) -> Result<T, String> {
            value
                .parse()
                .map_err(|_| format!("header {name} is not valid: {value:?}"))
        }
        let payload = message.payload().unwrap_or_default().to_vec();
        let occurred_at = match headers.get(headers::cloudevents::TIME) {
            Some(time) => DateTime::parse_from_rfc3339(time)
                .map_err(|_| unreadable(format!("header ce_time is not RFC 3339: {time:?}")))?
                .with_timezone(&Utc),
            None => {
                codec
                    .decode(&payload)
                    .map_err(|e| unreadable(format!("no ce_time and the value: {e}")))?
                    .metadata
                    .occurred_at
            }
        };
        let hash = |name: &str| match headers.get(name) {
            None => Ok(None),
            Some(hex) => chain::from_hex(hex)
                .map(Some)
                .ok_or_else(|| unreadable(format!("header {name} is not 64 hex digits"))),
        };
        Ok(Self {
            partition: message.partition(),
            offset: message.offset(),
            tenant: text(headers::TENANT)?,
            stream_id: parsed(headers::STREAM_ID, text(headers::STREAM_ID)?).map_err(unreadable)?,
            stream_version: parsed(headers::STREAM_VERSION, text(headers::STREAM_VERSION)?)
                .map_err(unreadable)?,
            event_id: parsed(headers::EVENT_ID, text(headers::EVENT_ID)?).map_err(unreadable)?,
            event_type: text(headers::EVENT_TYPE)?,
            schema_version: parsed(headers::SCHEMA_VERSION, text(headers::SCHEMA_VERSION)?)
                .map_err(unreadable)?,
            occurred_at,
            prev_hash: hash(headers::PREV_HASH)?,
            claimed_hash: hash(headers::HASH)?,
            headers,
            payload,
        })
    }

    /// The record's hash recomputed from its content and its `flowline_prev_hash`; `None`
    /// when it is not chained.
    pub fn computed_hash(&self) -> Option<Hash> {
        let prev = self.prev_hash?;
        Some(
            ChainedEvent {
                tenant: &self.tenant,
                stream_id: self.stream_id,
                stream_version: self.stream_version,
                event_id: self.event_id,
                event_type: &self.event_type,
                schema_version: self.schema_version,
                occurred_at: self.occurred_at,
                payload: &self.payload,
            }
            .hash(&prev),
        )
    }

    /// The JSON line `audit tail` and `audit query` print.
    pub fn to_line(&self, codec: &EventCodec) -> EventLine {
        let (data, decode_error) = match codec.decode(&self.payload) {
            Ok(envelope) => (serde_json::to_value(&envelope).ok(), None),
            Err(error) => (None, Some(error.to_string())),
        };
        EventLine {
            partition: self.partition,
            offset: self.offset,
            tenant: self.tenant.clone(),
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            occurred_at: self
                .occurred_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            prev_hash: self.prev_hash.as_ref().map(chain::to_hex),
            hash: self.claimed_hash.as_ref().map(chain::to_hex),
            cloudevents: self
                .headers
                .iter()
                .filter(|(name, _)| name.starts_with("ce_") || *name == headers::CONTENT_TYPE)
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            data,
            decode_error,
        }
    }
}

/// One event as printed: its metadata, CloudEvents headers and decoded value.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EventLine {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Tenant.
    pub tenant: String,
    /// Stream id.
    pub stream_id: Uuid,
    /// Version in the stream.
    pub stream_version: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Schema version.
    pub schema_version: u32,
    /// RFC 3339.
    pub occurred_at: String,
    /// Hex previous hash, when chained.
    pub prev_hash: Option<String>,
    /// Hex hash, when chained.
    pub hash: Option<String>,
    /// `ce_*` and `content-type` headers.
    pub cloudevents: BTreeMap<String, String>,
    /// The decoded envelope (metadata and event), resolved to the current model.
    pub data: Option<Value>,
    /// Why the value could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decode_error: Option<String>,
}
