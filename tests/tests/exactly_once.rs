//! Nothing accepted is lost or duplicated: the relay recovers an in-doubt batch from the
//! log, and projectors resume from their own checkpoints, not the group's offsets.

use chrono::Utc;
use flowline_domain::{EventEnvelope, EventMetadata, SignalReceived, WorkflowEvent};
use flowline_event_store::EventStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use system_tests::TestSystem;
use uuid::Uuid;

fn workflow() -> serde_json::Value {
    json!({"name": "w", "steps": [{"id": "a", "kind": "template"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_relay_leader_recovers_an_in_doubt_batch_without_publishing_twice() {
    let system = TestSystem::new(3).await;
    let first = system.command_service().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = system
            .post(&format!("{}/v1/workflows", first.url), &workflow())
            .await;
        assert_eq!(reply.status, 201);
        ids.push(Uuid::parse_str(reply.body["workflow_id"].as_str().unwrap()).unwrap());
    }
    first.stop().await;
    let before: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT position, log_partition, log_offset FROM event_store ORDER BY position",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();

    // As if the relay had produced these records and died before marking them published…
    sqlx::query(
        "UPDATE event_store SET published_at = NULL, log_partition = NULL, log_offset = NULL",
    )
    .execute(&system.pool)
    .await
    .unwrap();
    // …and as if two more commands were stored right before a crash, never produced.
    let store = EventStore::new(system.pool.clone());
    for id in &ids[..2] {
        let command_id = Uuid::now_v7();
        store
            .append(
                &EventEnvelope {
                    metadata: EventMetadata {
                        event_id: Uuid::now_v7(),
                        tenant: "default".into(),
                        stream_id: *id,
                        stream_version: 2,
                        occurred_at: Utc::now(),
                        command_id,
                        correlation_id: command_id,
                        causation_id: command_id,
                        traceparent: None,
                        tracestate: None,
                    },
                    event: WorkflowEvent::SignalReceived(SignalReceived {
                        name: "late".into(),
                        payload: json!(null),
                    }),
                },
                None,
            )
            .await
            .unwrap();
    }
    assert_eq!(system.records_on_log().await, 3);

    let _second = system.command_service().await;
    system
        .wait_for_count(
            "SELECT count(*) FROM event_store WHERE published_at IS NULL",
            0,
        )
        .await;
    assert_eq!(
        system.records_on_log().await,
        5,
        "each event on the log exactly once"
    );
    let after: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT position, log_partition, log_offset FROM event_store ORDER BY position LIMIT 3",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert_eq!(
        after, before,
        "recovered events keep the log position they already had"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_resume_from_their_checkpoints_not_from_group_offsets() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let submit = || async {
        let reply = system
            .post(&format!("{}/v1/workflows", commands.url), &workflow())
            .await;
        assert_eq!(reply.status, 201);
    };

    let projectors = system.projectors().await;
    for _ in 0..3 {
        submit().await;
    }
    system
        .wait_for_count("SELECT count(*) FROM workflows", 3)
        .await;
    projectors.stop().await;

    // Three more arrive while the projector is down, and someone moves the group's
    // committed offsets to the end: a projector trusting them would skip these three.
    for _ in 0..3 {
        submit().await;
    }
    let group = format!("{}.workflow_read_model.v1", system.group_prefix());
    let set_group_offsets = |to_end: bool| {
        let brokers = system.kafka.brokers.clone();
        let topic = system.kafka.topic.clone();
        let group = group.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = flowline_event_log::consumer_config(&brokers, &group)
                .create()
                .unwrap();
            let mut offsets = TopicPartitionList::new();
            for (partition, high) in flowline_event_log::high_watermarks(&brokers, &topic).unwrap()
            {
                let offset = if to_end { high } else { 0 };
                offsets
                    .add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .unwrap();
            }
            consumer
                .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                .unwrap();
        })
    };
    set_group_offsets(true).await.unwrap();
    let projectors = system.projectors().await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 6)
        .await;
    projectors.stop().await;

    // And the other way round: offsets rewound to zero must not apply anything twice.
    set_group_offsets(false).await.unwrap();
    let _projectors = system.projectors().await;
    submit().await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 7)
        .await;
    assert_eq!(
        system.count("SELECT count(*) FROM workflow_events").await,
        7
    );
    assert_eq!(
        system.count("SELECT sum(next_offset)::bigint FROM projection_checkpoints WHERE projection = 'workflow_read_model.v1'"
        )
        .await,
        7
    );
}
