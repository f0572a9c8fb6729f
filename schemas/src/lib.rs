//! The event schemas (`schemas/avro/*.avsc`) and the Avro codec built on them.
//!
//! Every event is one Avro record whose schema is a versioned file in `schemas/avro/`,
//! named `<EventType>.v<N>.avsc`. A payload on the log is Avro *single-object encoding*
//! (`C3 01`, the 8-byte CRC-64-AVRO fingerprint of the writer schema, then the datum): it
//! names its exact schema without a registry service, and any Avro library can find the
//! schema by fingerprinting the published `.avsc` files (see `docs/adr/0002-avro-framing.md`).
//!
//! Decoding reads a payload with its writer's schema, renames fields the newest version
//! of the same event lists under `aliases`, runs the upcasters for what resolution cannot
//! express, and then resolves into the newest version (Avro schema resolution: defaults
//! for added fields, enum symbols by name), so old events replay into the current model.
//! Records written by older builds are kept in `schemas/testdata/` and must keep decoding.

mod catalogue;
mod codec;
mod value;

pub use catalogue::{Catalogue, SchemaEntry};
pub use codec::{EncodedEvent, EventCodec, LEGACY_PRINCIPAL};

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A schema file in the catalogue does not parse.
    #[error("schema {file} is invalid: {source}")]
    InvalidSchema {
        /// The `.avsc` file.
        file: String,
        /// The parser's complaint.
        source: Box<apache_avro::Error>,
    },
    /// The payload does not start with the single-object encoding marker.
    #[error("payload is not Avro single-object encoded (expected C3 01 header)")]
    NotSingleObject,
    /// The payload names a schema this build does not know.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownSchema(u64),
    /// An event type without any schema file.
    #[error("no schema for event type {0}")]
    UnknownEventType(String),
    /// Avro rejected the datum.
    #[error("avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    /// The datum decoded but does not have the shape the model expects.
    #[error("malformed {event_type}: {detail}")]
    Malformed {
        /// The event type being decoded.
        event_type: String,
        /// What was wrong.
        detail: String,
    },
}

impl From<apache_avro::Error> for Error {
    fn from(error: apache_avro::Error) -> Self {
        Self::Avro(Box::new(error))
    }
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
