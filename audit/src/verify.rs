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

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    /// A well-chained stream of `versions` events, in order.
    fn stream(versions: u64) -> Vec<AuditRecord> {
        let stream_id = Uuid::new_v4();
        let mut prev = GENESIS;
        (1..=versions)
            .map(|version| {
                let mut record = AuditRecord {
                    partition: 0,
                    offset: version as i64,
                    tenant: "acme".into(),
                    stream_id,
                    stream_version: version,
                    event_id: Uuid::new_v4(),
                    event_type: "SignalReceived".into(),
                    schema_version: 1,
                    occurred_at: DateTime::from_timestamp_micros(version as i64).unwrap(),
                    prev_hash: Some(prev),
                    claimed_hash: None,
                    headers: Default::default(),
                    payload: vec![version as u8],
                };
                record.claimed_hash = record.computed_hash();
                prev = record.claimed_hash.unwrap();
                record
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> (Vec<(Kind, u64)>, Summary) {
        let mut verifier = Verifier::new();
        let mut findings: Vec<Finding> = records.iter().flat_map(|r| verifier.observe(r)).collect();
        let (more, summary) = verifier.finish();
        findings.extend(more);
        let kinds = findings
            .into_iter()
            .filter(|f| !f.benign)
            .map(|f| (f.problem, f.version.unwrap()))
            .collect();
        (kinds, summary)
    }

    #[test]
    fn an_intact_stream_passes() {
        let (kinds, summary) = verify(&stream(4));
        assert_eq!(kinds, []);
        assert!(summary.ok);
        assert_eq!(summary.records, 4);
    }

    #[test]
    fn a_changed_value_is_altered_even_with_its_own_hash_recomputed() {
        let mut records = stream(3);
        records[1].payload = vec![99];
        assert_eq!(verify(&records).0, [(Kind::Altered, 2)]);
        records[1].claimed_hash = records[1].computed_hash();
        assert_eq!(verify(&records).0, [(Kind::Altered, 2)]);
    }

    #[test]
    fn gaps_order_and_forks_are_told_apart() {
        let records = stream(4);
        let gap = [records[0].clone(), records[3].clone()];
        assert_eq!(verify(&gap).0, [(Kind::Missing, 2)]);
        let swapped = [
            records[0].clone(),
            records[2].clone(),
            records[1].clone(),
            records[3].clone(),
        ];
        assert_eq!(verify(&swapped).0, [(Kind::Reordered, 2)]);
        let mut redelivered = records.clone();
        redelivered.push(records[1].clone());
        assert_eq!(verify(&redelivered).0, []);
        let mut fork = records[1].clone();
        fork.event_id = Uuid::new_v4();
        fork.claimed_hash = fork.computed_hash();
        let mut forked = records.clone();
        forked.push(fork);
        assert_eq!(verify(&forked).0, [(Kind::Duplicated, 2)]);
    }

    #[test]
    fn events_from_before_the_chain_are_counted_not_failed() {
        let mut records = stream(3);
        records[0].prev_hash = None;
        records[0].claimed_hash = None;
        records[1].prev_hash = Some(GENESIS);
        records[1].claimed_hash = records[1].computed_hash();
        records[2].prev_hash = records[1].claimed_hash;
        records[2].claimed_hash = records[2].computed_hash();
        let (kinds, summary) = verify(&records);
        assert_eq!(kinds, []);
        assert_eq!(summary.unchained, 1);
    }
}
