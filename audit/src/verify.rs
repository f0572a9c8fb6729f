//! Verification of every stream on the log: versions contiguous from 1, in order, each
//! record matching its own hash and linked to its predecessor's. Pure: records in, findings
//! out, so it runs the same on a live topic, a test's forged one, or a file.

use std::collections::{BTreeMap, HashMap, HashSet};

use flowline_event_store::chain::{self, GENESIS, Hash};
use serde::Serialize;
use uuid::Uuid;

use crate::record::{AuditRecord, Unreadable};

/// What is wrong with a stream on the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A record's content does not match its hash, or its successor's link to it.
    Altered,
    /// Versions absent between 1 and the highest seen.
    Missing,
    /// A version appearing after a higher one of the same stream.
    Reordered,
    /// A version appearing twice.
    Duplicated,
    /// A record whose headers do not describe an event.
    Unreadable,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub problem: Kind,
    /// The stream (absent for unreadable records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<Uuid>,
    /// Its tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The version concerned (the first of a missing range).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Where on the log it was noticed.
    pub partition: i32,
    /// Offset of the record it was noticed at.
    pub offset: i64,
    /// Explanation.
    pub detail: String,
    /// A redelivery of the same event with the same hash (the relay may publish twice
    /// after a leader change): reported, not counted as a failure.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub benign: bool,
}

/// Totals of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records read.
    pub records: u64,
    /// Streams seen.
    pub streams: u64,
    /// Records without chain headers (stored before the chain existed).
    pub unchained: u64,
    /// Findings that are failures.
    pub problems: u64,
    /// True when there is none.
    pub ok: bool,
}

struct Seen {
    event_id: Uuid,
    /// The recomputed hash; `None` when unchained.
    hash: Option<Hash>,
    prev: Option<Hash>,
    partition: i32,
    offset: i64,
}

#[derive(Default)]
struct StreamLog {
    tenant: String,
    highest: u64,
    chained: bool,
    versions: BTreeMap<u64, Seen>,
}

/// Feeds on records in log order (per partition) and reports findings.
#[derive(Default)]
pub struct Verifier {
    streams: HashMap<Uuid, StreamLog>,
    altered: HashSet<(Uuid, u64)>,
    summary: Summary,
}

impl Verifier {
    /// A verifier that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next record; returns what it shows at once (its own hash, order,
    /// duplicates). Gaps and links are judged in [`Verifier::finish`], once every record
    /// of a stream is in, so one reordered record is not also reported as a gap.
    pub fn observe(&mut self, record: &AuditRecord) -> Vec<Finding> {
        self.summary.records += 1;
        let mut findings = Vec::new();
        let finding = |problem, version, detail: String| Finding {
            problem,
            stream_id: Some(record.stream_id),
            tenant: Some(record.tenant.clone()),
            version: Some(version),
            partition: record.partition,
            offset: record.offset,
            detail,
            benign: false,
        };
        let computed = record.computed_hash();
        if computed.is_none() {
            self.summary.unchained += 1;
        }
        let stream = self.streams.entry(record.stream_id).or_default();
        stream.tenant.clone_from(&record.tenant);
        let version = record.stream_version;
        if let (Some(computed), Some(claimed)) = (computed, record.claimed_hash)
            && computed != claimed
        {
            self.altered.insert((record.stream_id, version));
            findings.push(finding(
                Kind::Altered,
                version,
                "content does not match the record's flowline_hash".into(),
            ));
        }
        if computed.is_none() && stream.chained {
            self.altered.insert((record.stream_id, version));
            findings.push(finding(
                Kind::Altered,
                version,
                "no chain headers on a stream that is already chained".into(),
            ));
        }
        if let Some(first) = stream.versions.get(&version) {
            let identical = first.event_id == record.event_id && first.hash == computed;
            let mut duplicate = finding(
                Kind::Duplicated,
                version,
                format!(
                    "version {version} already at {}/{}{}",
                    first.partition,
                    first.offset,
                    if identical {
                        " (same event, same hash)"
                    } else {
                        " with different content"
                    }
                ),
            );
            duplicate.benign = identical;
            findings.push(duplicate);
            return self.count(findings);
        }
        if version < stream.highest {
            findings.push(finding(
                Kind::Reordered,
                version,
                format!("version {version} after version {}", stream.highest),
            ));
        }
        stream.highest = stream.highest.max(version);
        stream.chained |= computed.is_some();
        stream.versions.insert(
            version,
            Seen {
                event_id: record.event_id,
                hash: computed,
                prev: record.prev_hash,
                partition: record.partition,
                offset: record.offset,
            },
        );
        self.count(findings)
    }

    /// Reports a record that could not be parsed.
    pub fn unreadable(&mut self, record: &Unreadable) -> Finding {
        self.summary.records += 1;
        self.summary.problems += 1;
        Finding {
            problem: Kind::Unreadable,
            stream_id: None,
            tenant: None,
            version: None,
            partition: record.partition,
            offset: record.offset,
            detail: record.reason.clone(),
            benign: false,
        }
    }

    fn count(&mut self, findings: Vec<Finding>) -> Vec<Finding> {
        self.summary.problems += findings.iter().filter(|f| !f.benign).count() as u64;
        findings
    }

    /// The gaps and broken links, then the totals.
    pub fn finish(mut self) -> (Vec<Finding>, Summary) {
        let mut findings = Vec::new();
        let mut streams: Vec<_> = self.streams.iter().collect();
        streams.sort_by_key(|(id, _)| **id);
        for (&stream_id, stream) in streams {
            let finding = |problem, version, seen: &Seen, detail: String| Finding {
                problem,
                stream_id: Some(stream_id),
                tenant: Some(stream.tenant.clone()),
                version: Some(version),
                partition: seen.partition,
                offset: seen.offset,
                detail,
                benign: false,
            };
            let mut expected = 1;
            for (&version, seen) in &stream.versions {
                if version > expected {
                    let last = version - 1;
                    let range = if last == expected {
                        format!("version {expected} is")
                    } else {
                        format!("versions {expected} to {last} are")
                    };
                    findings.push(finding(
                        Kind::Missing,
                        expected,
                        seen,
                        format!("{range} not on the log (next present: {version})"),
                    ));
                }
                expected = version + 1;
                let Some(prev) = seen.prev else { continue };
                let link = if version == 1 {
                    Some((
                        GENESIS,
                        "version 1 must have an all-zero flowline_prev_hash",
                    ))
                } else {
                    match stream.versions.get(&(version - 1)) {
                        // A chain restarts after an event that predates it.
                        Some(before) if before.hash.is_none() => Some((
                            GENESIS,
                            "the first chained event must have an all-zero flowline_prev_hash",
                        )),
                        Some(before) => before.hash.map(|hash| {
                            (
                                hash,
                                "its flowline_prev_hash does not match the previous event",
                            )
                        }),
                        None => None,
                    }
                };
                if let Some((expected_prev, why)) = link
                    && prev != expected_prev
                {
                    let altered = if version == 1 { 1 } else { version - 1 };
                    if self.altered.insert((stream_id, altered)) {
                        findings.push(finding(
                            Kind::Altered,
                            altered,
                            seen,
                            format!(
                                "version {version}: {why} (expected {}, found {})",
                                chain::to_hex(&expected_prev),
                                chain::to_hex(&prev)
                            ),
                        ));
                    }
                }
            }
        }
        self.summary.problems += findings.len() as u64;
        self.summary.streams = self.streams.len() as u64;
        self.summary.ok = self.summary.problems == 0;
        (findings, self.summary)
    }
}
