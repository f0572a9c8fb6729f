//! Runs as the executor drives them, read back: step statuses, attempts, errors, outputs
//! (one kept by reference in the payload table), run start, end and failure, over REST and
//! GraphQL; the status filter with the new statuses; the graph view's statuses; and a
//! rebuild of the read model that reproduces the same rows.
//!
//! The executor's events are appended straight to the event store (the command service's
//! relay publishes them), after a submission through the command service.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowline_domain::{
    EventEnvelope, EventMetadata, StepError, StepFailed, StepRetried, StepSkipped, StepStarted,
    StepSucceeded, StepTimedOut, WorkflowEvent, WorkflowFailed, WorkflowPaused, WorkflowResumed,
    WorkflowStarted, WorkflowSucceeded,
};
use flowline_event_store::EventStore;
use serde_json::{Value, json};
use system_tests::js_clients::JsSubscription;
use system_tests::{Reply, Running, TestSystem, eventually};
use uuid::Uuid;

const TENANT: &str = "acme";
const WITHIN: Duration = Duration::from_secs(60);

/// A run whose executor events the test writes.
struct Run {
    id: Uuid,
    version: u64,
}

impl Run {
    /// Appends `event` as the stream's next version; when it happened.
    async fn append(&mut self, store: &EventStore, event: WorkflowEvent) -> DateTime<Utc> {
        self.version += 1;
        let command_id = Uuid::now_v7();
        let occurred_at = Utc::now();
        store
            .append(
                &EventEnvelope {
                    metadata: EventMetadata {
                        event_id: Uuid::now_v7(),
                        tenant: TENANT.into(),
                        stream_id: self.id,
                        stream_version: self.version,
                        occurred_at,
                        command_id,
                        correlation_id: command_id,
                        causation_id: command_id,
                        traceparent: None,
                        tracestate: None,
                    },
                    event,
                },
                None,
            )
            .await
            .expect("appended");
        occurred_at
    }
}

async fn submit(system: &TestSystem, commands: &Running, body: Value) -> Run {
    let reply = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows", commands.url))
                .header("X-Tenant-Id", TENANT)
                .json(&body),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    Run {
        id: reply.body["workflow_id"].as_str().unwrap().parse().unwrap(),
        version: 1,
    }
}

async fn get(system: &TestSystem, url: String) -> Reply {
    system
        .send(system.http.get(url).header("X-Tenant-Id", TENANT))
        .await
}

async fn graphql(system: &TestSystem, queries: &Running, query: &str) -> Value {
    let reply = system
        .send(
            system
                .http
                .post(format!("{}/graphql", queries.url))
                .header("X-Tenant-Id", TENANT)
                .json(&json!({ "query": query })),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.body["errors"].is_null(), "{}", reply.body["errors"]);
    reply.body["data"].clone()
}

/// The run over REST once the read model has projected `run.version`.
async fn projected(system: &TestSystem, queries: &Running, run: &Run) -> Value {
    let url = format!("{}/v1/workflows/{}", queries.url, run.id);
    eventually(WITHIN, || async {
        let reply = get(system, url.clone()).await;
        (reply.status == 200 && reply.body["version"] == run.version).then_some(reply.body)
    })
    .await
    .unwrap_or_else(|| panic!("run {} never reached version {}", run.id, run.version))
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

/// Times as stored (PostgreSQL keeps microseconds).
fn micros(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(time.timestamp_micros()).unwrap()
}

async fn listed(system: &TestSystem, queries: &Running, status: &str) -> HashSet<String> {
    let reply = get(
        system,
        format!("{}/v1/workflows?status={status}&limit=100", queries.url),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every row of a read model table, in key order, as one JSON array.
async fn rows(system: &TestSystem, table: &str, order: &str) -> Value {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(jsonb_agg(t ORDER BY {order}), '[]') FROM {table} t"
    )))
    .fetch_one(&system.pool)
    .await
    .unwrap()
}

async fn read_model_rows(system: &TestSystem) -> Vec<Value> {
    vec![
        rows(system, "workflows", "t.id").await,
        rows(system, "workflow_steps", "t.workflow_id, t.position").await,
        rows(
            system,
            "workflow_step_attempts",
            "t.workflow_id, t.step_id, t.attempt",
        )
        .await,
    ]
}

/// `workflowUpdated` items until one at `version` (several events projected in one batch
/// arrive as one update).
async fn updated_to(subscriber: &mut JsSubscription, version: u64) -> Value {
    loop {
        let update = subscriber.next_data().await["workflowUpdated"].clone();
        let at = update["version"].as_u64().expect("a version");
        assert!(at <= version, "past version {version}: {update}");
        if at == version {
            return update;
        }
    }
}

fn http_error(message: &str) -> StepError {
    StepError {
        kind: "http_status".into(),
        message: message.into(),
    }
}

fn started(step_id: &str, attempt: u32, attempt_id: Uuid, at: DateTime<Utc>) -> WorkflowEvent {
    WorkflowEvent::StepStarted(StepStarted {
        step_id: step_id.into(),
        attempt,
        attempt_id,
        input: json!({"url": "http://example.test", "attempt": attempt}),
        started_at: at,
        deadline: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_attempts_outputs_and_run_outcomes_read_back_and_rebuild_the_same() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let store = EventStore::new(system.pool.clone());

    // A run that succeeds: `fetch` fails once, then succeeds; `summarize`'s output is too
    // large for its event and kept in the payload table.
    let mut good = submit(
        &system,
        &commands,
        json!({"name": "research", "steps": [
            {"id": "fetch", "kind": "http", "config": {"url": "http://example.test"}},
            {"id": "summarize", "kind": "llm", "depends_on": ["fetch"], "config": {"model": "gpt-x"}}
        ]}),
    )
    .await;
    let run_started = Utc::now();
    good.append(
        &store,
        WorkflowEvent::Started(WorkflowStarted {
            started_at: run_started,
            deadline: None,
        }),
    )
    .await;
    let (first, second, third) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let first_started = Utc::now();
    good.append(&store, started("fetch", 1, first, first_started))
        .await;
    let retry_at = Utc::now() + chrono::Duration::seconds(30);
    let first_failed = good
        .append(
            &store,
            WorkflowEvent::StepFailed(StepFailed {
                step_id: "fetch".into(),
                attempt: 1,
                attempt_id: first,
                error: http_error("503 Service Unavailable"),
                retryable: true,
                next_attempt_at: Some(retry_at),
                calls: vec![],
            }),
        )
        .await;

    // Retrying: the run runs, the step waits for its next attempt.
    let run = projected(&system, &queries, &good).await;
    assert_eq!(run["status"], "running");
    assert_eq!(time(&run["started_at"]), micros(run_started));
    assert!(run.get("finished_at").is_none(), "{run}");
    let fetch = step(&run, "fetch");
    assert_eq!(fetch["status"], "retrying");
    assert_eq!(fetch["attempt_count"], 1);
    assert_eq!(time(&fetch["next_attempt_at"]), micros(retry_at));
    assert_eq!(
        fetch["error"],
        json!({"kind": "http_status", "message": "503 Service Unavailable"})
    );
    assert_eq!(time(&fetch["started_at"]), micros(first_started));
    assert!(fetch.get("finished_at").is_none(), "{fetch}");
    assert_eq!(step(&run, "summarize")["status"], "pending");
    assert!(
        listed(&system, &queries, "running")
            .await
            .contains(&good.id.to_string())
    );

    good.append(&store, started("fetch", 2, second, Utc::now()))
        .await;
    good.append(
        &store,
        WorkflowEvent::StepSucceeded(StepSucceeded {
            step_id: "fetch".into(),
            attempt: 2,
            attempt_id: second,
            output: json!({"status": 200, "body": "about rust"}),
            output_ref: None,
            duration_ms: 42,
            calls: vec![],
        }),
    )
    .await;
    good.append(&store, started("summarize", 1, third, Utc::now()))
        .await;
    let large = json!({"summary": "x".repeat(100_000)});
    let reference = format!("sha256:{}", "ab".repeat(32));
    // The same reference in another tenant holds another body: reads take the run's.
    for (tenant, body) in [(TENANT, large.clone()), ("other", json!("not yours"))] {
        sqlx::query(
            "INSERT INTO step_payloads (tenant, ref, body, size_bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(tenant)
        .bind(&reference)
        .bind(&body)
        .bind(body.to_string().len() as i32)
        .execute(&system.pool)
        .await
        .unwrap();
    }
    good.append(
        &store,
        WorkflowEvent::StepSucceeded(StepSucceeded {
            step_id: "summarize".into(),
            attempt: 1,
            attempt_id: third,
            output: Value::Null,
            output_ref: Some(reference.clone()),
            duration_ms: 1500,
            calls: vec![],
        }),
    )
    .await;
    let succeeded = good
        .append(&store, WorkflowEvent::Succeeded(WorkflowSucceeded {}))
        .await;

    let run = projected(&system, &queries, &good).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(time(&run["finished_at"]), micros(succeeded));
    assert!(run.get("failure").is_none(), "{run}");
    let fetch = step(&run, "fetch");
    assert_eq!(fetch["status"], "succeeded");
    assert_eq!(fetch["attempt_count"], 2);
    assert_eq!(
        fetch["output"],
        json!({"status": 200, "body": "about rust"})
    );
    assert!(fetch.get("output_ref").is_none());
    assert!(fetch.get("next_attempt_at").is_none(), "{fetch}");
    assert_eq!(time(&fetch["started_at"]), micros(first_started));
    assert!(fetch.get("finished_at").is_some());
    // The last failure stays after a later attempt succeeded (as in the aggregate).
    assert_eq!(fetch["error"]["kind"], "http_status");
    assert!(
        fetch.get("attempts").is_none(),
        "the run read shows counts only"
    );
    let summarize = step(&run, "summarize");
    assert_eq!(summarize["status"], "succeeded");
    assert_eq!(summarize["output_ref"], reference);
    assert!(
        summarize.get("output").is_none(),
        "a referenced output is read from the step read only (bounded run answers)"
    );

    let detail = get(
        &system,
        format!("{}/v1/workflows/{}/steps/fetch", queries.url, good.id),
    )
    .await;
    assert_eq!(detail.status, 200, "{:?}", detail.body);
    let attempts = detail.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["attempt_id"], first.to_string());
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(
        attempts[0]["error"],
        json!({"kind": "http_status", "message": "503 Service Unavailable"})
    );
    assert_eq!(time(&attempts[0]["started_at"]), micros(first_started));
    assert_eq!(time(&attempts[0]["finished_at"]), micros(first_failed));
    assert_eq!(
        attempts[0]["duration_ms"],
        (micros(first_failed) - micros(first_started)).num_milliseconds()
    );
    assert_eq!(
        attempts[0]["input"],
        json!({"url": "http://example.test", "attempt": 1})
    );
    assert_eq!(attempts[1]["status"], "succeeded");
    assert_eq!(attempts[1]["duration_ms"], 42);
    assert!(attempts[1].get("error").is_none());
    let summarize = get(
        &system,
        format!("{}/v1/workflows/{}/steps/summarize", queries.url, good.id),
    )
    .await;
    assert_eq!(summarize.body["output"], large);
    assert_eq!(summarize.body["attempts"][0]["duration_ms"], 1500);

    // A list page leaves referenced outputs out.
    let page = get(
        &system,
        format!("{}/v1/workflows?status=succeeded", queries.url),
    )
    .await;
    let item = &page.body["items"][0];
    assert_eq!(item["id"], good.id.to_string());
    assert_eq!(step(item, "summarize")["output_ref"], reference);
    assert!(step(item, "summarize").get("output").is_none());
    assert_eq!(step(item, "fetch")["output"]["status"], 200);

    let data = graphql(
        &system,
        &queries,
        &format!(
            "{{ workflow(id: \"{}\") {{ status startedAt finishedAt failure {{ reason }} \
               steps {{ id status attemptCount startedAt finishedAt nextAttemptAt skipReason \
                        output outputRef error {{ kind message }} \
                        attempts {{ attempt attemptId status durationMs startedAt finishedAt \
                                    error {{ kind }} }} }} }} }}",
            good.id
        ),
    )
    .await;
    let workflow = &data["workflow"];
    assert_eq!(workflow["status"], "succeeded");
    assert_eq!(time(&workflow["startedAt"]), micros(run_started));
    assert_eq!(time(&workflow["finishedAt"]), micros(succeeded));
    assert!(workflow["failure"].is_null());
    let fetch = &workflow["steps"][0];
    assert_eq!(fetch["status"], "succeeded");
    assert_eq!(fetch["attemptCount"], 2);
    assert_eq!(fetch["error"]["kind"], "http_status");
    assert_eq!(fetch["attempts"][0]["status"], "failed");
    assert_eq!(fetch["attempts"][0]["error"]["kind"], "http_status");
    assert_eq!(fetch["attempts"][0]["attemptId"], first.to_string());
    assert_eq!(fetch["attempts"][1]["durationMs"], 42);
    assert!(fetch["attempts"][1]["error"].is_null());
    let summarize = &workflow["steps"][1];
    assert!(summarize["output"].is_null(), "{summarize}");
    assert_eq!(summarize["outputRef"], reference);

    // A run that fails: `a` times out for good, `b` (after it) is skipped, `c` is running
    // when the run fails and is cancelled with its attempt; then `a` is retried.
    let mut bad = submit(
        &system,
        &commands,
        json!({"name": "fragile", "steps": [
            {"id": "a", "kind": "http", "config": {"url": "http://example.test"}},
            {"id": "b", "kind": "llm", "depends_on": ["a"], "config": {"model": "gpt-x"}},
            {"id": "c", "kind": "template", "config": {"template": "hi"}}
        ]}),
    )
    .await;
    bad.append(
        &store,
        WorkflowEvent::Started(WorkflowStarted {
            started_at: Utc::now(),
            deadline: None,
        }),
    )
    .await;
    let (a1, c1) = (Uuid::now_v7(), Uuid::now_v7());
    bad.append(&store, started("a", 1, a1, Utc::now())).await;
    bad.append(&store, started("c", 1, c1, Utc::now())).await;
    bad.append(
        &store,
        WorkflowEvent::StepTimedOut(StepTimedOut {
            step_id: "a".into(),
            attempt: 1,
            attempt_id: a1,
            next_attempt_at: None,
        }),
    )
    .await;
    bad.append(
        &store,
        WorkflowEvent::StepSkipped(StepSkipped {
            step_id: "b".into(),
            reason: "step 'a' failed".into(),
        }),
    )
    .await;
    let failed = bad
        .append(
            &store,
            WorkflowEvent::Failed(WorkflowFailed {
                reason: "step 'a' failed: timed_out".into(),
                step_id: Some("a".into()),
            }),
        )
        .await;
    let run = projected(&system, &queries, &bad).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        run["failure"],
        json!({"reason": "step 'a' failed: timed_out", "step_id": "a"})
    );
    assert_eq!(time(&run["finished_at"]), micros(failed));
    let a = step(&run, "a");
    assert_eq!(a["status"], "failed");
    assert_eq!(
        a["error"],
        json!({"kind": "timed_out", "message": "the attempt ran past its timeout"})
    );
    assert!(a.get("finished_at").is_some());
    let b = step(&run, "b");
    assert_eq!(b["status"], "skipped");
    assert_eq!(b["skip_reason"], "step 'a' failed");
    assert!(b.get("attempt_count").is_none(), "no attempt: {b}");
    let c = step(&run, "c");
    assert_eq!(c["status"], "cancelled");
    assert_eq!(time(&c["finished_at"]), micros(failed));
    let c_detail = get(
        &system,
        format!("{}/v1/workflows/{}/steps/c", queries.url, bad.id),
    )
    .await;
    assert_eq!(c_detail.body["attempts"][0]["status"], "cancelled");
    assert_eq!(
        time(&c_detail.body["attempts"][0]["finished_at"]),
        micros(failed)
    );
    assert!(c_detail.body["attempts"][0]["duration_ms"].is_i64());
    let a_detail = get(
        &system,
        format!("{}/v1/workflows/{}/steps/a", queries.url, bad.id),
    )
    .await;
    assert_eq!(a_detail.body["attempts"][0]["status"], "timed_out");
    assert_eq!(a_detail.body["attempts"][0]["error"]["kind"], "timed_out");
    assert_eq!(
        listed(&system, &queries, "failed").await,
        HashSet::from([bad.id.to_string()])
    );

    bad.append(
        &store,
        WorkflowEvent::StepRetried(StepRetried {
            step_id: "a".into(),
        }),
    )
    .await;
    let run = projected(&system, &queries, &bad).await;
    assert_eq!(run["status"], "running");
    assert!(run.get("failure").is_none(), "{run}");
    assert!(run.get("finished_at").is_none(), "{run}");
    assert_eq!(step(&run, "a")["status"], "pending");
    assert_eq!(step(&run, "a")["attempt_count"], 1);
    assert!(step(&run, "a").get("finished_at").is_none());
    assert_eq!(step(&run, "b")["status"], "skipped");
    assert_eq!(step(&run, "c")["status"], "pending");

    // Paused and resumed: a started run runs again, one that never started waits again.
    let mut paused = submit(
        &system,
        &commands,
        json!({"name": "paused", "steps": [{"id": "only", "kind": "template"}]}),
    )
    .await;
    let mut waiting = submit(
        &system,
        &commands,
        json!({"name": "waiting", "steps": [{"id": "only", "kind": "template"}]}),
    )
    .await;
    paused
        .append(
            &store,
            WorkflowEvent::Started(WorkflowStarted {
                started_at: Utc::now(),
                deadline: None,
            }),
        )
        .await;
    for run in [&mut paused, &mut waiting] {
        run.append(
            &store,
            WorkflowEvent::Paused(WorkflowPaused {
                reason: Some("maintenance".into()),
            }),
        )
        .await;
    }
    projected(&system, &queries, &paused).await;
    projected(&system, &queries, &waiting).await;
    assert_eq!(
        listed(&system, &queries, "paused").await,
        HashSet::from([paused.id.to_string(), waiting.id.to_string()])
    );
    let counts = graphql(
        &system,
        &queries,
        "{ workflowCounts { total byStatus { status count } } }",
    )
    .await;
    assert_eq!(counts["workflowCounts"]["total"], 4);
    assert_eq!(
        counts["workflowCounts"]["byStatus"],
        json!([
            {"status": "pending", "count": 0},
            {"status": "running", "count": 1},
            {"status": "paused", "count": 2},
            {"status": "succeeded", "count": 1},
            {"status": "failed", "count": 0},
            {"status": "cancelled", "count": 0}
        ])
    );
    for run in [&mut paused, &mut waiting] {
        run.append(&store, WorkflowEvent::Resumed(WorkflowResumed {}))
            .await;
    }
    assert_eq!(
        projected(&system, &queries, &paused).await["status"],
        "running"
    );
    assert_eq!(
        projected(&system, &queries, &waiting).await["status"],
        "pending"
    );
    assert_eq!(
        listed(&system, &queries, "running").await,
        HashSet::from([bad.id.to_string(), paused.id.to_string()])
    );
    assert_eq!(
        listed(&system, &queries, "pending").await,
        HashSet::from([waiting.id.to_string()])
    );

    // A page of runs through GraphQL, with the new statuses in the filter, attempts and
    // outputs of all its runs at once.
    let page = graphql(
        &system,
        &queries,
        "{ running: workflows(filter: {status: \"running\"}) { nodes { id status startedAt \
             steps { id status attempts { status } output } } } \
           succeeded: workflows(filter: {status: \"succeeded\"}) { nodes { id finishedAt \
             steps { id output attempts { attempt status } } } } }",
    )
    .await;
    let running: HashSet<String> = page["running"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        running,
        HashSet::from([bad.id.to_string(), paused.id.to_string()])
    );
    let bad_node = page["running"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["id"] == bad.id.to_string())
        .unwrap();
    assert_eq!(
        bad_node["steps"],
        json!([
            {"id": "a", "status": "pending", "attempts": [{"status": "timed_out"}], "output": null},
            {"id": "b", "status": "skipped", "attempts": [], "output": null},
            {"id": "c", "status": "pending", "attempts": [{"status": "cancelled"}], "output": null}
        ])
    );
    let good_node = &page["succeeded"]["nodes"][0];
    assert!(
        good_node["steps"][1]["output"].is_null(),
        "read from the step read only"
    );
    assert_eq!(
        good_node["steps"][0]["attempts"],
        json!([{"attempt": 1, "status": "failed"}, {"attempt": 2, "status": "succeeded"}])
    );

    // The graph view keeps step and run statuses too.
    let graph_caught_up = eventually(WITHIN, || async {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM graph_nodes WHERE xid = $1")
                .bind(flowline_graph::xid::run(bad.id))
                .fetch_optional(&system.pool)
                .await
                .unwrap();
        (version == Some(bad.version as i64)).then_some(())
    })
    .await;
    assert!(graph_caught_up.is_some(), "the graph view has the retry");
    let statuses: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT xid, status FROM graph_nodes WHERE xid = ANY($1) ORDER BY xid")
            .bind(vec![
                flowline_graph::xid::run(bad.id),
                flowline_graph::xid::step(bad.id, "a"),
                flowline_graph::xid::step(bad.id, "b"),
                flowline_graph::xid::step(bad.id, "c"),
            ])
            .fetch_all(&system.pool)
            .await
            .unwrap();
    let statuses: Vec<Option<&str>> = statuses.iter().map(|(_, s)| s.as_deref()).collect();
    assert_eq!(
        statuses,
        vec![
            Some("running"), // run:…
            Some("pending"), // step:…/a
            Some("skipped"), // step:…/b
            Some("pending"), // step:…/c
        ]
    );

    // A rebuild replays it all (in large batches, where the live projection saw it event
    // by event) and swaps in the same rows.
    let live = read_model_rows(&system).await;
    assert_eq!(live[2].as_array().unwrap().len(), 5, "five attempts");
    system
        .rebuild_through_admin(&projectors.url, "workflow_read_model")
        .await;
    let rebuilt = read_model_rows(&system).await;
    for (live, rebuilt) in live.iter().zip(&rebuilt) {
        assert_eq!(live, rebuilt);
    }
    let after = get(
        &system,
        format!("{}/v1/workflows/{}/steps/fetch", queries.url, good.id),
    )
    .await;
    assert_eq!(after.body["attempts"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_run_cancels_its_running_attempt_and_waiting_steps() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let store = EventStore::new(system.pool.clone());
    let mut run = submit(
        &system,
        &commands,
        json!({"name": "to cancel", "steps": [
            {"id": "first", "kind": "http", "config": {"url": "http://example.test"}},
            {"id": "second", "kind": "template", "depends_on": ["first"], "config": {"template": "x"}}
        ]}),
    )
    .await;
    // A subscriber of the run hears of every step status too.
    let mut subscriber = JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", queries.url.replacen("http://", "ws://", 1)),
        "query": "subscription ($id: UUID!) { workflowUpdated(id: $id) { version status \
                  steps { id status attemptCount attempts { status } } } }",
        "variables": {"id": run.id},
        "connectionParams": {"tenant": TENANT},
    }));
    let first = updated_to(&mut subscriber, 1).await;
    assert_eq!(first["steps"][0]["status"], "pending");
    run.append(
        &store,
        WorkflowEvent::Started(WorkflowStarted {
            started_at: Utc::now(),
            deadline: None,
        }),
    )
    .await;
    let attempt = Uuid::now_v7();
    let attempt_started = Utc::now();
    run.append(&store, started("first", 1, attempt, attempt_started))
        .await;
    let before = projected(&system, &queries, &run).await;
    assert_eq!(step(&before, "first")["status"], "running");
    let running = updated_to(&mut subscriber, run.version).await;
    assert_eq!(running["status"], "running");
    assert_eq!(
        running["steps"][0],
        json!({"id": "first", "status": "running", "attemptCount": 1,
               "attempts": [{"status": "running"}]})
    );

    // Through the command service, as a caller cancels: the aggregate decides from the
    // events appended above.
    let cancelled = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows/{}/cancel", commands.url, run.id))
                .header("X-Tenant-Id", TENANT)
                .json(&json!({"reason": "not needed"})),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    run.version += 1;
    let after = projected(&system, &queries, &run).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["cancel_reason"], "not needed");
    let finished = time(&after["finished_at"]);
    assert_eq!(step(&after, "first")["status"], "cancelled");
    assert_eq!(step(&after, "second")["status"], "cancelled");
    assert_eq!(time(&step(&after, "first")["finished_at"]), finished);
    let detail = get(
        &system,
        format!("{}/v1/workflows/{}/steps/first", queries.url, run.id),
    )
    .await;
    let attempts = detail.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status"], "cancelled");
    assert_eq!(time(&attempts[0]["finished_at"]), finished);
    assert_eq!(
        attempts[0]["duration_ms"],
        (finished - micros(attempt_started)).num_milliseconds()
    );

    let ended = updated_to(&mut subscriber, run.version).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(ended["steps"][0]["status"], "cancelled");
    assert_eq!(
        ended["steps"][0]["attempts"],
        json!([{"status": "cancelled"}])
    );
    assert_eq!(ended["steps"][1]["status"], "cancelled");
    subscriber.kill();

    let data = graphql(
        &system,
        &queries,
        &format!(
            "{{ workflow(id: \"{}\") {{ status finishedAt steps {{ id status attempts {{ status }} }} }} }}",
            run.id
        ),
    )
    .await;
    assert_eq!(
        data["workflow"]["steps"],
        json!([
            {"id": "first", "status": "cancelled", "attempts": [{"status": "cancelled"}]},
            {"id": "second", "status": "cancelled", "attempts": []}
        ])
    );
}
