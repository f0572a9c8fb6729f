//! A record as consumers handle it, wherever it was read from: the broker, or the event
//! store's copy of what was published (see `flowline_event_store::history`).

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

/// One record of the log: its place, key, value and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (the stream id for events).
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Option<Vec<u8>>,
    /// Headers, in order (a header without a value has `None`).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl From<OwnedMessage> for LogRecord {
    fn from(message: OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

impl LogRecord {
    /// The headers as a JSON object of strings (lossy UTF-8), for people and tools.
    pub fn headers_json(&self) -> serde_json::Value {
        self.headers
            .iter()
            .map(|(key, value)| {
                let value = value
                    .as_deref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                (key.clone(), value.into())
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
