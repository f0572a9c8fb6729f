//! Run control on the command side: pausing and resuming a run, retrying a step, and the
//! step policies and run timeout a submit is checked for. No executor runs here, so these
//! are the command side's own decisions: what it accepts, what it refuses and how it says
//! so, and what it appends.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{Reply, TestSystem, eventually};

fn research_workflow() -> Value {
    json!({
        "name": "research",
        "input": {"topic": "event sourcing"},
        "steps": [
            {"id": "fetch", "kind": "http", "config": {"url": "http://example.test"}},
            {"id": "summarize", "kind": "llm", "depends_on": ["fetch"]}
        ]
    })
}

/// Submits the research workflow; its id.
async fn submit(system: &TestSystem, commands: &str) -> String {
    let reply = system
        .post(&format!("{commands}/v1/workflows"), &research_workflow())
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

/// POSTs with no body at all, as `curl -X POST` does.
async fn post_empty(system: &TestSystem, url: &str) -> Reply {
    system.send(system.http.post(url)).await
}

/// The types of the stored events of `id`, in version order.
async fn stored_types(system: &TestSystem, id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM event_store WHERE stream_id = $1::uuid ORDER BY stream_version",
    )
    .bind(id)
    .fetch_all(&system.pool)
    .await
    .unwrap()
}

fn assert_problem(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        reply.body["type"],
        format!("/problems/{kind}"),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["status"], status);
}

fn refused_fields(reply: &Reply) -> Vec<&str> {
    reply.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {:?}", reply.body))
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_run_pauses_once_and_resumes_to_pending() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = submit(&system, &commands.url).await;
    let pause_url = format!("{}/v1/workflows/{id}/pause", commands.url);
    let resume_url = format!("{}/v1/workflows/{id}/resume", commands.url);

    let paused = system
        .send(
            system
                .http
                .post(&pause_url)
                .header("idempotency-key", "pause-1")
                .json(&json!({"reason": "waiting for budget"})),
        )
        .await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    assert_eq!(paused.body["status"], "paused");
    assert_eq!(paused.body["version"], 2);
    assert_eq!(paused.header("etag"), Some("\"2\""));
    assert!(paused.header("x-consistency-token").is_some());

    // A retry of the same request is answered as the first time and appends nothing.
    let retried = system
        .send(
            system
                .http
                .post(&pause_url)
                .header("idempotency-key", "pause-1")
                .json(&json!({"reason": "waiting for budget"})),
        )
        .await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    assert_eq!(retried.body["event_id"], paused.body["event_id"]);

    // A second pause is a new command, and a paused run cannot pause again.
    let again = post_empty(&system, &pause_url).await;
    assert_problem(&again, 409, "invalid-transition");
    assert_eq!(again.body["workflow_status"], "paused");

    // A stale If-Match is refused before the status is looked at.
    let stale = system
        .send(system.http.post(&resume_url).header("if-match", "\"1\""))
        .await;
    assert_problem(&stale, 412, "version-mismatch");
    assert_eq!(stale.body["current_version"], 2);

    let resumed = system
        .send(system.http.post(&resume_url).header("if-match", "\"2\""))
        .await;
    assert_eq!(resumed.status, 200, "{:?}", resumed.body);
    // It never started, so it is pending again rather than running.
    assert_eq!(resumed.body["status"], "pending");
    assert_eq!(resumed.body["version"], 3);

    let not_paused = post_empty(&system, &resume_url).await;
    assert_problem(&not_paused, 409, "invalid-transition");
    assert_eq!(not_paused.body["workflow_status"], "pending");

    // An empty body pauses too, as for cancel; a cancelled run can be neither paused nor
    // resumed.
    let paused_again = post_empty(&system, &pause_url).await;
    assert_eq!(paused_again.status, 200, "{:?}", paused_again.body);
    let cancelled = post_empty(
        &system,
        &format!("{}/v1/workflows/{id}/cancel", commands.url),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    for url in [&pause_url, &resume_url] {
        let refused = post_empty(&system, url).await;
        assert_problem(&refused, 409, "invalid-transition");
        assert_eq!(refused.body["workflow_status"], "cancelled");
    }

    let expected = [
        "WorkflowSubmitted",
        "WorkflowPaused",
        "WorkflowResumed",
        "WorkflowPaused",
        "WorkflowCancelled",
    ];
    assert_eq!(stored_types(&system, &id).await, expected);
    assert_eq!(system.records_on_log().await, 5);

    let events = eventually(Duration::from_secs(30), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}/events", queries.url))
            .await;
        let events = reply.body["events"].as_array().cloned().unwrap_or_default();
        (events.len() == expected.len()).then_some(events)
    })
    .await
    .expect("the events are projected");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, expected);
    assert_eq!(events[1]["data"]["reason"], "waiting for budget");
    assert_eq!(events[3]["data"]["reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_retry_is_refused_naming_the_step_unless_it_and_its_run_failed() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let id = submit(&system, &commands.url).await;
    let retry = |step: &str| format!("{}/v1/workflows/{id}/steps/{step}/retry", commands.url);

    let pending = post_empty(&system, &retry("fetch")).await;
    assert_problem(&pending, 409, "invalid-transition");
    assert_eq!(pending.body["step"], "fetch");
    assert_eq!(pending.body["workflow_status"], "pending");
    let detail = pending.body["detail"].as_str().unwrap();
    assert!(detail.contains("'fetch'"), "{detail}");

    // Also with `{}` as the body, which some clients always send.
    let with_body = system.post(&retry("summarize"), &json!({})).await;
    assert_problem(&with_body, 409, "invalid-transition");
    assert_eq!(with_body.body["step"], "summarize");

    let unknown = post_empty(&system, &retry("publish")).await;
    assert_problem(&unknown, 404, "not-found");
    assert_eq!(unknown.body["step"], "publish");
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("'publish'"),
        "{:?}",
        unknown.body
    );

    // An id no step can have (submit refuses it) is not looked for.
    let malformed = post_empty(&system, &retry("no%20such%20step")).await;
    assert_problem(&malformed, 404, "not-found");
    assert_eq!(malformed.body["step"], "no such step");

    // A run that does not exist is what is missing, not its step.
    let no_run = post_empty(
        &system,
        &format!(
            "{}/v1/workflows/{}/steps/fetch/retry",
            commands.url,
            uuid::Uuid::now_v7()
        ),
    )
    .await;
    assert_problem(&no_run, 404, "not-found");
    assert_eq!(no_run.body["detail"], "no such workflow");
    assert!(no_run.body.get("step").is_none(), "{:?}", no_run.body);

    // A paused run is not a failed one either.
    let paused = post_empty(
        &system,
        &format!("{}/v1/workflows/{id}/pause", commands.url),
    )
    .await;
    assert_eq!(paused.status, 200, "{:?}", paused.body);
    let while_paused = post_empty(&system, &retry("fetch")).await;
    assert_problem(&while_paused, 409, "invalid-transition");
    assert_eq!(while_paused.body["workflow_status"], "paused");
    assert_eq!(while_paused.body["step"], "fetch");

    let malformed_body = system
        .send(
            system
                .http
                .post(retry("fetch"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_problem(&malformed_body, 400, "malformed-request");

    // Nothing refused was appended.
    assert_eq!(
        stored_types(&system, &id).await,
        ["WorkflowSubmitted", "WorkflowPaused"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_checks_step_policies_and_the_run_timeout_naming_each_field() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let url = format!("{}/v1/workflows", commands.url);

    let bad_retry = system
        .post(
            &url,
            &json!({"name": "r", "steps": [
                {"id": "fetch", "kind": "http", "config": {"retry": {"max_attempts": 0}}}
            ]}),
        )
        .await;
    assert_problem(&bad_retry, 422, "validation");
    assert_eq!(
        refused_fields(&bad_retry),
        ["steps[0].config.retry.max_attempts"]
    );

    let wait_without_signal = system
        .post(
            &url,
            &json!({"name": "r", "steps": [
                {"id": "approve", "kind": "wait", "config": {"timeout": "1h"}}
            ]}),
        )
        .await;
    assert_problem(&wait_without_signal, 422, "validation");
    assert_eq!(
        refused_fields(&wait_without_signal),
        ["steps[0].config.signal"]
    );

    let vague_timeout = system
        .post(
            &url,
            &json!({"name": "r", "timeout": "soon", "steps": [{"id": "fetch", "kind": "http"}]}),
        )
        .await;
    assert_problem(&vague_timeout, 422, "validation");
    assert_eq!(refused_fields(&vague_timeout), ["timeout"]);

    // Every bad field at once.
    let many = system
        .post(
            &url,
            &json!({"name": "r", "timeout": "8d", "steps": [
                {"id": "fetch", "kind": "http", "config": {"timeout": "30", "on_failure": "ignore"}},
                {"id": "approve", "kind": "wait", "config": {"signal": "ok!"}}
            ]}),
        )
        .await;
    assert_problem(&many, 422, "validation");
    assert_eq!(
        refused_fields(&many),
        [
            "timeout",
            "steps[0].config.timeout",
            "steps[0].config.on_failure",
            "steps[1].config.signal"
        ]
    );
    assert_eq!(system.stored_events().await, 0);

    let accepted = system
        .post(
            &url,
            &json!({"name": "reviewed research", "timeout": "30m", "steps": [
                {"id": "fetch", "kind": "http", "config": {
                    "url": "http://example.test", "timeout": "10s", "on_failure": "continue",
                    "retry": {"max_attempts": 5, "initial_interval": "200ms",
                              "backoff_coefficient": 1.5, "max_interval": "5s",
                              "non_retryable": ["http_status"]}}},
                {"id": "approve", "kind": "wait", "depends_on": ["fetch"],
                 "config": {"signal": "approve", "timeout": "2h"}}
            ]}),
        )
        .await;
    assert_eq!(accepted.status, 201, "{:?}", accepted.body);
    assert_eq!(accepted.body["status"], "pending");
    assert_eq!(system.stored_events().await, 1);
}
