//! The versioned schema files, embedded at build time.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::SchemaCompatibility;

use crate::{Error, Result};

/// Every schema file, oldest version first per event type. Adding a version means adding
/// its file here; the `catalogue_lists_every_schema_file` test fails if one is forgotten.
const FILES: &[(&str, u32, &str)] = &[
    (
        "WorkflowSubmitted",
        1,
        include_str!("../avro/WorkflowSubmitted.v1.avsc"),
    ),
    (
        "WorkflowSubmitted",
        2,
        include_str!("../avro/WorkflowSubmitted.v2.avsc"),
    ),
    (
        "WorkflowSubmitted",
        3,
        include_str!("../avro/WorkflowSubmitted.v3.avsc"),
    ),
    (
        "WorkflowCancelled",
        1,
        include_str!("../avro/WorkflowCancelled.v1.avsc"),
    ),
    (
        "SignalReceived",
        1,
        include_str!("../avro/SignalReceived.v1.avsc"),
    ),
    (
        "WorkflowStarted",
        1,
        include_str!("../avro/WorkflowStarted.v1.avsc"),
    ),
    (
        "StepStarted",
        1,
        include_str!("../avro/StepStarted.v1.avsc"),
    ),
    (
        "StepSucceeded",
        1,
        include_str!("../avro/StepSucceeded.v1.avsc"),
    ),
    (
        "StepSucceeded",
        2,
        include_str!("../avro/StepSucceeded.v2.avsc"),
    ),
    ("StepFailed", 1, include_str!("../avro/StepFailed.v1.avsc")),
    ("StepFailed", 2, include_str!("../avro/StepFailed.v2.avsc")),
    (
        "StepTimedOut",
        1,
        include_str!("../avro/StepTimedOut.v1.avsc"),
    ),
    (
        "StepSkipped",
        1,
        include_str!("../avro/StepSkipped.v1.avsc"),
    ),
    (
        "StepRetried",
        1,
        include_str!("../avro/StepRetried.v1.avsc"),
    ),
    (
        "WorkflowSucceeded",
        1,
        include_str!("../avro/WorkflowSucceeded.v1.avsc"),
    ),
    (
        "WorkflowFailed",
        1,
        include_str!("../avro/WorkflowFailed.v1.avsc"),
    ),
    (
        "WorkflowPaused",
        1,
        include_str!("../avro/WorkflowPaused.v1.avsc"),
    ),
    (
        "WorkflowResumed",
        1,
        include_str!("../avro/WorkflowResumed.v1.avsc"),
    ),
];

/// One version of one event's schema.
#[derive(Debug)]
pub struct SchemaEntry {
    /// The event type (Avro record name).
    pub event_type: &'static str,
    /// The schema version (the `vN` of its file name).
    pub version: u32,
    /// The parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, as the Avro
    /// specification defines it (what new payloads carry).
    pub fingerprint: u64,
    /// The file it came from, relative to `schemas/avro/`.
    pub file: String,
}

/// All schemas of this build, indexed by fingerprint and by event type.
#[derive(Debug)]
pub struct Catalogue {
    entries: Vec<SchemaEntry>,
    by_fingerprint: HashMap<u64, usize>,
    latest: HashMap<&'static str, usize>,
}

static EMBEDDED: LazyLock<Catalogue> =
    LazyLock::new(|| Catalogue::parse(FILES).expect("embedded schemas are valid"));

/// The fingerprint apache-avro 0.22 computes (and wrote into single-object headers before
/// the spec's was used): over its canonical form, which keeps `{"type":"string"}` for a
/// primitive carrying a logical type where the specification reduces it to `"string"`.
/// Payloads already on logs carry it, so it stays a way to find their schema.
pub(crate) fn legacy_fingerprint_of(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    u64::from_le_bytes(
        bytes[..8]
            .try_into()
            .expect("Rabin fingerprints are 8 bytes"),
    )
}

/// The schema's Parsing Canonical Form as the Avro specification (and Java, fastavro, ...)
/// define it: apache-avro's canonical form with logical-type leftovers of primitives
/// (`{"type":"long"}`) reduced to the primitive's name.
pub fn parsing_canonical_form(schema: &Schema) -> String {
    const PRIMITIVES: [&str; 8] = [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ];
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        form = form.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    form
}

/// CRC-64-AVRO (the Rabin fingerprint of the specification) of `bytes`.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: LazyLock<[u64; 256]> = LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fingerprint = i as u64;
            for _ in 0..8 {
                fingerprint = (fingerprint >> 1) ^ (EMPTY & 0u64.wrapping_sub(fingerprint & 1));
            }
            *slot = fingerprint;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fingerprint, &byte| {
        (fingerprint >> 8) ^ TABLE[((fingerprint ^ u64::from(byte)) & 0xff) as usize]
    })
}

/// The fingerprint other Avro implementations compute for the same `.avsc`, and the one
/// written into new single-object headers.
pub(crate) fn fingerprint_of(schema: &Schema) -> u64 {
    crc64_avro(parsing_canonical_form(schema).as_bytes())
}

impl Catalogue {
    /// The schemas compiled into this build.
    pub fn embedded() -> &'static Catalogue {
        &EMBEDDED
    }

    fn parse(files: &[(&'static str, u32, &str)]) -> Result<Self> {
        let mut catalogue = Catalogue {
            entries: Vec::new(),
            by_fingerprint: HashMap::new(),
            latest: HashMap::new(),
        };
        for &(event_type, version, text) in files {
            let file = format!("{event_type}.v{version}.avsc");
            let schema = Schema::parse_str(text).map_err(|source| Error::InvalidSchema {
                file: file.clone(),
                source: Box::new(source),
            })?;
            let fingerprint = fingerprint_of(&schema);
            let index = catalogue.entries.len();
            catalogue.entries.push(SchemaEntry {
                event_type,
                version,
                schema,
                fingerprint,
                file,
            });
            catalogue.by_fingerprint.insert(fingerprint, index);
            catalogue.by_fingerprint.insert(
                legacy_fingerprint_of(&catalogue.entries[index].schema),
                index,
            );
            let newer = catalogue
                .latest
                .get(event_type)
                .is_none_or(|&i| catalogue.entries[i].version < version);
            if newer {
                catalogue.latest.insert(event_type, index);
            }
        }
        Ok(catalogue)
    }

    /// Every version the newest schema of its event type cannot read, with the reason: a
    /// change is backward compatible only if this stays empty.
    pub fn incompatibilities(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let latest = &self.entries[self.latest[entry.event_type]];
                SchemaCompatibility::can_read(&entry.schema, &latest.schema)
                    .err()
                    .map(|error| {
                        format!("{} cannot be read by {}: {error}", entry.file, latest.file)
                    })
            })
            .collect()
    }

    /// Every schema version, in file order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// The schema a payload was written with.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Result<&SchemaEntry> {
        self.by_fingerprint
            .get(&fingerprint)
            .map(|&i| &self.entries[i])
            .ok_or(Error::UnknownSchema(fingerprint))
    }

    /// The newest schema of an event type: what this build writes and reads into.
    pub fn latest(&self, event_type: &str) -> Result<&SchemaEntry> {
        self.latest
            .get(event_type)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::UnknownEventType(event_type.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The evolution rule: the newest version of every event must read every older one,
    /// so v1 records already on the log replay forever.
    #[test]
    fn every_schema_version_is_readable_by_the_newest() {
        let problems = Catalogue::embedded().incompatibilities();
        assert!(
            problems.is_empty(),
            "schema changes must be backward compatible:\n{}",
            problems.join("\n")
        );
    }

    /// The check above would catch the usual mistakes.
    #[test]
    fn an_incompatible_new_version_is_caught() {
        let v1 = FILES[0].2;
        let mut json: serde_json::Value = serde_json::from_str(v1).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        // A new field without a default, and a field renamed without an alias.
        fields.push(serde_json::json!({"name": "priority", "type": "int"}));
        fields.retain(|f| f["name"] != "name");
        fields.push(serde_json::json!({"name": "title", "type": "string"}));
        let broken = json.to_string();
        let catalogue = Catalogue::parse(&[
            ("WorkflowSubmitted", 1, v1),
            ("WorkflowSubmitted", 9, broken.as_str()),
        ])
        .unwrap();
        let problems = catalogue.incompatibilities();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "WorkflowSubmitted.v1.avsc cannot be read by WorkflowSubmitted.v9.avsc"
            )
        );
    }

    #[test]
    fn catalogue_lists_every_schema_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".avsc"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = Catalogue::embedded()
            .entries()
            .iter()
            .map(|e| e.file.clone())
            .collect();
        listed.sort();
        assert_eq!(
            listed, on_disk,
            "schemas/src/catalogue.rs FILES must list every .avsc"
        );
    }

    #[test]
    fn every_version_has_its_own_fingerprint_and_record_name() {
        let catalogue = Catalogue::embedded();
        for entry in catalogue.entries() {
            assert_eq!(
                catalogue.by_fingerprint(entry.fingerprint).unwrap().file,
                entry.file
            );
            let Schema::Record(record) = &entry.schema else {
                panic!("{} is not a record", entry.file)
            };
            assert_eq!(record.name.name(), entry.event_type, "{}", entry.file);
        }
    }
}
