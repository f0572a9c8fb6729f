//! Audit of the event log, read directly from Kafka: each record parsed from its headers
//! ([`record`]), the per-stream hash chain and version order verified ([`verify`]), and
//! records selected by tenant, stream, type and time ([`query`]), from a reader that scans a
//! topic up to its high watermark or follows it ([`log`]).
//!
//! It trusts nothing but the log: what it checks is what any consumer could check with the
//! headers documented in `docs/adr/0009-cloudevents-and-hash-chain.md`.

pub mod log;
pub mod query;
pub mod record;
pub mod verify;

pub use log::{LogReader, Start};
pub use query::Filter;
pub use record::{AuditRecord, EventLine};
pub use verify::{Finding, Summary, Verifier};

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log could not be read.
    #[error("log: {0}")]
    Log(#[from] flowline_event_log::Error),
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Records stopped arriving before the high watermark was reached.
    #[error("no record from {topic}/{partition} for {waited_seconds}s before offset {high}")]
    Stalled {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The high watermark aimed for.
        high: i64,
        /// How long it waited.
        waited_seconds: u64,
    },
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

use std::ops::ControlFlow;

use flowline_schemas::EventCodec;

/// Verifies the whole topic (or one tenant's streams), handing each finding to `report`
/// as it is found; returns the totals.
pub fn verify_log(
    reader: &LogReader,
    tenant: Option<&str>,
    mut report: impl FnMut(&Finding),
) -> Result<Summary> {
    let codec = EventCodec::default();
    let mut verifier = Verifier::new();
    reader.scan(Start::Beginning, |message| {
        match AuditRecord::parse(message, &codec) {
            Ok(record) if tenant.is_none_or(|t| t == record.tenant) => {
                verifier.observe(&record).iter().for_each(&mut report);
            }
            Ok(_) => {}
            Err(unreadable) => report(&verifier.unreadable(&unreadable)),
        }
        ControlFlow::Continue(())
    })?;
    let (findings, summary) = verifier.finish();
    findings.iter().for_each(&mut report);
    Ok(summary)
}

/// Hands every event `filter` selects, up to the high watermark, to `each` (at most
/// `limit`); records that are not events are skipped. Returns how many were selected.
pub fn query_log(
    reader: &LogReader,
    filter: &Filter,
    limit: Option<usize>,
    mut each: impl FnMut(EventLine),
) -> Result<usize> {
    let codec = EventCodec::default();
    let start = filter.since.map_or(Start::Beginning, Start::Time);
    let mut selected = 0;
    reader.scan(start, |message| {
        if limit.is_some_and(|limit| selected >= limit) {
            return ControlFlow::Break(());
        }
        if let Ok(record) = AuditRecord::parse(message, &codec)
            && filter.matches(&record)
        {
            selected += 1;
            each(record.to_line(&codec));
        }
        ControlFlow::Continue(())
    })?;
    Ok(selected)
}
