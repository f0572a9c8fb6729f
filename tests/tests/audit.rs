//! Audit log consumers: CloudEvents headers and the hash chain on every record, the `audit`
//! CLI (run as a process) verifying and querying the log, its REST twin on the query
//! service, and a Python consumer that shares no code with us.

use std::collections::HashMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use flowline_event_log::{KafkaSettings, LogProducer, OutgoingRecord};
use flowline_event_store::chain::{self, ChainedEvent};
use flowline_schemas::EventCodec;
use serde_json::{Value, json};
use system_tests::{LogRecord, TestSystem, bin_dir};
use uuid::Uuid;

fn workflow(name: &str) -> Value {
    json!({"name": name, "steps": [{"id": "a", "kind": "template"}]})
}

async fn submit(system: &TestSystem, url: &str, tenant: &str, name: &str) -> String {
    let request = system
        .http
        .post(format!("{url}/v1/workflows"))
        .header("x-tenant-id", tenant)
        .json(&workflow(name));
    let reply = system.send(request).await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

async fn signal(system: &TestSystem, url: &str, tenant: &str, id: &str) {
    let request = system
        .http
        .post(format!("{url}/v1/workflows/{id}/signals/ping"))
        .header("x-tenant-id", tenant)
        .json(&json!({}));
    let reply = system.send(request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// Output of a finished process: exit code, stdout as JSON lines, stderr.
struct Run {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

fn run(program: &std::path::Path, kafka: &KafkaSettings, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .env("KAFKA_BROKERS", &kafka.brokers)
        .env("KAFKA_TOPIC", &kafka.topic)
        .output()
        .expect("process runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        lines: stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn audit(kafka: &KafkaSettings, args: &[&str]) -> Run {
    let binary = bin_dir().join("audit");
    assert!(
        binary.exists(),
        "build the binaries first (cargo build --bins)"
    );
    let kafka = kafka.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&binary, &kafka, &args)
    })
    .await
    .unwrap()
}

fn summary(run: &Run) -> &Value {
    &run.lines.last().expect("a summary line")["summary"]
}

/// Each stream's records in log order.
fn by_stream(records: &[LogRecord]) -> HashMap<String, Vec<LogRecord>> {
    let mut streams: HashMap<String, Vec<LogRecord>> = HashMap::new();
    for record in records {
        streams
            .entry(record.key.clone())
            .or_default()
            .push(record.clone());
    }
    for records in streams.values_mut() {
        records.sort_by_key(|r| r.headers["stream-version"].parse::<u64>().unwrap());
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_record_carries_cloudevents_headers_and_links_to_its_predecessor() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let first = submit(&system, &commands.url, "acme", "first").await;
    signal(&system, &commands.url, "acme", &first).await;
    signal(&system, &commands.url, "acme", &first).await;
    submit(&system, &commands.url, "globex", "second").await;

    let records = system.read_log().await;
    assert_eq!(records.len(), 4);
    let codec = EventCodec::default();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for record in &records {
        let h = &record.headers;
        let envelope = codec.decode(&record.payload).unwrap();
        let metadata = &envelope.metadata;
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], metadata.event_id.to_string());
        assert_eq!(h["ce_id"], h["event-id"]);
        assert_eq!(
            h["ce_source"],
            format!("flowline://{}/workflows", metadata.tenant)
        );
        assert_eq!(
            h["ce_type"],
            format!(
                "ai.flowline.workflow.{}.v{}",
                h["event-type"], h["schema-version"]
            )
        );
        let time: DateTime<Utc> = h["ce_time"].parse().unwrap();
        assert_eq!(time, metadata.occurred_at);
        assert_eq!(h["ce_subject"], record.key);
        assert_eq!(h["ce_subject"], metadata.stream_id.to_string());
        let schema = format!(
            "schemas/avro/{}.v{}.avsc",
            h["event-type"], h["schema-version"]
        );
        assert_eq!(
            h["content-type"],
            format!(
                "application/vnd.apache.avro+binary; encoding=single-object; schema=\"{schema}\""
            )
        );
        assert!(root.join(&schema).exists(), "{schema} is published");
        // The older headers stay for the projectors.
        for name in [
            "event-type",
            "tenant",
            "stream-id",
            "stream-version",
            "command-id",
        ] {
            assert!(h.contains_key(name), "{name} kept");
        }
    }

    for records in by_stream(&records).values() {
        let mut previous = chain::to_hex(&chain::GENESIS);
        for record in records {
            assert_eq!(record.headers["flowline_prev_hash"], previous);
            let recomputed = ChainedEvent {
                tenant: &record.headers["tenant"],
                stream_id: record.key.parse().unwrap(),
                stream_version: record.headers["stream-version"].parse().unwrap(),
                event_id: record.headers["event-id"].parse().unwrap(),
                event_type: &record.headers["event-type"],
                schema_version: record.headers["schema-version"].parse().unwrap(),
                occurred_at: record.headers["ce_time"].parse().unwrap(),
                payload: &record.payload,
            }
            .hash(&chain::from_hex(&previous).unwrap());
            assert_eq!(record.headers["flowline_hash"], chain::to_hex(&recomputed));
            previous = record.headers["flowline_hash"].clone();
        }
    }

    // The store holds the same hashes it published.
    let stored: Vec<(Uuid, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT event_id, prev_hash, event_hash FROM event_store")
            .fetch_all(&system.pool)
            .await
            .unwrap();
    for (event_id, prev_hash, event_hash) in stored {
        let record = records
            .iter()
            .find(|r| r.headers["event-id"] == event_id.to_string())
            .unwrap();
        assert_eq!(record.headers["flowline_prev_hash"], hex(&prev_hash));
        assert_eq!(record.headers["flowline_hash"], hex(&event_hash));
    }
    commands.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    chain::to_hex(&chain::from_bytes(bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_verify_passes_on_an_intact_log() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    for i in 0..4 {
        let id = submit(&system, &commands.url, "acme", &format!("w{i}")).await;
        signal(&system, &commands.url, "acme", &id).await;
    }
    let verified = audit(&system.kafka, &["verify"]).await;
    assert_eq!(verified.code, 0, "{:?} {}", verified.lines, verified.stderr);
    assert_eq!(
        verified.lines.len(),
        1,
        "only the summary: {:?}",
        verified.lines
    );
    assert_eq!(
        summary(&verified),
        &json!({"records": 8, "streams": 4, "unchained": 0, "problems": 0, "ok": true})
    );
    let other_tenant = audit(&system.kafka, &["verify", "--tenant", "globex"]).await;
    assert_eq!(summary(&other_tenant)["streams"], 0);
    commands.stop().await;
}

/// Sets `flowline_hash` to what the record's content hashes to, as a careful forger would.
fn rehash(record: &mut LogRecord) {
    let h = &record.headers;
    let hash = ChainedEvent {
        tenant: &h["tenant"],
        stream_id: record.key.parse().unwrap(),
        stream_version: h["stream-version"].parse().unwrap(),
        event_id: h["event-id"].parse().unwrap(),
        event_type: &h["event-type"],
        schema_version: h["schema-version"].parse().unwrap(),
        occurred_at: h["ce_time"].parse().unwrap(),
        payload: &record.payload,
    }
    .hash(&chain::from_hex(&h["flowline_prev_hash"]).unwrap());
    record
        .headers
        .insert("flowline_hash".into(), chain::to_hex(&hash));
}

async fn publish_one(producer: &LogProducer, record: &LogRecord) {
    let outgoing = OutgoingRecord {
        key: record.key.clone().into_bytes(),
        partition: record.partition,
        payload: record.payload.clone(),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
    };
    producer.publish(&[outgoing]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_verify_reports_altered_missing_reordered_and_duplicated_records() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = submit(&system, &commands.url, "acme", &format!("w{i}")).await;
        signal(&system, &commands.url, "acme", &id).await;
        signal(&system, &commands.url, "acme", &id).await;
        ids.push(id);
    }
    let streams = by_stream(&system.read_log().await);
    let [altered, rehashed, missing, reordered, duplicated, intact] =
        <[String; 6]>::try_from(ids).unwrap();

    // A copy of the log where an attacker (or a bug) changed things.
    let forged = KafkaSettings {
        topic: format!("{}-forged", system.kafka.topic),
        ..system.kafka.clone()
    };
    flowline_event_log::ensure_topic(&forged).await.unwrap();
    let producer = LogProducer::new(&forged).unwrap();
    let stream = |id: &String| streams[id].clone();

    // A value changed in place, hash header untouched.
    let mut records = stream(&altered);
    *records[1].payload.last_mut().unwrap() ^= 0x01;
    // A value changed and its own hash recomputed: only the successor's link shows it.
    let mut rehashed_records = stream(&rehashed);
    *rehashed_records[1].payload.last_mut().unwrap() ^= 0x01;
    rehash(&mut rehashed_records[1]);
    let missing_records = stream(&missing);
    let reordered_records = stream(&reordered);
    let duplicated_records = stream(&duplicated);
    let mut forked = duplicated_records[1].clone();
    forked
        .headers
        .insert("event-id".into(), Uuid::new_v4().to_string());
    rehash(&mut forked);
    for record in records.iter().chain(&rehashed_records) {
        publish_one(&producer, record).await;
    }
    for record in [&missing_records[0], &missing_records[2]] {
        publish_one(&producer, record).await;
    }
    for record in [
        &reordered_records[0],
        &reordered_records[2],
        &reordered_records[1],
    ] {
        publish_one(&producer, record).await;
    }
    for record in duplicated_records.iter().chain([&forked]) {
        publish_one(&producer, record).await;
    }
    for record in &stream(&intact) {
        publish_one(&producer, record).await;
    }

    let verified = audit(&forged, &["verify", "--topic", &forged.topic]).await;
    assert_eq!(verified.code, 1, "{:?} {}", verified.lines, verified.stderr);
    let found = |stream: &str| -> Vec<(String, u64)> {
        let mut kinds: Vec<(String, u64)> = verified
            .lines
            .iter()
            .filter(|line| line["stream_id"] == stream)
            .map(|line| {
                (
                    line["problem"].as_str().unwrap().to_owned(),
                    line["version"].as_u64().unwrap(),
                )
            })
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(found(&altered), [("altered".to_owned(), 2)]);
    assert_eq!(found(&rehashed), [("altered".to_owned(), 2)]);
    assert_eq!(found(&missing), [("missing".to_owned(), 2)]);
    assert_eq!(found(&reordered), [("reordered".to_owned(), 2)]);
    assert_eq!(
        found(&duplicated),
        [("duplicated".to_owned(), 2)],
        "{:?}",
        verified.lines
    );
    assert_eq!(found(&intact), []);
    assert_eq!(summary(&verified)["problems"], 5);
    assert_eq!(summary(&verified)["ok"], false);
    commands.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_query_selects_by_tenant_type_and_time() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let first = submit(&system, &commands.url, "acme", "first").await;
    let second = submit(&system, &commands.url, "globex", "second").await;
    signal(&system, &commands.url, "acme", &first).await;

    let acme = audit(&system.kafka, &["query", "--tenant", "acme"]).await;
    assert_eq!(acme.code, 0, "{}", acme.stderr);
    let mut versions: Vec<(String, u64)> = acme
        .lines
        .iter()
        .map(|l| {
            assert_eq!(l["tenant"], "acme");
            (
                l["stream_id"].as_str().unwrap().to_owned(),
                l["stream_version"].as_u64().unwrap(),
            )
        })
        .collect();
    versions.sort();
    assert_eq!(versions, [(first.clone(), 1), (first.clone(), 2)]);
    let submitted = acme
        .lines
        .iter()
        .find(|l| l["stream_version"] == 1)
        .unwrap();
    assert_eq!(submitted["event_type"], "WorkflowSubmitted");
    assert_eq!(
        submitted["cloudevents"]["ce_type"],
        "ai.flowline.workflow.WorkflowSubmitted.v3"
    );
    assert!(
        submitted["data"].to_string().contains("\"first\""),
        "the decoded value names the workflow: {}",
        submitted["data"]
    );

    let submissions = audit(&system.kafka, &["query", "--type", "WorkflowSubmitted"]).await;
    let mut streams: Vec<&str> = submissions
        .lines
        .iter()
        .map(|l| l["stream_id"].as_str().unwrap())
        .collect();
    streams.sort();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort();
    assert_eq!(streams, expected);

    // Everything from the signal's time on: the signal only.
    let since = acme
        .lines
        .iter()
        .find(|l| l["stream_version"] == 2)
        .unwrap()["occurred_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let later = audit(&system.kafka, &["query", "--since", &since]).await;
    assert_eq!(later.code, 0, "{}", later.stderr);
    assert_eq!(later.lines.len(), 1, "{:?}", later.lines);
    assert_eq!(later.lines[0]["stream_version"], 2);
    let until = audit(
        &system.kafka,
        &["query", "--tenant", "acme", "--until", &since],
    )
    .await;
    assert_eq!(until.lines.len(), 2);

    let bad = audit(&system.kafka, &["query", "--since", "yesterday"]).await;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("--since: not an RFC 3339 time"),
        "{}",
        bad.stderr
    );
    commands.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_endpoint_serves_operators_the_log() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let query = system.query_service().await;
    let first = submit(&system, &commands.url, "acme", "first").await;
    submit(&system, &commands.url, "globex", "second").await;
    signal(&system, &commands.url, "acme", &first).await;
    let bearer = system_tests::auth::admin_bearer();
    let events = format!("{}/v1/audit/events", query.url);

    let reply = system
        .send(
            system
                .http
                .get(format!("{events}?tenant=acme&type=WorkflowSubmitted"))
                .header("authorization", &bearer),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let lines = reply.body.as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["stream_id"], first);
    assert_eq!(lines[0]["tenant"], "acme");

    // NDJSON for streaming consumers, same selection as the CLI.
    let reply = system
        .send(
            system
                .http
                .get(format!("{events}?tenant=acme"))
                .header("authorization", &bearer)
                .header("accept", "application/x-ndjson"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let text = reply.body.as_str().unwrap();
    // With the keys' database, as the endpoint reads it: personal fields decrypted.
    let cli = audit(
        &system.kafka,
        &[
            "query",
            "--tenant",
            "acme",
            "--database-url",
            &system.database_url,
        ],
    )
    .await;
    let mut served: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Partitions interleave in no fixed order; within one, the order is the log's.
    let position = |line: &Value| (line["partition"].as_i64(), line["offset"].as_i64());
    served.sort_by_key(position);
    let mut printed = cli.lines.clone();
    printed.sort_by_key(position);
    assert_eq!(served, printed);

    let unauthorized = system.send(reqwest::Client::new().get(&events)).await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(
        unauthorized.header("content-type"),
        Some("application/problem+json")
    );
    for (query_string, parameter) in [
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("stream=nope", "stream"),
        ("limit=0", "limit"),
    ] {
        let reply = system
            .send(
                system
                    .http
                    .get(format!("{events}?{query_string}"))
                    .header("authorization", &bearer),
            )
            .await;
        assert_eq!(reply.status, 400, "{query_string}");
        assert_eq!(reply.body["parameter"], parameter);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }

    let verify = system
        .send(
            system
                .http
                .get(format!("{}/v1/audit/verify", query.url))
                .header("authorization", &bearer),
        )
        .await;
    assert_eq!(verify.status, 200, "{:?}", verify.body);
    assert_eq!(verify.body["summary"]["ok"], true);
    assert_eq!(verify.body["summary"]["records"], 3);
    assert_eq!(verify.body["problems"], json!([]));
    query.stop().await;
    commands.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_consumer_reads_the_log_with_confluent_kafka_and_fastavro() {
    let python = std::env::var_os("FLOWLINE_PYTHON").expect(
        "FLOWLINE_PYTHON names a python with tests/clients/python/requirements.txt \
         (scripts/test sets it up)",
    );
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let first = submit(&system, &commands.url, "acme", "first").await;
    signal(&system, &commands.url, "acme", &first).await;
    let second = submit(&system, &commands.url, "globex", "second").await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/read_log.py");
    let kafka = system.kafka.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(["--brokers", &kafka.brokers, "--topic", &kafka.topic])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");

    // What Python decoded is what was submitted, and what our own codec reads.
    let records = system.read_log().await;
    let codec = EventCodec::default();
    for line in &lines {
        let record = records
            .iter()
            .find(|r| {
                r.partition == line["partition"].as_i64().unwrap() as i32
                    && r.offset == line["offset"].as_i64().unwrap()
            })
            .unwrap();
        let envelope = codec.decode(&record.payload).unwrap();
        let value = &line["value"];
        let metadata = &value["metadata"];
        assert_eq!(metadata["event_id"], envelope.metadata.event_id.to_string());
        assert_eq!(metadata["tenant"], envelope.metadata.tenant);
        assert_eq!(metadata["stream_id"], line["key"]);
        assert_eq!(metadata["stream_version"], envelope.metadata.stream_version);
        assert_eq!(
            line["headers"]["ce_id"],
            envelope.metadata.event_id.to_string()
        );
    }
    let submitted: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["schema"] == "schemas/avro/WorkflowSubmitted.v3.avsc")
        .map(|l| {
            (
                l["key"].as_str().unwrap(),
                l["value"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(submitted.len(), 2, "{lines:?}");
    assert!(submitted.contains(&(first.as_str(), "first")));
    assert!(submitted.contains(&(second.as_str(), "second")));
    commands.stop().await;
}

fn signal_event(stream_id: Uuid, version: u64) -> flowline_domain::EventEnvelope {
    use chrono::TimeZone;
    flowline_domain::EventEnvelope {
        metadata: flowline_domain::EventMetadata {
            event_id: Uuid::now_v7(),
            tenant: "acme".into(),
            stream_id,
            stream_version: version,
            // Nanoseconds: the store keeps microseconds, and so must the hash.
            occurred_at: Utc.timestamp_opt(1_790_000_000, 123_456_789).unwrap(),
            command_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
            traceparent: None,
            tracestate: None,
        },
        event: flowline_domain::WorkflowEvent::SignalReceived(flowline_domain::SignalReceived {
            name: "ping".into(),
            payload: json!({"n": version}),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_chains_each_stream_and_restarts_after_unchained_events() {
    let name = format!("test_{}", Uuid::new_v4().simple());
    let url = flowline_service_kit::db::with_database(&system_tests::server_url(), &name).unwrap();
    let pool = flowline_service_kit::db::prepare(&url, 4).await.unwrap();
    let store = flowline_event_store::EventStore::new(pool.clone());
    let stream_id = Uuid::now_v7();
    for version in 1..=3 {
        store
            .append(&signal_event(stream_id, version), None)
            .await
            .unwrap();
    }
    type Row = (
        i64,
        Uuid,
        String,
        String,
        i32,
        DateTime<Utc>,
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT stream_version, event_id, tenant, event_type, schema_version, occurred_at, \
         payload, prev_hash, event_hash FROM event_store ORDER BY stream_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut previous = chain::GENESIS;
    for (version, event_id, tenant, event_type, schema_version, occurred_at, payload, prev, hash) in
        &rows
    {
        assert_eq!(prev.as_slice(), previous.as_slice(), "version {version}");
        let recomputed = ChainedEvent {
            tenant,
            stream_id,
            stream_version: *version as u64,
            event_id: *event_id,
            event_type,
            schema_version: *schema_version as u32,
            occurred_at: *occurred_at,
            payload,
        }
        .hash(&previous);
        assert_eq!(hash.as_slice(), recomputed.as_slice(), "version {version}");
        previous = recomputed;
    }

    // Events stored before the chain existed (by an earlier build, so a process of this
    // one has not appended them): the next append starts a new chain.
    sqlx::query("UPDATE event_store SET prev_hash = NULL, event_hash = NULL")
        .execute(&pool)
        .await
        .unwrap();
    flowline_event_store::EventStore::new(pool.clone())
        .append(&signal_event(stream_id, 4), None)
        .await
        .unwrap();
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT prev_hash FROM event_store WHERE stream_version = 4")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(prev, chain::GENESIS.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_prints_the_log_and_follows_new_events() {
    use std::io::BufRead;

    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let before = submit(&system, &commands.url, "acme", "before").await;

    let mut tail = Command::new(bin_dir().join("audit"))
        .args(["tail", "--from-beginning"])
        .env("KAFKA_BROKERS", &system.kafka.brokers)
        .env("KAFKA_TOPIC", &system.kafka.topic)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("audit tail starts");
    let stdout = tail.stdout.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx
                .send(serde_json::from_str(&line).expect("a JSON line"))
                .is_err()
            {
                break;
            }
        }
    });
    let first = next_line(&mut lines_rx).await;
    assert_eq!(first["stream_id"], before.as_str());
    assert_eq!(first["event_type"], "WorkflowSubmitted");

    // Written after the tail started: it follows the log.
    let after = submit(&system, &commands.url, "acme", "after").await;
    let second = next_line(&mut lines_rx).await;
    assert_eq!(second["stream_id"], after.as_str());
    assert_eq!(second["stream_version"], 1);
    tail.kill().unwrap();
    let _ = tail.wait();
}

async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(30), lines.recv())
        .await
        .ok()
        .flatten()
        .expect("a line from audit tail")
}
