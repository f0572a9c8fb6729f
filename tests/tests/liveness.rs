//! Liveness and readiness: every service answers `/livez` while it runs, and `/readyz`
//! only while PostgreSQL, the broker (and Redis where used) answer and its own background
//! tasks run; it names what failed, and recovers with the dependency.

use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;
use system_tests::{OwnedBroker, TestSystem, eventually, server_url};

/// Waits until `/readyz` of every service answers `status`; returns the bodies.
async fn all_reach(system: &TestSystem, services: &[&str], status: u16) -> Vec<Value> {
    let mut bodies = Vec::new();
    for url in services {
        let body = eventually(Duration::from_secs(45), || async {
            let reply = system.get(&format!("{url}/readyz")).await;
            (reply.status == status).then_some(reply.body)
        })
        .await;
        let last = system.get(&format!("{url}/readyz")).await;
        bodies.push(body.unwrap_or_else(|| {
            panic!(
                "{url}/readyz did not answer {status}: {} {}",
                last.status, last.body
            )
        }));
        let live = system.get(&format!("{url}/livez")).await;
        assert_eq!(
            live.status, 200,
            "{url}/livez answers while the process runs"
        );
    }
    bodies
}

/// Lets no new connection into the test's database and ends the ones open (as a
/// PostgreSQL outage does, for this database only), or lets them in again.
async fn database_reachable(system: &TestSystem, reachable: bool) {
    let name = system.database_url.rsplit('/').next().unwrap().to_owned();
    let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {reachable}"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_broker_and_postgresql_and_names_what_failed() {
    let mut broker = OwnedBroker::start().await;
    let system = TestSystem::with_brokers(broker.address.clone(), 1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let services = [
        commands.url.as_str(),
        queries.url.as_str(),
        projectors.url.as_str(),
    ];
    let ready = all_reach(&system, &services, 200).await;
    for body in &ready {
        assert_eq!(body["dependencies"]["postgres"], "ok", "{body}");
        assert_eq!(body["dependencies"]["kafka"], "ok", "{body}");
    }
    assert_eq!(ready[0]["dependencies"]["redis"], "ok");
    assert_eq!(ready[0]["tasks"]["outbox relay"]["state"], "running");
    assert_eq!(ready[1]["tasks"]["change feed"]["state"], "running");
    assert_eq!(
        ready[2]["tasks"]["projection workflow_read_model.v1"]["state"],
        "running"
    );

    broker.kill();
    for body in all_reach(&system, &services, 503).await {
        assert_ne!(body["dependencies"]["kafka"], "ok", "{body}");
        assert_eq!(body["dependencies"]["postgres"], "ok", "{body}");
    }
    broker.restart().await;
    all_reach(&system, &services, 200).await;

    database_reachable(&system, false).await;
    let down = all_reach(&system, &services, 503).await;
    database_reachable(&system, true).await;
    for body in down {
        assert_ne!(body["dependencies"]["postgres"], "ok", "{body}");
    }
    all_reach(&system, &services, 200).await;
    // Still working once back: a command is accepted and projected.
    system
        .submit(
            &commands.url,
            &serde_json::json!({"name": "after", "steps": [{"id": "a", "kind": "llm"}]}),
        )
        .await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_executor_is_ready_only_with_postgresql_and_its_feed() {
    let system = TestSystem::new(1).await;
    let executor = system.executor().await;
    let ready = all_reach(&system, &[executor.url.as_str()], 200).await;
    assert_eq!(ready[0]["tasks"]["feed"]["state"], "running");
    database_reachable(&system, false).await;
    let down = all_reach(&system, &[executor.url.as_str()], 503).await;
    database_reachable(&system, true).await;
    assert_ne!(down[0]["dependencies"]["postgres"], "ok", "{}", down[0]);
    all_reach(&system, &[executor.url.as_str()], 200).await;
}
