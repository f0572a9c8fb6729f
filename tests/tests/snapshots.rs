//! Snapshots stay small however many signals a run receives, a stream keeps several of
//! them, and `/state?version=` starts from the nearest one at or below the version and
//! answers exactly what a replay of the events gives.

use flowline_domain::{SignalReceived, Versioned, Workflow, WorkflowEvent};
use flowline_event_store::{EventStore, SNAPSHOTS_KEPT, WorkflowRepository};
use serde_json::{Value, json};
use system_tests::{TestSystem, direct_envelope, submitted_event};
use uuid::Uuid;

/// Text that compression does not shrink much (hex of random ids), so a snapshot carrying
/// it shows its size.
fn incompressible(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 32);
    while text.len() < bytes {
        text.push_str(&Uuid::new_v4().simple().to_string());
    }
    text.truncate(bytes);
    text
}

/// Writes a stream of a submission and `signals` signals (each with a `payload_bytes`
/// payload) the way the command service does: append, then offer a snapshot.
async fn write_stream(
    system: &TestSystem,
    snapshot_every: u64,
    signals: u64,
    payload_bytes: usize,
) -> (Uuid, Vec<WorkflowEvent>) {
    let repository = WorkflowRepository::new(
        EventStore::new(system.pool.clone()),
        system.pool.clone(),
        snapshot_every,
    );
    let stream_id = Uuid::now_v7();
    let mut events = vec![submitted_event(
        json!({"name": "w", "steps": [{"id": "a", "kind": "template"}]}),
    )];
    events.extend((1..=signals).map(|n| {
        WorkflowEvent::SignalReceived(SignalReceived {
            name: if n % 2 == 0 { "even" } else { "odd" }.into(),
            payload: json!({"n": n, "filler": incompressible(payload_bytes)}),
        })
    }));
    let mut state = Versioned::<Workflow>::default();
    for event in &events {
        let envelope = direct_envelope(stream_id, state.version + 1, event.clone());
        repository.store().append(&envelope, None).await.unwrap();
        state.apply(event);
        repository.after_append("default", stream_id, &state).await;
    }
    (stream_id, events)
}

async fn snapshots(system: &TestSystem, stream_id: Uuid) -> Vec<(i64, i32)> {
    sqlx::query_as(
        "SELECT version, pg_column_size(state) FROM snapshots WHERE stream_id = $1 \
         ORDER BY version",
    )
    .bind(stream_id)
    .fetch_all(&system.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_does_not_carry_every_signal_payload() {
    let system = TestSystem::new(1).await;
    // 300 signals of 4 KB each: 1.2 MB of payloads, none a wait step can take.
    let (stream_id, _) = write_stream(&system, 100, 300, 4_000).await;
    let taken = snapshots(&system, stream_id).await;
    assert_eq!(
        taken.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![100, 200, 300],
        "one snapshot per 100 events, several kept"
    );
    for (version, bytes) in taken {
        // A payload-carrying snapshot at 300 would hold ~1.2 MB (compressed: still far more
        // than names and versions of 300 signals).
        assert!(
            bytes < 20_000,
            "snapshot at {version} is {bytes} bytes: it carries the signals' payloads"
        );
    }
    // The current state is still whole: payloads come from the events.
    let queries = system.query_service().await;
    let state = system
        .get(&format!("{}/v1/workflows/{stream_id}/state", queries.url))
        .await;
    assert_eq!(state.status, 200, "{:?}", state.body);
    assert_eq!(state.body["state"]["signals"][150]["payload"]["n"], 151);
    assert_eq!(
        state.body["state"]["signals"][299]["payload"]["filler"]
            .as_str()
            .unwrap()
            .len(),
        4_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_as_of_a_version_starts_from_the_nearest_snapshot_and_equals_a_replay() {
    let system = TestSystem::new(1).await;
    let (stream_id, events) = write_stream(&system, 10, 59, 10).await;
    // Versions 1..=60; the newest SNAPSHOTS_KEPT snapshots are kept.
    let kept: Vec<i64> = snapshots(&system, stream_id)
        .await
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(SNAPSHOTS_KEPT, 4);
    assert_eq!(kept, vec![30, 40, 50, 60]);

    let queries = system.query_service().await;
    // (version asked, snapshot expected): older than the kept ones replays from the start.
    for (version, snapshot) in [
        (1, 0),
        (25, 0),
        (30, 30),
        (35, 30),
        (47, 40),
        (59, 50),
        (60, 60),
    ] {
        let reply = system
            .get(&format!(
                "{}/v1/workflows/{stream_id}/state?version={version}",
                queries.url
            ))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let replayed = Versioned::<Workflow>::replay(&events[..version as usize]);
        let expected: Value = serde_json::to_value(&replayed.state).unwrap();
        assert_eq!(reply.body["version"], version);
        assert_eq!(
            reply.body["state"], expected,
            "state at {version} differs from a replay"
        );
        assert_eq!(
            reply.header("x-snapshot-version"),
            Some(snapshot.to_string().as_str()),
            "version {version}"
        );
        assert_eq!(
            reply.header("x-replayed-events"),
            Some((version - snapshot).to_string().as_str()),
            "version {version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_step_gets_its_signal_from_a_snapshot_that_left_the_other_payloads_out() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "approval", "steps": [
                {"id": "approve", "kind": "wait", "config": {"signal": "approval", "timeout": "5m"}},
                {"id": "after", "kind": "template", "depends_on": ["approve"],
                 "config": {"template": "approved by {{ steps.approve.output.by }}"}}]}),
        )
        .await;
    // The approval arrives first, then enough other signals for a snapshot (every 100).
    let signal = |name: &'static str, body: Value| {
        let url = format!("{}/v1/workflows/{id}/signals/{name}", commands.url);
        let system = &system;
        async move { system.post(&url, &body).await }
    };
    assert_eq!(signal("approval", json!({"by": "ana"})).await.status, 200);
    for n in 0..110 {
        assert_eq!(signal("noise", json!({"n": n})).await.status, 200);
    }
    let snapshot: Value = sqlx::query_scalar(
        "SELECT state FROM snapshots WHERE stream_id = $1::uuid AND version = 100",
    )
    .bind(&id)
    .fetch_one(&system.pool)
    .await
    .expect("a snapshot at version 100");
    let signals = snapshot["signals"].as_array().unwrap();
    assert_eq!(signals[0]["payload"], json!({"by": "ana"}));
    assert!(signals[1..].iter().all(|s| s.get("payload").is_none()));

    // The executor, started only now, loads the run from that snapshot and completes the
    // wait step with the payload the snapshot kept.
    let executor = system.executor().await;
    system
        .wait_for_run(&id, "succeeded", std::time::Duration::from_secs(60))
        .await;
    let after = system
        .events(&id)
        .await
        .into_iter()
        .find_map(|e| match e.event {
            WorkflowEvent::StepSucceeded(s) if s.step_id == "after" => Some(s.output),
            _ => None,
        });
    assert_eq!(after, Some(json!("approved by ana")));
    executor.stop().await;
    commands.stop().await;
}
