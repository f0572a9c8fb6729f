//! Integrity of the projections: a record at an already applied version is dropped only
//! when it is the event applied there, and a checkpoint the log does not hold (the topic
//! was recreated under the projection) halts the projection, with an alert, instead of
//! skipping records.

use std::time::Duration;

use flowline_event_log::{LogProducer, OutgoingRecord};
use flowline_schemas::EventCodec;
use serde_json::{Value, json};
use system_tests::{LogRecord, TestSystem, eventually};

fn workflow(name: &str) -> Value {
    json!({"name": name, "steps": [{"id": "a", "kind": "llm"}]})
}

fn outgoing(record: &LogRecord, payload: Vec<u8>, event_id: &str) -> OutgoingRecord {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
        .collect();
    for (name, value) in &mut headers {
        if name == "event-id" || name == "ce_id" {
            *value = event_id.as_bytes().to_vec();
        }
    }
    OutgoingRecord {
        key: record.key.clone().into_bytes(),
        partition: record.partition,
        payload,
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_different_event_at_an_applied_version_is_dead_lettered_and_alarms() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    let id = system.submit(&commands.url, &workflow("original")).await;
    system
        .wait_for_count("SELECT count(*) FROM workflow_events", 1)
        .await;
    let log = system.read_log().await;
    let original = &log[0];
    let codec = EventCodec::default();
    let mut forged = codec.decode(&original.payload).unwrap();
    let original_event_id = forged.metadata.event_id;
    forged.metadata.event_id = uuid::Uuid::now_v7();
    let forged_id = forged.metadata.event_id.to_string();

    // The same record again (a relay that lost its lock mid-flight can leave one), then a
    // different event claiming version 1 of the same stream, produced straight to the topic.
    let producer = LogProducer::new(&system.kafka).unwrap();
    let deliveries = producer
        .publish(&[
            outgoing(
                original,
                original.payload.clone(),
                &original_event_id.to_string(),
            ),
            outgoing(original, codec.encode(&forged).unwrap().payload, &forged_id),
        ])
        .await
        .unwrap();
    let forged_offset = deliveries[1].offset;
    // The projection goes on past both.
    system.submit(&commands.url, &workflow("after")).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 2)
        .await;

    let letters: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT projection, log_offset, reason FROM dead_letters \
         WHERE projection = 'workflow_read_model.v1' ORDER BY id",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert_eq!(
        letters.len(),
        1,
        "only the different event is set aside, not the true duplicate: {letters:?}"
    );
    let (_, offset, reason) = &letters[0];
    assert_eq!(*offset, forged_offset);
    assert!(
        reason.contains(&forged_id) && reason.contains(&original_event_id.to_string()),
        "the reason names both events: {reason}"
    );
    let applied: uuid::Uuid = sqlx::query_scalar(
        "SELECT event_id FROM workflow_events WHERE workflow_id = $1::uuid AND version = 1",
    )
    .bind(&id)
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(applied, original_event_id, "the applied event stays");

    // The alarm: the pending dead letter shows in the metrics operators alert on.
    let pending = system
        .metric(
            &projectors.url,
            "flowline_dead_letters_pending{projection=\"workflow_read_model.v1\"}",
        )
        .await;
    assert_eq!(pending, 1);
}

async fn readiness(system: &TestSystem, url: &str) -> (u16, Value) {
    let reply = system.get(&format!("{url}/readyz")).await;
    (reply.status, reply.body)
}

/// Where the read model's checkpoint stands on partition 0.
async fn read_model_checkpoint(system: &TestSystem) -> i64 {
    system
        .count(
            "SELECT next_offset FROM projection_checkpoints \
             WHERE projection = 'workflow_read_model.v1' AND partition = 0",
        )
        .await
}

// A recreated topic is what puts a checkpoint ahead of the log in practice. On tansu 0.6,
// deleting a topic under live clients makes librdkafka crash in its metadata cache (a
// SIGSEGV in rd_kafka_metadata_cache_find on the broker's answer for the deleted topic),
// so the test puts the checkpoint ahead of the log instead: what the projection finds at
// start is the same, a checkpoint past the high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_ahead_of_the_log_halts_the_projection_instead_of_skipping() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    for i in 0..3 {
        system
            .submit(&commands.url, &workflow(&format!("before-{i}")))
            .await;
    }
    system
        .wait_for_count("SELECT count(*) FROM workflows", 3)
        .await;
    let ready = eventually(Duration::from_secs(30), || async {
        (readiness(&system, &projectors.url).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "ready before: {:?}",
        readiness(&system, &projectors.url).await
    );
    projectors.stop().await;
    assert_eq!(read_model_checkpoint(&system).await, 3);
    sqlx::query(
        "UPDATE projection_checkpoints SET next_offset = 13 \
         WHERE projection = 'workflow_read_model.v1' AND partition = 0",
    )
    .execute(&system.pool)
    .await
    .unwrap();

    let projectors = system.projectors().await;
    let halted = eventually(Duration::from_secs(30), || async {
        let (status, body) = readiness(&system, &projectors.url).await;
        let task = &body["tasks"]["projection workflow_read_model.v1"];
        (status == 503 && task["state"] == "halted").then(|| task["reason"].clone())
    })
    .await
    .expect("the projection halts");
    assert!(
        halted
            .as_str()
            .unwrap()
            .contains("checkpoint 13 is ahead of the log's high watermark 3"),
        "{halted}"
    );
    let lag = system.get(&format!("{}/admin/lag", projectors.url)).await;
    let read_model = lag
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["projection"] == "workflow_read_model.v1" && row["partition"] == 0);
    assert_eq!(
        read_model.unwrap()["lag"],
        -10,
        "lag is not clamped: {}",
        lag.body
    );

    // The log grows past the checkpoint: reading on from offset 13 would skip records
    // 3..13. The projection stays halted instead.
    for i in 0..12 {
        system
            .submit(&commands.url, &workflow(&format!("after-{i}")))
            .await;
    }
    let grown = eventually(Duration::from_secs(30), || async {
        (system.records_on_log().await == 15).then_some(())
    })
    .await;
    assert!(grown.is_some(), "the log holds the fifteen records");
    // Longer than the projection's periodic check of the watermarks.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        system.count("SELECT count(*) FROM workflows").await,
        3,
        "nothing read past the misplaced checkpoint"
    );
    assert_eq!(read_model_checkpoint(&system).await, 13);
    let (status, body) = readiness(&system, &projectors.url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["tasks"]["projection workflow_read_model.v1"]["state"],
        "halted"
    );
}
