//! Rebuilding projections without downtime: queries keep answering during a rebuild and
//! across the swap; an interrupted rebuild resumes where it stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use system_tests::{TestSystem, bin_dir, eventually};

/// One read of the zero-downtime test: which run it read, when.
struct Read {
    run: usize,
    started: chrono::DateTime<chrono::Utc>,
    ended: chrono::DateTime<chrono::Utc>,
}

/// The reads went on right up to the swap and right after it, without a gap a caller
/// would notice, and after it they read runs by id that nobody had read since the swap:
/// the cache (emptied by the swap) could not answer those, the new tables did.
async fn assert_reads_overlapped_the_swap(
    system: &TestSystem,
    rebuild: &str,
    timeline: &Mutex<Vec<Read>>,
) {
    let swapped_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT swapped_at FROM projection_rebuilds WHERE id = $1::uuid")
            .bind(rebuild)
            .fetch_one(&system.pool)
            .await
            .unwrap();
    // Reads started within 2 s after the swap, to be sure of those that follow it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = timeline.lock().unwrap();
    let near = chrono::Duration::seconds(2);
    let before = reads
        .iter()
        .filter(|r| r.ended <= swapped_at && r.ended > swapped_at - near)
        .count();
    let after: Vec<&Read> = reads
        .iter()
        .filter(|r| r.started >= swapped_at && r.started < swapped_at + near)
        .collect();
    let across = reads
        .iter()
        .filter(|r| r.started <= swapped_at && r.ended >= swapped_at)
        .count();
    assert!(
        before > 0 && !after.is_empty(),
        "reads within 2 s before ({before}) and after ({}) the swap at {swapped_at}; {across} in flight across it",
        after.len()
    );
    let read_since_the_swap = |run: usize, until: chrono::DateTime<chrono::Utc>| {
        reads
            .iter()
            .any(|r| r.run == run && r.started >= swapped_at && r.ended < until)
    };
    let first_reads = after
        .iter()
        .filter(|r| !read_since_the_swap(r.run, r.started))
        .count();
    assert!(
        first_reads > 0,
        "runs read by id for the first time since the swap"
    );
}

async fn submit_many(system: &TestSystem, url: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in 0..count.div_ceil(10) {
        let batch = join_all((0..10.min(count - chunk * 10)).map(|_| async {
            let reply = system
                .post(
                    &format!("{url}/v1/workflows"),
                    &json!({"name": "rebuilt", "steps": [{"id": "a", "kind": "llm", "config": {"model": "m1"}}]}),
                )
                .await;
            assert_eq!(reply.status, 201);
            reply.body["workflow_id"].as_str().unwrap().to_owned()
        }))
        .await;
        ids.extend(batch);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_keep_answering_during_a_rebuild_and_across_the_swap() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let ids = submit_many(&system, &commands.url, 150).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 150)
        .await;

    // Readers hammer the query service for the whole rebuild: a page of the list (never
    // cached) and one run by id, each run in turn, so that most reads by id are the first
    // of that run since the cache was emptied, and go to the tables.
    let reading = Arc::new(AtomicBool::new(true));
    let (reads, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let next_run = Arc::new(AtomicU64::new(0));
    let timeline: Arc<Mutex<Vec<Read>>> = Arc::default();
    let ids = Arc::new(ids);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (reading, reads, failures, next_run, timeline, ids) = (
                Arc::clone(&reading),
                Arc::clone(&reads),
                Arc::clone(&failures),
                Arc::clone(&next_run),
                Arc::clone(&timeline),
                Arc::clone(&ids),
            );
            let (http, base) = (system.http.clone(), queries.url.clone());
            tokio::spawn(async move {
                while reading.load(Ordering::Relaxed) {
                    let run = next_run.fetch_add(1, Ordering::Relaxed) as usize % ids.len();
                    let probe = &ids[run];
                    let started = chrono::Utc::now();
                    let list = http
                        .get(format!("{base}/v1/workflows?limit=100"))
                        .send()
                        .await;
                    let detail = http
                        .get(format!("{base}/v1/workflows/{probe}"))
                        .send()
                        .await;
                    let ok = match (list, detail) {
                        (Ok(list), Ok(detail))
                            if list.status() == 200 && detail.status() == 200 =>
                        {
                            let list: serde_json::Value = list.json().await.unwrap();
                            let detail: serde_json::Value = detail.json().await.unwrap();
                            list["items"].as_array().map(Vec::len) == Some(100)
                                && detail["version"] == 1
                        }
                        _ => false,
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    timeline.lock().unwrap().push(Read {
                        run,
                        started,
                        ended: chrono::Utc::now(),
                    });
                }
            })
        })
        .collect();

    let admin = |path: &str| format!("{}{path}", projectors.url);
    let refused = system
        .send(
            reqwest::Client::new()
                .post(admin("/admin/rebuilds"))
                .json(&json!({"projection": "workflow_read_model"})),
        )
        .await;
    assert_eq!(refused.status, 401);
    let bad = system
        .send(
            system
                .http
                .post(admin("/admin/rebuilds"))
                .bearer_auth(system_tests::admin_token())
                .json(&json!({"projection": "nope"})),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["errors"][0]["field"], "projection");
    let id = system
        .start_rebuild(
            &projectors.url,
            json!({"projection": "workflow_read_model"}),
        )
        .await;
    let reads_at_start = reads.load(Ordering::Relaxed);
    // Writes keep flowing while it rebuilds.
    submit_many(&system, &commands.url, 20).await;

    let swapped = system
        .rebuild_reaches(&projectors.url, &id, "swapped")
        .await;
    assert!(
        reads.load(Ordering::Relaxed) > reads_at_start,
        "readers read while it rebuilt"
    );
    assert_reads_overlapped_the_swap(&system, &id, &timeline).await;
    // The 20 written meanwhile may land before or after the swap (a rebuild read from the
    // event store can be that quick); the counts below show none was lost either way.
    assert!(swapped["progress"]["applied"].as_u64().unwrap() >= 150);

    // After the swap the live projection goes on, into the new tables.
    submit_many(&system, &commands.url, 10).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 180)
        .await;
    system
        .wait_for_count("SELECT count(*) FROM workflow_events", 180)
        .await;
    let enough_reads = eventually(Duration::from_secs(30), || async {
        (reads.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    reading.store(false, Ordering::Relaxed);
    assert!(enough_reads.is_some(), "readers ran throughout");
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "every read during the rebuild answered correctly"
    );

    // The replaced tables are dropped after the grace period.
    system
        .wait_for_count(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'retired\\_%'",
            0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_rebuild_resumes_where_it_stopped() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let _projectors = system.projectors().await;
    submit_many(&system, &commands.url, 600).await;
    system
        .wait_for_count("SELECT count(*) FROM graph_nodes WHERE kind = 'run'", 600)
        .await;
    let graph_before: serde_json::Value = sqlx::query_scalar(
        "SELECT jsonb_agg(t ORDER BY t.from_xid, t.predicate, t.to_xid) FROM graph_edges t",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();

    // The first run reads the history from the broker, the resumed one from the event
    // store: either source continues from the other's checkpoints.
    let cli = |history: &str| {
        let mut command = std::process::Command::new(bin_dir().join("projectors"));
        command
            .args(["rebuild", "workflow_graph", "--from-beginning"])
            .envs(system.process_env())
            .env("REBUILD_BATCH_SIZE", "1")
            .env("REBUILD_HISTORY", history)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        command
    };
    let mut first = cli("log").spawn().unwrap();
    let started = eventually(Duration::from_secs(60), || async {
        let running: Option<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM projection_rebuilds WHERE status = 'running'")
                .fetch_optional(&system.pool)
                .await
                .unwrap();
        running
    })
    .await;
    assert!(started.is_some(), "the rebuild started");
    // One record per batch: 600 records take several seconds; kill it once it is going.
    let rebuilt_so_far = || async {
        system
            .count("SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_checkpoints WHERE projection LIKE '%@rebuild-%'")
            .await
    };
    let going = eventually(Duration::from_secs(60), || async {
        (rebuilt_so_far().await >= 20).then_some(())
    })
    .await;
    assert!(going.is_some(), "the rebuild applies records");
    first.kill().unwrap(); // kill -9
    first.wait().unwrap();
    assert_eq!(
        system
            .count("SELECT count(*) FROM projection_rebuilds WHERE status = 'running'")
            .await,
        1
    );

    let read_before_the_kill = rebuilt_so_far().await;
    assert!(
        (1..600).contains(&read_before_the_kill),
        "killed mid-rebuild, after {read_before_the_kill} records"
    );
    let second = cli("event-store").output().unwrap();
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{said}");
    assert!(said.contains("resuming rebuild"), "{said}");
    assert!(said.contains("swapped in"), "{said}");
    let graph_after: serde_json::Value = sqlx::query_scalar(
        "SELECT jsonb_agg(t ORDER BY t.from_xid, t.predicate, t.to_xid) FROM graph_edges t",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    assert_eq!(
        graph_after, graph_before,
        "the rebuilt graph equals the one it replaced"
    );

    let unknown = std::process::Command::new(bin_dir().join("projectors"))
        .args(["rebuild", "nonsense"])
        .envs(system.process_env())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("projection: unknown 'nonsense'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_a_point_in_time_starts_at_the_offsets_of_that_time() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let _projectors = system.projectors().await;
    submit_many(&system, &commands.url, 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    submit_many(&system, &commands.url, 3).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 8)
        .await;

    let rebuild = |from: String| {
        std::process::Command::new(bin_dir().join("projectors"))
            .args(["rebuild", "workflow_read_model", "--from", &from])
            .envs(system.process_env())
            .output()
            .unwrap()
    };
    let future = rebuild("2999-01-01T00:00:00Z".into());
    assert!(!future.status.success());
    assert!(String::from_utf8_lossy(&future.stderr).contains("in the future"));
    let garbled = rebuild("yesterday".into());
    assert!(String::from_utf8_lossy(&garbled.stderr).contains("--from: not an RFC 3339 time"));

    let from_cut = rebuild(cut.to_rfc3339());
    assert!(
        from_cut.status.success(),
        "{}",
        String::from_utf8_lossy(&from_cut.stdout)
    );
    // offsets_for_times put the start after the first five submissions: only the last
    // three workflows are in the rebuilt read model.
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 3);
}

/// A rebuild reads the history from the event store's copy of what was published, and from
/// the log only the records the store does not hold; the result is the same as the live
/// projection read from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_reads_history_from_the_event_store_and_the_rest_from_the_log() {
    use flowline_domain::{EventEnvelope, EventMetadata, SubmitWorkflow, WorkflowEvent};
    use flowline_event_log::{LogProducer, OutgoingRecord, partition_for};

    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    submit_many(&system, &commands.url, 40).await;

    // Two records the store does not hold: an event another producer wrote straight to the
    // topic, and a second copy of a stored event (what a relay that lost its lock while
    // publishing can leave behind).
    let stream = uuid::Uuid::now_v7();
    let submitted = serde_json::from_value::<SubmitWorkflow>(
        json!({"name": "foreign", "steps": [{"id": "a", "kind": "llm"}]}),
    )
    .unwrap()
    .validate()
    .unwrap();
    let foreign = EventEnvelope {
        metadata: EventMetadata {
            event_id: uuid::Uuid::now_v7(),
            tenant: "default".into(),
            stream_id: stream,
            stream_version: 1,
            occurred_at: chrono::Utc::now(),
            command_id: uuid::Uuid::now_v7(),
            correlation_id: stream,
            causation_id: stream,
            traceparent: None,
            tracestate: None,
        },
        event: WorkflowEvent::Submitted(submitted),
    };
    let (stored_stream, stored_payload): (uuid::Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT stream_id, payload FROM event_store WHERE stream_version = 1 ORDER BY position LIMIT 1",
    )
    .fetch_one(&system.pool)
    .await
    .unwrap();
    let record = |stream: uuid::Uuid, payload: Vec<u8>| {
        let key = stream.to_string().into_bytes();
        OutgoingRecord {
            partition: partition_for(&key, 2),
            key,
            payload,
            headers: vec![],
        }
    };
    LogProducer::new(&system.kafka)
        .unwrap()
        .publish(&[
            record(
                stream,
                flowline_schemas::EventCodec::default()
                    .encode(&foreign)
                    .unwrap()
                    .payload,
            ),
            record(stored_stream, stored_payload),
        ])
        .await
        .unwrap();
    // Stored events after the gaps.
    submit_many(&system, &commands.url, 10).await;
    system
        .wait_for_count("SELECT count(*) FROM workflow_events", 51)
        .await;
    let read_model = || async {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT jsonb_build_array( \
               (SELECT jsonb_agg(w ORDER BY w.id) FROM workflows w), \
               (SELECT jsonb_agg(s ORDER BY s.workflow_id, s.step_id) FROM workflow_steps s), \
               (SELECT jsonb_agg(e ORDER BY e.workflow_id, e.version) FROM workflow_events e))",
        )
        .fetch_one(&system.pool)
        .await
        .unwrap()
    };
    let live = read_model().await;

    let swapped = system
        .rebuild_through_admin(&projectors.url, "workflow_read_model")
        .await;
    assert_eq!(
        swapped["progress"]["from_event_store"], 50,
        "every stored event came from the store: {swapped}"
    );
    assert_eq!(
        swapped["progress"]["from_log"], 2,
        "only the two records the store lacks came from the log: {swapped}"
    );
    assert_eq!(
        read_model().await,
        live,
        "the rebuilt read model equals the live one"
    );
    assert!(live.to_string().contains("foreign"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_rebuild_says_why_and_resumes_when_started_again() {
    let before_everything = chrono::Utc::now() - chrono::Duration::seconds(1);
    let system = &TestSystem::new(2).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    submit_many(system, &commands.url, 20).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 20)
        .await;

    // The history a rebuild reads goes away for a while (a botched maintenance, say).
    let history_away = |away: bool| async move {
        let (from, to) = if away {
            ("event_store", "event_store_away")
        } else {
            ("event_store_away", "event_store")
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {from} RENAME TO {to}"
        )))
        .execute(&system.pool)
        .await
        .unwrap();
    };
    let url = projectors.url.as_str();
    let start = |from: Option<String>| {
        let mut body = json!({"projection": "workflow_read_model"});
        if let Some(from) = from {
            body["from"] = json!(from);
        }
        system.start_rebuild(url, body)
    };
    let reaches = |id: String, status: &'static str| async move {
        system.rebuild_reaches(url, &id, status).await
    };

    history_away(true).await;
    let id = start(None).await;
    let failed = reaches(id.clone(), "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("event_store"),
        "{failed}"
    );
    // Back in place, the same rebuild resumes when started again, and swaps in.
    history_away(false).await;
    assert_eq!(start(None).await, id, "resumed, not started anew");
    let swapped = reaches(id.clone(), "swapped").await;
    assert_eq!(swapped["error"], serde_json::Value::Null);
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 20);

    // A failed rebuild does not stand in the way of one from another point: it is
    // abandoned, its tables dropped.
    history_away(true).await;
    let failing = start(None).await;
    reaches(failing.clone(), "failed").await;
    history_away(false).await;
    let from = before_everything.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let replacing = start(Some(from)).await;
    assert_ne!(replacing, failing);
    reaches(failing.clone(), "abandoned").await;
    let shadow_left: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(format!("rebuild_{}", failing.replace('-', "")))
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert!(!shadow_left, "the abandoned rebuild's tables are dropped");
    reaches(replacing, "swapped").await;
    assert_eq!(
        system.count("SELECT count(*) FROM workflows").await,
        20,
        "the rebuilt read model holds every run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_reader_delays_the_swap_without_stalling_every_read_behind_it() {
    use sqlx::Connection;
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let ids = submit_many(&system, &commands.url, 60).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 60)
        .await;
    // A long reader of the live tables (a report, an analyst's session): its snapshot
    // holds a lock the swap's DDL must wait for.
    let mut reader = sqlx::PgConnection::connect(&system.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut reader).await.unwrap();
    sqlx::query("SELECT count(*) FROM workflows")
        .execute(&mut reader)
        .await
        .unwrap();
    let id = system
        .start_rebuild(
            &projectors.url,
            json!({"projection": "workflow_read_model"}),
        )
        .await;
    let swap_waited = eventually(Duration::from_secs(60), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%SET SCHEMA%'",
        )
        .fetch_one(&system.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    assert!(swap_waited.is_some(), "the swap tried to take the tables");

    // Meanwhile runs nobody read yet (nothing cached) are answered, each well within a
    // bound: behind a DDL queued on the reader they would wait as long as the reader.
    let bounded = reqwest::Client::builder()
        .default_headers(system_tests::auth::admin_headers())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for id in ids.iter().take(20) {
        let reply = bounded
            .get(format!("{}/v1/workflows/{id}", queries.url))
            .send()
            .await
            .expect("a read answered within 5 s while the swap waits for the reader");
        assert_eq!(reply.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let meanwhile = system
        .send(
            system
                .http
                .get(format!("{}/admin/rebuilds/{id}", projectors.url))
                .bearer_auth(system_tests::admin_token()),
        )
        .await;
    assert_eq!(
        meanwhile.body["status"], "running",
        "no swap while the reader holds its snapshot"
    );
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    system
        .rebuild_reaches(&projectors.url, &id, "swapped")
        .await;
    assert_eq!(system.count("SELECT count(*) FROM workflows").await, 60);
}
