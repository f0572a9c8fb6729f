//! A record the log refuses never stops the relay: it is parked (with why, counted on
//! `/metrics`), its stream's later events are held behind it, every other stream and
//! tenant goes on being published, the waiting client gets a definite answer, a new relay
//! leader does not block on it again, and a redrive puts it back in the outbox.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flowline_domain::{SignalReceived, WorkflowEvent};
use flowline_event_store::{EventStore, ParkedEvents, Publications};
use serde_json::{Value, json};
use system_tests::{Reply, TestSystem, direct_envelope, eventually, submitted_event};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn workflow() -> Value {
    json!({"name": "w", "steps": [{"id": "a", "kind": "template"}]})
}

/// More than the producer's `message.max.bytes` (1 000 000): refused by the client library.
const OVERSIZED: usize = 1_200_000;

fn submitted() -> WorkflowEvent {
    submitted_event(workflow())
}

fn signal(size: usize) -> WorkflowEvent {
    WorkflowEvent::SignalReceived(SignalReceived {
        name: "big".into(),
        payload: json!("x".repeat(size)),
    })
}

async fn submit_as(system: &TestSystem, url: &str, tenant: &str) -> Reply {
    system
        .send(
            system
                .http
                .post(format!("{url}/v1/workflows"))
                .header("x-tenant-id", tenant)
                .json(&workflow()),
        )
        .await
}

/// Submits and signals runs in two tenants; every command must be answered 2xx.
async fn other_streams_are_published(system: &TestSystem, url: &str) {
    for tenant in ["default", "other-tenant"] {
        for _ in 0..3 {
            let submitted = submit_as(system, url, tenant).await;
            assert_eq!(submitted.status, 201, "{:?}", submitted.body);
            let id = submitted.body["workflow_id"].as_str().unwrap();
            let signalled = system
                .send(
                    system
                        .http
                        .post(format!("{url}/v1/workflows/{id}/signals/go"))
                        .header("x-tenant-id", tenant)
                        .json(&json!({"n": 1})),
                )
                .await;
            assert_eq!(signalled.status, 200, "{:?}", signalled.body);
        }
    }
}

async fn publication(system: &TestSystem, position: i64) -> (bool, Option<DateTime<Utc>>) {
    sqlx::query_as(
        "SELECT published_at IS NOT NULL, parked_at FROM event_store WHERE position = $1",
    )
    .bind(position)
    .fetch_one(&system.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_the_log_refuses_is_parked_and_never_stops_the_relay() {
    let system = TestSystem::new(2).await;
    let parked = ParkedEvents::new(system.pool.clone());
    let store = EventStore::new(system.pool.clone());
    let blocked = Uuid::now_v7();
    let (before, after) = (Uuid::now_v7(), Uuid::now_v7());

    // Stored while no relay runs, so the first leader finds them in one batch: a record of
    // another stream on each side of the refused one, and the refused stream's next event.
    let positions = [
        (before, 1, submitted()),
        (blocked, 1, submitted()),
        (blocked, 2, signal(OVERSIZED)),
        (after, 1, submitted()),
        (blocked, 3, signal(10)),
    ];
    let mut stored = Vec::new();
    for (stream, version, event) in positions {
        let position = store
            .append(&direct_envelope(stream, version, event), None)
            .await
            .unwrap();
        stored.push(position);
    }
    let (refused, held) = (stored[2], stored[4]);

    let commands = system.command_service().await;
    // The client waiting for the refused event learns it is parked, and why.
    let shutdown = CancellationToken::new();
    let waiting = Publications::start(system.pool.clone(), shutdown.clone())
        .await
        .unwrap();
    let outcome = waiting.wait(refused, Duration::from_secs(60)).await;
    let Err(flowline_event_store::Error::PublicationParked(event)) = outcome else {
        panic!("expected the refused event to be parked, got {outcome:?}");
    };
    assert!(
        event.reason.contains("MessageSizeTooLarge"),
        "{}",
        event.reason
    );
    assert_eq!(event.blocked_by, None);

    // The others of the batch are on the log, around it.
    for position in [stored[0], stored[1], stored[3]] {
        let published = eventually(Duration::from_secs(30), || async {
            publication(&system, position).await.0.then_some(())
        })
        .await;
        assert!(published.is_some(), "event at {position} never published");
    }
    // The refused stream's next event waits behind it, parked too, not on the log.
    let behind = eventually(Duration::from_secs(30), || async {
        parked.get(held).await.unwrap()
    })
    .await
    .expect("the later event of the refused stream is held");
    assert_eq!(behind.blocked_by, Some(event.event_id));
    assert!(!publication(&system, held).await.0);

    // Every other stream of every tenant is published and answered.
    other_streams_are_published(&system, &commands.url).await;

    // A command on the blocked stream gets a definite answer at once, not a timeout.
    let on_blocked = system
        .send(
            system
                .http
                .post(format!(
                    "{}/v1/workflows/{blocked}/signals/go",
                    commands.url
                ))
                .json(&json!({})),
        )
        .await;
    assert_eq!(on_blocked.status, 503, "{:?}", on_blocked.body);
    assert_eq!(on_blocked.body["type"], "/problems/publication-parked");
    assert_eq!(on_blocked.body["version"], 4);
    assert!(on_blocked.body["event_id"].is_string());
    assert!(
        on_blocked.body["reason"]
            .as_str()
            .unwrap()
            .contains(&event.event_id.to_string()),
        "{:?}",
        on_blocked.body
    );

    // Operators see them: listed with their reasons, and counted for alerts.
    let listed = parked.list(0, 100).await.unwrap();
    let listed: Vec<(i64, Option<Uuid>)> =
        listed.iter().map(|p| (p.position, p.blocked_by)).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0], (refused, None));
    assert_eq!(listed[1], (held, Some(event.event_id)));
    let metrics = system.get(&format!("{}/metrics", commands.url)).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("flowline_outbox_parked_events 3"),
        "{:?}",
        metrics.body
    );

    // A new relay leader does not block on the parked record again.
    let parked_at = publication(&system, refused).await.1;
    commands.stop().await;
    let commands = system.command_service().await;
    other_streams_are_published(&system, &commands.url).await;
    assert_eq!(publication(&system, refused).await, (false, parked_at));

    // A redrive puts the stream back in the outbox; the log still refuses the record, so it
    // is parked again (the cause is not fixed), its successors behind it, and the relay
    // still goes on.
    assert_eq!(parked.redrive(Some(&[blocked])).await.unwrap(), 3);
    let parked_again = eventually(Duration::from_secs(30), || async {
        let (_, at) = publication(&system, refused).await;
        (at.is_some() && at != parked_at && parked.count().await.unwrap() == 3).then_some(())
    })
    .await;
    assert!(
        parked_again.is_some(),
        "the redriven record was not parked again"
    );
    assert!(!publication(&system, held).await.0);
    other_streams_are_published(&system, &commands.url).await;
    shutdown.cancel();
}
