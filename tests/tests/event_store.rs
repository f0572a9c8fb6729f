//! The write side as a trustworthy event store: expected versions across writer instances,
//! idempotent commands, snapshots, state as of any time, and old schema versions.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use system_tests::{Reply, TestSystem, eventually};

fn workflow() -> Value {
    json!({"name": "w", "steps": [{"id": "a", "kind": "template"}]})
}

async fn submit(system: &TestSystem, url: &str) -> String {
    let reply = system
        .post(&format!("{url}/v1/workflows"), &workflow())
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

async fn signal(system: &TestSystem, url: &str, id: &str, if_match: Option<u64>) -> Reply {
    let mut request = system
        .http
        .post(format!("{url}/v1/workflows/{id}/signals/ping"))
        .json(&json!({}));
    if let Some(version) = if_match {
        request = request.header("if-match", format!("\"{version}\""));
    }
    system.send(request).await
}

async fn scalar(system: &TestSystem, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&system.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expected_versions_hold_across_two_writer_processes() {
    let system = TestSystem::new(3).await;
    let first = system.command_process().await;
    let second = system.command_process().await;
    let id = submit(&system, &first.url).await;

    // 20 concurrent signals with the same If-Match: exactly one wins.
    let racers = (0..20).map(|i| {
        let url = if i % 2 == 0 { &first.url } else { &second.url };
        signal(&system, url, &id, Some(1))
    });
    let replies = join_all(racers).await;
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for loser in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(loser.status, 412, "{:?}", loser.body);
        assert_eq!(loser.body["current_version"], 2);
        assert_eq!(
            loser.header("content-type"),
            Some("application/problem+json")
        );
    }

    // 200 concurrent signals without If-Match: all succeed, versions 3..=202, no gap.
    let all = (0..200).map(|i| {
        let url = if i % 2 == 0 { &first.url } else { &second.url };
        signal(&system, url, &id, None)
    });
    let replies = join_all(all).await;
    let mut versions: Vec<u64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body["version"].as_u64().unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (3..=202).collect::<Vec<u64>>());

    // A plain Kafka consumer sees the stream as versions 1..=202, once each, in order.
    let log: Vec<u64> = system
        .read_log()
        .await
        .into_iter()
        .filter(|record| record.key == id)
        .map(|record| record.headers["stream-version"].parse().unwrap())
        .collect();
    assert_eq!(log, (1..=202).collect::<Vec<u64>>());

    // So does a projector.
    let _projectors = system.projectors().await;
    let projected = eventually(Duration::from_secs(30), || async {
        let n = scalar(&system, "SELECT count(*) FROM workflow_events").await;
        (n == 202).then_some(n)
    })
    .await;
    assert_eq!(projected, Some(202));
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM workflow_events ORDER BY version")
            .fetch_all(&system.pool)
            .await
            .unwrap();
    assert_eq!(versions, (1..=202).collect::<Vec<i64>>());
}

async fn keyed(system: &TestSystem, url: &str, key: &str, body: &Value) -> Reply {
    system
        .send(
            system
                .http
                .post(format!("{url}/v1/workflows"))
                .header("idempotency-key", key)
                .json(body),
        )
        .await
}

async fn flush_redis(system: &TestSystem) {
    let client = redis::Client::open(system_tests::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", system.redis_prefix()))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "the first answer was cached in Redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_applies_a_command_once_even_after_redis_forgets() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let first = keyed(&system, &commands.url, "order-42", &workflow()).await;
    assert_eq!(first.status, 201);

    let retry = keyed(&system, &commands.url, "order-42", &workflow()).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.body, first.body, "the original answer");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("etag"), first.header("etag"));

    let reused = keyed(
        &system,
        &commands.url,
        "order-42",
        &json!({"name": "other", "steps": [{"id": "b", "kind": "llm"}]}),
    )
    .await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.body["type"], "/problems/idempotency-key-reused");

    // Keys are scoped by tenant: another tenant's same key is another command.
    let other_tenant = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows", commands.url))
                .header("idempotency-key", "order-42")
                .header("x-tenant-id", "globex")
                .json(&workflow()),
        )
        .await;
    assert_eq!(other_tenant.status, 201);
    assert_ne!(other_tenant.body["workflow_id"], first.body["workflow_id"]);
    assert_eq!(system.stored_events().await, 2);

    flush_redis(&system).await;
    let after_flush = keyed(&system, &commands.url, "order-42", &workflow()).await;
    assert_eq!(after_flush.status, 201);
    assert_eq!(after_flush.body["workflow_id"], first.body["workflow_id"]);
    assert_eq!(after_flush.body["version"], 1);
    assert_eq!(after_flush.body["event_id"], first.body["event_id"]);
    let reused = keyed(
        &system,
        &commands.url,
        "order-42",
        &json!({"name": "other", "steps": [{"id": "b", "kind": "llm"}]}),
    )
    .await;
    assert_eq!(
        reused.status, 422,
        "the fingerprint is kept with the event, not only in Redis"
    );

    // Concurrent retries of one keyed command still append it once.
    let body = workflow();
    let racing = join_all((0..10).map(|_| keyed(&system, &commands.url, "burst", &body))).await;
    let ids: std::collections::HashSet<&Value> = racing
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{:?}", r.body);
            &r.body["workflow_id"]
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(system.stored_events().await, 3);
    assert_eq!(system.records_on_log().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_used_and_ignored_when_their_shape_is_old() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let id = submit(&system, &commands.url).await;
    for _ in 0..104 {
        assert_eq!(signal(&system, &commands.url, &id, None).await.status, 200);
    }
    let (version, shape): (i64, i32) =
        sqlx::query_as("SELECT version, shape_version FROM snapshots WHERE stream_id = $1::uuid")
            .bind(&id)
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert_eq!(
        (version, shape),
        (100, flowline_event_store::WORKFLOW_SNAPSHOT_SHAPE)
    );

    let current = system
        .get(&format!("{}/v1/workflows/{id}/state", queries.url))
        .await;
    assert_eq!(current.body["version"], 105);
    assert_eq!(
        current.body["state"]["signals"].as_array().unwrap().len(),
        104
    );

    // A (doctored) snapshot of the current shape is what loading starts from…
    sqlx::query("UPDATE snapshots SET state = jsonb_set(state, '{name}', '\"from-snapshot\"')")
        .execute(&system.pool)
        .await
        .unwrap();
    let from_snapshot = system
        .get(&format!("{}/v1/workflows/{id}/state", queries.url))
        .await;
    assert_eq!(from_snapshot.body["state"]["name"], "from-snapshot");
    assert_eq!(from_snapshot.body["version"], 105);
    // …and the command side uses it too: the next event builds on version 105.
    assert_eq!(
        signal(&system, &commands.url, &id, Some(105)).await.status,
        200
    );

    // A snapshot of an older shape is ignored: the state is rebuilt from the events.
    sqlx::query("UPDATE snapshots SET shape_version = shape_version - 1")
        .execute(&system.pool)
        .await
        .unwrap();
    let rebuilt = system
        .get(&format!("{}/v1/workflows/{id}/state", queries.url))
        .await;
    assert_eq!(rebuilt.body["state"]["name"], "w");
    assert_eq!(rebuilt.body["version"], 106);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_as_of_a_version_or_a_time_is_rebuilt_exactly() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = submit(&system, &commands.url).await;
    assert_eq!(signal(&system, &commands.url, &id, None).await.status, 200);
    assert_eq!(signal(&system, &commands.url, &id, None).await.status, 200);
    let cancel = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({"reason": "r"}),
        )
        .await;
    assert_eq!(cancel.status, 200);

    let events = eventually(Duration::from_secs(30), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}/events", queries.url))
            .await;
        (reply.body["events"].as_array().map(Vec::len) == Some(4)).then_some(reply.body)
    })
    .await
    .expect("four events projected");
    let time_of = |version: usize| {
        events["events"][version - 1]["occurred_at"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let base = format!("{}/v1/workflows/{id}/state", queries.url);
    let system = &system;
    let state = |query: String| {
        let url = format!("{base}?{query}");
        async move { system.get(&url).await }
    };
    let v2 = state("version=2".into()).await;
    assert_eq!(v2.status, 200, "{:?}", v2.body);
    assert_eq!(v2.body["version"], 2);
    assert_eq!(v2.body["current_version"], 4);
    assert_eq!(v2.body["state"]["status"], "pending");
    assert_eq!(v2.body["state"]["signals"].as_array().unwrap().len(), 1);

    let at_three = state(format!("as_of={}", time_of(3).replace('+', "%2B"))).await;
    assert_eq!(at_three.body["version"], 3, "{:?}", at_three.body);
    assert_eq!(
        at_three.body["state"]["signals"].as_array().unwrap().len(),
        2
    );
    let at_four = state(format!("as_of={}", time_of(4))).await;
    assert_eq!(at_four.body["state"]["status"], "cancelled");
    assert_eq!(at_four.body["state"]["cancel_reason"], "r");

    let before = state("as_of=2000-01-01T00:00:00Z".into()).await;
    assert_eq!(before.status, 404);
    assert_eq!(before.body["type"], "/problems/not-yet-existing");
    let future = state("as_of=2999-01-01T00:00:00Z".into()).await;
    assert_eq!(future.status, 400);
    assert_eq!(future.body["parameter"], "as_of");
    let unknown = state("version=99".into()).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["current_version"], 4);
    for bad in [
        "version=0",
        "version=two",
        "as_of=yesterday",
        "version=1&as_of=2026-01-01T00:00:00Z",
    ] {
        let reply = state(bad.into()).await;
        assert!(matches!(reply.status, 400 | 404), "{bad}: {}", reply.status);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_already_on_the_log_replay_into_the_current_model() {
    let system = TestSystem::new(1).await;
    // Three records exactly as the v1 build wrote them, stored as that build stored them.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/testdata");
    let codec = flowline_schemas::EventCodec::default();
    for index in 0..3 {
        let payload = std::fs::read(fixtures.join(format!("v1-stream-{index}.avro"))).unwrap();
        let envelope = codec.decode(&payload).unwrap();
        let m = &envelope.metadata;
        sqlx::query(
            "INSERT INTO event_store (tenant, stream_id, stream_version, event_id, command_id, \
             event_type, schema_version, occurred_at, correlation_id, causation_id, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10)",
        )
        .bind(&m.tenant)
        .bind(m.stream_id)
        .bind(m.stream_version as i64)
        .bind(m.event_id)
        .bind(m.command_id)
        .bind(envelope.event.event_type())
        .bind(m.occurred_at)
        .bind(m.correlation_id)
        .bind(m.causation_id)
        .bind(&payload)
        .execute(&system.pool)
        .await
        .unwrap();
    }
    // The relay publishes them byte for byte; the projector and the state endpoint read
    // them with today's schemas.
    let _commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let log = eventually(Duration::from_secs(30), || async {
        let log = system.read_log().await;
        (log.len() == 3).then_some(log)
    })
    .await
    .expect("published");
    assert_eq!(codec.writer_schema(&log[0].payload).unwrap().version, 1);

    let id = "01900000-0000-7000-8000-000000000064";
    let view = eventually(Duration::from_secs(30), || async {
        let reply = system
            .send(
                system
                    .http
                    .get(format!("{}/v1/workflows/{id}", queries.url))
                    .header("x-tenant-id", "acme"),
            )
            .await;
        (reply.body["version"] == 3).then_some(reply.body)
    })
    .await
    .expect("projected");
    assert_eq!(view["name"], "legacy");
    assert_eq!(view["input"], json!({"topic": "avro"}));
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["submitted_by"], flowline_schemas::LEGACY_PRINCIPAL);

    let state = system
        .send(
            system
                .http
                .get(format!("{}/v1/workflows/{id}/state?version=1", queries.url))
                .header("x-tenant-id", "acme"),
        )
        .await;
    assert_eq!(state.body["state"]["input"], json!({"topic": "avro"}));
    assert_eq!(
        state.body["state"]["submitted_by"],
        flowline_schemas::LEGACY_PRINCIPAL
    );
}
