//! Projectors killed with `kill -9` mid-batch, again and again, under load, end with the
//! same read model as a fresh full rebuild, row by row; two projector processes share the
//! partitions and one takes over when the other dies.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::PgPool;
use system_tests::{ServiceProcess, TestSystem, eventually};

/// Every read-model table as JSON rows in a stable order.
async fn read_model(pool: &PgPool) -> Vec<Value> {
    let mut tables = Vec::new();
    for sql in [
        "SELECT coalesce(jsonb_agg(t ORDER BY t.id), '[]') FROM workflows t",
        "SELECT coalesce(jsonb_agg(t ORDER BY t.workflow_id, t.step_id), '[]') FROM workflow_steps t",
        "SELECT coalesce(jsonb_agg(t ORDER BY t.workflow_id, t.version), '[]') FROM workflow_events t",
        "SELECT coalesce(jsonb_agg(t ORDER BY t.xid), '[]') FROM graph_nodes t",
        "SELECT coalesce(jsonb_agg(t ORDER BY t.from_xid, t.predicate, t.to_xid), '[]') FROM graph_edges t",
    ] {
        tables.push(sqlx::query_scalar(sql).fetch_one(pool).await.unwrap());
    }
    tables
}

/// A projectors process whose database sessions are named `name`, so the test can find
/// them in `pg_stat_activity`.
async fn projector_named(system: &TestSystem, name: &str) -> ServiceProcess {
    let url = &system.database_url;
    let separator = if url.contains('?') { '&' } else { '?' };
    let named = format!("{url}{separator}application_name={name}");
    system
        .projector_process_with(vec![("DATABASE_URL".into(), named)])
        .await
}

/// Events projected into the read model, and runs whose graph reflects their last event.
async fn events_in(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT least((SELECT count(*) FROM workflow_events), \
                      (SELECT coalesce(sum(version), 0)::bigint FROM graph_nodes WHERE kind = 'run'))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_for_events(pool: &PgPool, expected: i64) {
    let done = eventually(Duration::from_secs(60), || async {
        (events_in(pool).await == expected).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "expected {expected} projected events, got {}",
        events_in(pool).await
    );
}

/// Submits `count` workflows and signals each once, from `clients` concurrent clients.
async fn load(system: &TestSystem, url: &str, count: usize, clients: usize) {
    let per_client = count / clients;
    join_all((0..clients).map(|_| async {
        for _ in 0..per_client {
            let reply = system
                .post(&format!("{url}/v1/workflows"), &json!({"name": "crash", "steps": [{"id": "a", "kind": "llm"}, {"id": "b", "kind": "http", "depends_on": ["a"]}]}))
                .await;
            assert_eq!(reply.status, 201);
            let id = reply.body["workflow_id"].as_str().unwrap();
            let signal = system
                .post(&format!("{url}/v1/workflows/{id}/signals/go"), &json!({"n": 1}))
                .await;
            assert_eq!(signal.status, 200);
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projectors_killed_mid_batch_end_equal_to_a_fresh_rebuild() {
    // A broker of its own: 1 200 commands within the publish timeout, which the suite's
    // shared tansu (slower the more records and headers it holds) no longer gives.
    let broker = system_tests::OwnedBroker::start().await;
    let system = TestSystem::with_brokers(broker.address.clone(), 3).await;
    let commands = system.command_service().await;
    // Named connections, so the killer can see the projector's transactions.
    let mut projector = projector_named(&system, "projector-under-test").await;
    let loaded = load(&system, &commands.url, 600, 8);
    let open_batch = || async {
        // The full transaction id of a projector transaction that holds checkpoint rows.
        sqlx::query_scalar::<_, i64>(
            "SELECT ((pg_current_xact_id()::text::bigint >> 32) << 32) + a.backend_xid::text::bigint \
             FROM pg_stat_activity a \
             WHERE a.application_name = 'projector-under-test' AND a.backend_xid IS NOT NULL \
               AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid \
                           AND l.relation = 'projection_checkpoints'::regclass) \
             LIMIT 1",
        )
        .fetch_optional(&system.pool)
        .await
        .unwrap()
    };
    let killer = async {
        // Kills that landed inside an open batch: the batch transaction (it holds the
        // checkpoint rows) seen just before the kill ended aborted, not committed.
        let mut inside_a_batch = 0;
        let mut kills = 0;
        while kills < 5 || (inside_a_batch == 0 && kills < 15) {
            kills += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Aim for a batch in flight: batches take milliseconds, so the kill follows
            // the sighting at once, and comes anyway after two seconds without one.
            let open_batch = eventually(Duration::from_secs(2), open_batch).await;
            projector.kill();
            if let Some(xid) = open_batch {
                // Its server process ends it once it notices the client is gone.
                let ended = eventually(Duration::from_secs(10), || async {
                    let status: Option<String> =
                        sqlx::query_scalar("SELECT pg_xact_status($1::text::xid8)")
                            .bind(xid.to_string())
                            .fetch_one(&system.pool)
                            .await
                            .unwrap();
                    status.filter(|status| status != "in progress")
                })
                .await;
                if ended.as_deref() == Some("aborted") {
                    inside_a_batch += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            projector.restart().await;
        }
        assert!(
            inside_a_batch > 0,
            "none of {kills} kills landed inside an open batch"
        );
    };
    tokio::join!(loaded, killer);
    wait_for_events(&system.pool, 1_200).await;

    let (fresh_url, fresh_pool) = system.another_database().await;
    let _fresh = system.projectors_into(&fresh_url, "fresh-rebuild").await;
    wait_for_events(&fresh_pool, 1_200).await;
    let survived = read_model(&system.pool).await;
    let rebuilt = read_model(&fresh_pool).await;
    let tables = [
        "workflows",
        "workflow_steps",
        "workflow_events",
        "graph_nodes",
        "graph_edges",
    ];
    assert_eq!(survived.len(), tables.len());
    for (table, (a, b)) in tables.iter().zip(survived.iter().zip(&rebuilt)) {
        assert!(a == b, "{table} differs from a fresh rebuild");
    }
    assert_eq!(survived[0].as_array().unwrap().len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projector_processes_share_partitions_and_survive_each_other() {
    let system = TestSystem::new(4).await;
    let commands = system.command_service().await;
    let mut first = system.projector_process().await;
    let _second = system.projector_process().await;
    load(&system, &commands.url, 200, 4).await;
    wait_for_events(&system.pool, 400).await;
    // Both processes hold partitions before the kill.
    system
        .wait_for_count(
            "SELECT count(DISTINCT member) FROM projection_leases \
             WHERE projection = 'workflow_read_model.v1' AND expires_at > now()",
            2,
        )
        .await;
    first.kill();
    load(&system, &commands.url, 200, 4).await;
    wait_for_events(&system.pool, 800).await;
    let partitions_written: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT log_partition) FROM workflow_events")
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert_eq!(partitions_written, 4);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT event_id FROM workflow_events GROUP BY event_id HAVING count(*) > 1) d",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    // Every record applied exactly once, none set aside: the checkpoints of both
    // projections stand at the head of the log, and no dead letter was needed.
    let on_log = system.records_on_log().await;
    for sql in [
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_checkpoints \
         WHERE projection = 'workflow_read_model.v1'",
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_checkpoints \
         WHERE projection = 'workflow_graph.v1'",
    ] {
        system.wait_for_count(sql, on_log).await;
    }
    assert_eq!(system.count("SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_that_are_not_the_records_are_retried_not_dead_lettered() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let _projector = projector_named(&system, "projector-cut-off").await;
    let loaded = load(&system, &commands.url, 200, 4);
    // PostgreSQL ends the projector's sessions (as a failover, an operator or a restart
    // would): whatever batch was in flight fails, through no fault of its records.
    let cutter = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'projector-cut-off'",
            )
            .execute(&system.pool)
            .await
            .unwrap();
        }
    };
    tokio::join!(loaded, cutter);
    wait_for_events(&system.pool, 400).await;
    assert_eq!(system.count("SELECT count(*) FROM dead_letters").await, 0);

    // A table away for a while (a botched migration): every record would fail alike, so
    // none is the record's fault. The projection waits, then applies them all.
    sqlx::query("ALTER TABLE workflow_steps RENAME TO workflow_steps_away")
        .execute(&system.pool)
        .await
        .unwrap();
    load(&system, &commands.url, 10, 2).await;
    // Long enough for several failed tries of each batch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 200);
    sqlx::query("ALTER TABLE workflow_steps_away RENAME TO workflow_steps")
        .execute(&system.pool)
        .await
        .unwrap();
    wait_for_events(&system.pool, 420).await;
    assert_eq!(system.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 210);
}
