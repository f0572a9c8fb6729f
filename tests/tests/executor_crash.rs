//! The executor under load and failure: 200 runs of 10 `http` steps (chains and fan-outs)
//! across two executor processes, one of them `kill -9`ed five times, all end
//! `succeeded` with exactly one success per step and no attempt ever sent twice; the read
//! model rebuilt from the log equals the live one. And fairness: one tenant's backlog of
//! 500 runs does not hold up another tenant's five.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flowline_domain::WorkflowEvent;
use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::PgPool;
use system_tests::step_server::StepServer;
use system_tests::workloads::ten_steps;
use system_tests::{OwnedBroker, TestSystem, eventually};

/// How long a projection may take to catch up with the whole log of the crash test.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(300);

fn http_step(id: &str, depends_on: &[String], url: &str) -> Value {
    json!({"id": id, "kind": "http", "depends_on": depends_on,
           "config": {"method": "POST", "url": url, "body": {"step": id},
                      "retry": {"max_attempts": 20, "initial_interval": "100ms", "max_interval": "1s"}}})
}

/// A chain s0 → s1 → … → s9, or a fan-out s0 → (s1 … s8) → s9.
fn workflow(index: usize, url: &str) -> Value {
    let steps = ten_steps(index, |id, depends_on| {
        http_step(id, &depends_on, &format!("{url}/ok/{index}/{id}"))
    });
    json!({"name": format!("load-{index}"), "steps": steps})
}

async fn succeeded_runs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_store WHERE event_type = 'WorkflowSucceeded'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every read-model table as JSON rows in a stable order.
async fn read_model(pool: &PgPool) -> Vec<Value> {
    let mut tables = Vec::new();
    for (table, order) in [
        ("workflows", "t.id"),
        ("workflow_steps", "t.workflow_id, t.step_id"),
        ("workflow_events", "t.workflow_id, t.version"),
        (
            "workflow_step_attempts",
            "t.workflow_id, t.step_id, t.attempt",
        ),
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap();
        if exists {
            let sql =
                format!("SELECT coalesce(jsonb_agg(t ORDER BY {order}), '[]') FROM {table} t");
            tables.push(
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            );
        }
    }
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_executors_one_killed_five_times_finish_every_run_once() {
    // A broker of its own: its projections follow a long log, and tansu's sqlite storage
    // answers a fetch more slowly the more records (and headers) the broker holds, so on
    // the suite's shared broker a fetch ran past librdkafka's 60 s request timeout.
    let broker = OwnedBroker::start().await;
    let system = TestSystem::with_brokers(broker.address.clone(), 6).await;
    let server = StepServer::start().await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    // Fewer attempts at once than the default: two debug-built executors, the services and
    // the broker share two cores here.
    let limits = || {
        vec![(
            "EXECUTOR_MAX_CONCURRENT_ATTEMPTS".to_owned(),
            "16".to_owned(),
        )]
    };
    let mut doomed = system.executor_process(limits()).await;
    let mut survivor = system.executor_process(limits()).await;

    // Kills land while runs are being submitted and driven.
    let kills = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            doomed.kill();
            tokio::time::sleep(Duration::from_millis(700)).await;
            doomed.restart().await;
        }
    };
    let (ids, ()) = tokio::join!(
        submissions_in_chunks(&system, &commands.url, &server.url),
        kills
    );
    let all = eventually(Duration::from_secs(240), || async {
        (succeeded_runs(&system.pool).await == 200).then_some(())
    })
    .await;
    assert!(
        all.is_some(),
        "{} of 200 runs succeeded",
        succeeded_runs(&system.pool).await
    );

    // Exactly one success per step, every step's success after its attempt started, and no
    // attempt id sent to the server twice.
    let mut started_attempts = HashSet::new();
    let mut lost = 0;
    for id in &ids {
        let events = system.events(id).await;
        let mut successes: HashMap<String, usize> = HashMap::new();
        for event in &events {
            match &event.event {
                WorkflowEvent::StepSucceeded(s) => {
                    *successes.entry(s.step_id.clone()).or_default() += 1
                }
                WorkflowEvent::StepStarted(s) => {
                    started_attempts.insert(s.attempt_id.to_string());
                }
                WorkflowEvent::StepFailed(f) if f.error.kind == "lost" => lost += 1,
                _ => {}
            }
        }
        assert_eq!(successes.len(), 10, "run {id}: {successes:?}");
        assert!(
            successes.values().all(|&n| n == 1),
            "run {id}: {successes:?}"
        );
    }
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for request in server.requests() {
        let key = request
            .idempotency_key
            .expect("every request carries its attempt id");
        assert!(
            started_attempts.contains(&key),
            "a request for an attempt never recorded as started"
        );
        *per_key.entry(key).or_default() += 1;
    }
    let repeated: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "attempts sent more than once: {repeated:?}"
    );
    assert!(per_key.len() >= 2_000);
    tracing::info!(lost, "attempts lost to kills and retried");

    // The read model, projected live through all of it, equals a full rebuild of it
    // (history from the event store, the rest from the log). A hang guard, not a speed
    // limit: the live projections follow a log that tansu serves more slowly as it grows.
    let total: i64 = system.stored_events().await;
    let caught_up = eventually(CATCH_UP_WITHIN, || async {
        let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_events")
            .fetch_one(&system.pool)
            .await
            .unwrap();
        (projected == total).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "the live read model did not catch up");
    doomed.kill();
    survivor.kill();
    commands.stop().await;
    let live = read_model(&system.pool).await;
    let rebuilt = system
        .rebuild_through_admin(&projectors.url, "workflow_read_model")
        .await;
    assert_eq!(rebuilt["status"], "swapped", "{rebuilt}");
    let rebuilt = read_model(&system.pool).await;
    assert_eq!(live.len(), rebuilt.len());
    for (live, rebuilt) in live.iter().zip(&rebuilt) {
        assert!(
            live == rebuilt,
            "a table differs between the live and the rebuilt read model"
        );
    }
    projectors.stop().await;
}

async fn submissions_in_chunks(
    system: &TestSystem,
    command_url: &str,
    server_url: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..200).collect::<Vec<_>>().chunks(20) {
        let batch = join_all(chunk.iter().map(|&index| {
            let body = workflow(index, server_url);
            async move { submit_retrying(system, command_url, &body).await }
        }))
        .await;
        ids.extend(batch);
    }
    ids
}

/// Submits as a careful client does on a loaded machine: with an `Idempotency-Key`, and
/// again with the same key while the answer is 503 (stored, not yet confirmed on the log).
async fn submit_retrying(system: &TestSystem, command_url: &str, body: &Value) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    for _ in 0..30 {
        let reply = system
            .send(
                system
                    .http
                    .post(format!("{command_url}/v1/workflows"))
                    .header("idempotency-key", &key)
                    .json(body),
            )
            .await;
        match reply.status {
            201 => return reply.body["workflow_id"].as_str().unwrap().to_owned(),
            503 => tokio::time::sleep(Duration::from_secs(1)).await,
            other => panic!("submission answered {other}: {}", reply.body),
        }
    }
    panic!("submission not confirmed after 30 tries");
}

async fn submit_as(system: &TestSystem, command_url: &str, tenant: &str, body: &Value) -> String {
    let reply = system
        .send(
            system
                .http
                .post(format!("{command_url}/v1/workflows"))
                .header("x-tenant-id", tenant)
                .json(body),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

async fn succeeded_of(pool: &PgPool, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM event_store WHERE tenant = $1 AND event_type = 'WorkflowSucceeded'",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenants_backlog_does_not_starve_another_tenant() {
    let system = TestSystem::new(3).await;
    let server = StepServer::start().await;
    let commands = system.command_service().await;
    let one_step = |tenant: &str, i: usize| {
        json!({"name": format!("{tenant}-{i}"), "steps": [
            {"id": "call", "kind": "http", "depends_on": [],
             "config": {"url": format!("{}/slow/100", server.url)}}]})
    };
    // A's whole backlog is on the log before the executor starts, then B's five.
    for chunk in (0..500).collect::<Vec<_>>().chunks(25) {
        join_all(chunk.iter().map(|&i| {
            let body = one_step("tenant-a", i);
            let (system, url) = (&system, &commands.url);
            async move { submit_as(system, url, "tenant-a", &body).await }
        }))
        .await;
    }
    for i in 0..5 {
        submit_as(&system, &commands.url, "tenant-b", &one_step("tenant-b", i)).await;
    }
    let executor = system
        .executor_with(|config| {
            config.max_concurrent_attempts = 8;
            config.max_attempts_per_tenant = 6;
        })
        .await;
    let b_done = eventually(Duration::from_secs(120), || async {
        (succeeded_of(&system.pool, "tenant-b").await == 5).then_some(())
    })
    .await;
    assert!(b_done.is_some(), "tenant B's runs did not finish");
    let a_done = succeeded_of(&system.pool, "tenant-a").await;
    assert!(
        a_done < 400,
        "tenant B finished only after {a_done} of tenant A's 500 runs: A's backlog held B up"
    );
    let a_all = eventually(Duration::from_secs(240), || async {
        (succeeded_of(&system.pool, "tenant-a").await == 500).then_some(())
    })
    .await;
    assert!(a_all.is_some(), "tenant A's backlog did not drain");
    executor.stop().await;
    commands.stop().await;
}
