//! The executor drives runs to their end: data flow and concurrency through a diamond,
//! retries with backoff and `Retry-After`, timeouts, durable timers across a `kill -9`,
//! cancellation that drops the request in flight, pause/resume, step retry, and `wait`
//! steps completed by signals. Everything real: command service, executor, PostgreSQL, the
//! broker, and a local HTTP server that records what it was sent.

use std::time::{Duration, Instant};

use flowline_domain::WorkflowEvent;
use serde_json::{Value, json};
use system_tests::step_server::StepServer;
use system_tests::{Running, TestSystem, eventually};

const RUN_WITHIN: Duration = Duration::from_secs(60);

/// A test's system with a step server, a command service and an executor.
async fn started() -> (TestSystem, StepServer, Running, Running) {
    let system = TestSystem::new(3).await;
    let server = StepServer::start().await;
    let commands = system.command_service().await;
    let executor = system.executor().await;
    (system, server, commands, executor)
}

fn step(id: &str, kind: &str, depends_on: &[&str], config: Value) -> Value {
    json!({"id": id, "kind": kind, "depends_on": depends_on, "config": config})
}

/// The events of one step, in order, as `(event type, event)`.
fn step_events<'a>(
    events: &'a [flowline_domain::EventEnvelope],
    step_id: &str,
) -> Vec<&'a WorkflowEvent> {
    events
        .iter()
        .map(|e| &e.event)
        .filter(|e| e.step_id() == Some(step_id))
        .collect()
}

fn position(
    events: &[flowline_domain::EventEnvelope],
    wanted: impl Fn(&WorkflowEvent) -> bool,
) -> usize {
    events
        .iter()
        .position(|e| wanted(&e.event))
        .expect("the event is on the stream")
}

fn output_of(events: &[flowline_domain::EventEnvelope], step_id: &str) -> Value {
    events
        .iter()
        .find_map(|e| match &e.event {
            WorkflowEvent::StepSucceeded(s) if s.step_id == step_id => Some(s.output.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{step_id} has no success event"))
}

#[tokio::test]
async fn a_diamond_of_template_and_http_steps_runs_in_dependency_order_with_outputs_flowing() {
    let (system, server, commands, executor) = started().await;
    let url = &server.url;
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "diamond", "input": {"topic": "rust"},
                "steps": [
                    step("a", "template", &[], json!({"template": "about {{ input.topic }}"})),
                    step("b", "http", &["a"], json!({"method": "POST", "url": format!("{url}/slow/400"),
                                                     "body": {"subject": "{{ steps.a.output }}"}})),
                    step("c", "http", &["a"], json!({"url": format!("{url}/slow/400")})),
                    step("d", "template", &["b", "c"],
                         json!({"template": "{{ steps.b.output.status }}/{{ steps.c.output.body.slept_ms }}"})),
                    step("e", "http", &["d"], json!({"method": "POST", "url": format!("{url}/echo/e"),
                                                     "headers": {"x-from": "{{ steps.d.output }}"},
                                                     "body": {"d": "{{ steps.d.output }}"}})),
                    step("f", "template", &["e"], json!({"template": "{{ steps.e.output.body.body.d }}!"})),
                ]
            }),
        )
        .await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;

    // Outputs flowed: a's text reached b's request body, b and c's outputs reached d, d's e,
    // e's f.
    assert_eq!(output_of(&events, "a"), json!("about rust"));
    let b_request = server
        .requests_to("/slow")
        .into_iter()
        .find(|r| r.body.contains("subject"))
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&b_request.body).unwrap(),
        json!({"subject": "about rust"})
    );
    assert_eq!(output_of(&events, "d"), json!("200/400"));
    assert_eq!(output_of(&events, "f"), json!("200/400!"));
    assert_eq!(output_of(&events, "e")["status"], 200);

    // Dependencies: no step started before every step it depends on succeeded.
    let succeeded = |id: &'static str| move |e: &WorkflowEvent| matches!(e, WorkflowEvent::StepSucceeded(s) if s.step_id == id);
    let started = |id: &'static str| move |e: &WorkflowEvent| matches!(e, WorkflowEvent::StepStarted(s) if s.step_id == id);
    for (step, dependencies) in [
        ("b", vec!["a"]),
        ("c", vec!["a"]),
        ("d", vec!["b", "c"]),
        ("e", vec!["d"]),
        ("f", vec!["e"]),
    ] {
        for dependency in dependencies {
            assert!(
                position(&events, succeeded(dependency)) < position(&events, started(step)),
                "{step} started before {dependency} succeeded"
            );
        }
    }
    // The branches overlapped in time at the server.
    let slow = server.requests_to("/slow");
    assert_eq!(slow.len(), 2);
    let (first, second) = (&slow[0], &slow[1]);
    assert!(
        second.began < first.ended.expect("answered"),
        "b and c ran one after the other"
    );
    // Each attempt sent its attempt id as Idempotency-Key.
    let b_attempt = step_events(&events, "b")
        .into_iter()
        .find_map(|e| match e {
            WorkflowEvent::StepStarted(s) => Some(s.attempt_id.to_string()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        b_request.idempotency_key.as_deref(),
        Some(b_attempt.as_str())
    );
    // The run's whole life is on the stream.
    let types = system.event_types(&id).await;
    assert_eq!(types.first().map(String::as_str), Some("WorkflowSubmitted"));
    assert_eq!(types[1], "WorkflowStarted");
    assert_eq!(types.last().map(String::as_str), Some("WorkflowSucceeded"));
    assert_eq!(types.iter().filter(|t| *t == "StepSucceeded").count(), 6);
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn failures_are_retried_with_growing_backoff_and_retry_after_and_a_400_fails_at_once() {
    let (system, server, commands, executor) = started().await;
    let url = &server.url;
    // Pauses of 150-300 ms, then 600-1200 ms (equal jitter, ×4): growth shows through the
    // noise of a loaded machine.
    let retry = json!({"max_attempts": 5, "initial_interval": "300ms", "backoff_coefficient": 4});
    let flaky = system
        .submit(&commands.url, &json!({"name": "flaky", "steps": [
            step("call", "http", &[], json!({"url": format!("{url}/flaky/k1/2"), "retry": retry}))]}))
        .await;
    let limited = system
        .submit(&commands.url, &json!({"name": "limited", "steps": [
            step("call", "http", &[], json!({"url": format!("{url}/limited/k2"), "retry": retry}))]}))
        .await;
    let refused = system
        .submit(&commands.url, &json!({"name": "bad request", "steps": [
            step("call", "http", &[], json!({"url": format!("{url}/status/400"), "retry": retry}))]}))
        .await;
    system.wait_for_run(&flaky, "succeeded", RUN_WITHIN).await;
    system.wait_for_run(&limited, "succeeded", RUN_WITHIN).await;
    system.wait_for_run(&refused, "failed", RUN_WITHIN).await;

    // Failing twice then succeeding: three attempts, the second pause longer than the first.
    let calls = server.requests_to("/flaky/k1");
    assert_eq!(calls.len(), 3);
    let first_gap = calls[1].began - calls[0].began;
    let second_gap = calls[2].began - calls[1].began;
    assert!(first_gap >= Duration::from_millis(150), "{first_gap:?}");
    assert!(second_gap > first_gap, "{first_gap:?} then {second_gap:?}");
    let events = system.events(&flaky).await;
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepFailed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2);
    // The pauses the executor decided, from its events, and that the server saw no sooner.
    let pauses: Vec<Duration> = events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepFailed(f) => f
                .next_attempt_at
                .and_then(|due| (due - e.metadata.occurred_at).to_std().ok()),
            _ => None,
        })
        .collect();
    assert!(
        pauses[0] >= Duration::from_millis(145) && pauses[0] <= Duration::from_millis(300),
        "{pauses:?}"
    );
    assert!(
        pauses[1] >= Duration::from_millis(595) && pauses[1] <= Duration::from_millis(1200),
        "{pauses:?}"
    );
    assert!(second_gap >= pauses[1], "{second_gap:?} < {:?}", pauses[1]);
    assert!(
        failures
            .iter()
            .all(|f| f.retryable && f.next_attempt_at.is_some() && f.error.kind == "http_status")
    );
    // Three distinct attempts, three distinct keys.
    let mut keys: Vec<_> = calls
        .iter()
        .map(|c| c.idempotency_key.clone().unwrap())
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), 3);

    // 429 with Retry-After: 2 → the next attempt at least 2 s later (the policy's own pause
    // is 150-300 ms).
    let calls = server.requests_to("/limited/k2");
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1].began - calls[0].began >= Duration::from_secs(2),
        "{:?}",
        calls[1].began - calls[0].began
    );

    // 400: not retryable, the run fails at once with the step's error.
    assert_eq!(server.requests_to("/status/400").len(), 1);
    let events = system.events(&refused).await;
    let failed = events.iter().find_map(|e| match &e.event {
        WorkflowEvent::StepFailed(f) => Some(f.clone()),
        _ => None,
    });
    let failed = failed.expect("a failure event");
    assert!(!failed.retryable && failed.next_attempt_at.is_none());
    assert!(
        failed.error.message.contains("400"),
        "{}",
        failed.error.message
    );
    let run_failure = events.iter().find_map(|e| match &e.event {
        WorkflowEvent::Failed(f) => Some(f.clone()),
        _ => None,
    });
    assert_eq!(run_failure.unwrap().step_id.as_deref(), Some("call"));
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_step_timeout_and_a_run_timeout_fire() {
    let (system, server, commands, executor) = started().await;
    let url = &server.url;
    let step_timeout = system
        .submit(&commands.url, &json!({"name": "slow step", "steps": [
            step("call", "http", &[], json!({"url": format!("{url}/slow/5000"), "timeout": "500ms",
                                            "retry": {"max_attempts": 2, "initial_interval": "100ms"}}))]}))
        .await;
    let submitted = Instant::now();
    let run_timeout = system
        .submit(
            &commands.url,
            &json!({"name": "slow run", "timeout": "1500ms", "steps": [
            step("call", "http", &[], json!({"url": format!("{url}/slow/20000")}))]}),
        )
        .await;
    system
        .wait_for_run(&step_timeout, "failed", RUN_WITHIN)
        .await;
    system
        .wait_for_run(&run_timeout, "failed", RUN_WITHIN)
        .await;
    assert!(submitted.elapsed() >= Duration::from_millis(1500));

    let events = system.events(&step_timeout).await;
    let timed_out: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.event, WorkflowEvent::StepTimedOut(_)))
        .collect();
    assert_eq!(timed_out.len(), 2, "two attempts, each timed out");
    let events = system.events(&run_timeout).await;
    let failure = events
        .iter()
        .find_map(|e| match &e.event {
            WorkflowEvent::Failed(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        failure.reason.starts_with("timed_out"),
        "{}",
        failure.reason
    );
    assert_eq!(failure.step_id, None);
    // The attempt's request was dropped when the run ended.
    let dropped = eventually(Duration::from_secs(10), || async {
        server
            .requests_to("/slow/20000")
            .first()
            .filter(|r| r.dropped)
            .map(|_| ())
    })
    .await;
    assert!(dropped.is_some(), "the slow request is still open");
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_retry_timer_survives_a_killed_executor_and_fires_once_and_not_early() {
    let system = TestSystem::new(3).await;
    let server = StepServer::start().await;
    let commands = system.command_service().await;
    let mut executor = system.executor_process(Vec::new()).await;
    let id = system
        .submit(&commands.url, &json!({"name": "durable timer", "steps": [
            step("call", "http", &[], json!({"url": format!("{}/flaky/timer/1", server.url),
                                            "retry": {"max_attempts": 3, "initial_interval": "6s"}}))]}))
        .await;
    // The first attempt failed and its retry is due 3-6 s later: kill the executor then.
    let failed_at = eventually(Duration::from_secs(30), || async {
        system
            .events(&id)
            .await
            .into_iter()
            .find_map(|e| match e.event {
                WorkflowEvent::StepFailed(f) => f.next_attempt_at,
                _ => None,
            })
    })
    .await
    .expect("the first attempt failed with a retry due");
    executor.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarting = chrono::Utc::now();
    executor.restart().await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;

    let calls = server.requests_to("/flaky/timer");
    assert_eq!(calls.len(), 2, "the retry ran exactly once");
    let retried_at = system
        .events(&id)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            WorkflowEvent::StepStarted(s) => Some(s.started_at),
            _ => None,
        })
        .nth(1)
        .expect("a second attempt");
    assert!(
        retried_at >= failed_at,
        "the retry started at {retried_at}, before it was due at {failed_at}"
    );
    // Not lost, and on time once the restarted executor could hold the partition: the
    // killed process's lease (2 s here) must expire first, then the timer fires within a
    // second.
    let takeover = restarting + chrono::Duration::milliseconds(3_000);
    let allowed = failed_at.max(takeover) + chrono::Duration::seconds(1);
    assert!(
        retried_at <= allowed,
        "the retry was due at {failed_at}, the executor was back by {takeover}, yet it started at {retried_at}"
    );
    commands.stop().await;
}

#[tokio::test]
async fn cancel_drops_the_request_in_flight_and_nothing_starts_after() {
    let (system, server, commands, executor) = started().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "cancelled", "steps": [
            step("slow", "http", &[], json!({"url": format!("{}/slow/30000", server.url)})),
            step("after", "http", &["slow"], json!({"url": format!("{}/ok/after", server.url)}))]}),
        )
        .await;
    let seen = eventually(Duration::from_secs(30), || async {
        (!server.requests_to("/slow").is_empty()).then_some(())
    })
    .await;
    assert!(seen.is_some(), "the slow request never arrived");
    // The executor's admin endpoint shows the run and its attempt in flight.
    let runs = system.get(&format!("{}/admin/runs", executor.url)).await;
    assert_eq!(runs.status, 200);
    let shown = runs
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workflow_id"] == id.as_str())
        .cloned();
    let shown = shown.expect("the run is listed");
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["running_steps"], json!(["slow"]));
    let metrics = system
        .send(system.http.get(format!("{}/metrics", executor.url)))
        .await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("flowline_executor_attempts_started_total 1"),
        "{text}"
    );
    assert!(
        text.contains("flowline_executor_attempts_running 1"),
        "{text}"
    );
    let openapi = system.get(&format!("{}/openapi.json", executor.url)).await;
    assert!(
        openapi.body["paths"]["/admin/runs"].is_object(),
        "{}",
        openapi.body
    );
    let reply = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    system.wait_for_run(&id, "cancelled", RUN_WITHIN).await;
    let dropped = eventually(Duration::from_secs(10), || async {
        server
            .requests_to("/slow")
            .first()
            .filter(|r| r.dropped)
            .map(|_| ())
    })
    .await;
    assert!(
        dropped.is_some(),
        "the server never saw the connection dropped"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.requests_to("/ok/after").is_empty());
    let types = system.event_types(&id).await;
    assert_eq!(types.last().map(String::as_str), Some("WorkflowCancelled"));
    assert!(
        !types[..types.len() - 1]
            .iter()
            .any(|t| t == "StepSucceeded")
    );
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn pause_lets_the_running_step_finish_and_starts_nothing_until_resumed() {
    let (system, server, commands, executor) = started().await;
    let id = system
        .submit(&commands.url, &json!({"name": "paused", "steps": [
            step("first", "http", &[], json!({"url": format!("{}/slow/1000", server.url)})),
            step("second", "template", &["first"], json!({"template": "after {{ steps.first.output.status }}"}))]}))
        .await;
    eventually(Duration::from_secs(30), || async {
        (!server.requests_to("/slow").is_empty()).then_some(())
    })
    .await
    .expect("the first step runs");
    let reply = system
        .post(
            &format!("{}/v1/workflows/{id}/pause", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The running attempt finishes and is recorded; the next step does not start.
    eventually(Duration::from_secs(30), || async {
        system
            .event_types(&id)
            .await
            .contains(&"StepSucceeded".to_owned())
            .then_some(())
    })
    .await
    .expect("the running attempt finished while paused");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = system.events(&id).await;
    assert!(
        step_events(&events, "second").is_empty(),
        "a step started while paused"
    );
    assert!(!server.requests_to("/slow").first().unwrap().dropped);

    let reply = system
        .post(
            &format!("{}/v1/workflows/{id}/resume", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    assert_eq!(
        output_of(&system.events(&id).await, "second"),
        json!("after 200")
    );
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_failed_step_of_a_failed_run_can_be_retried() {
    let (system, server, commands, executor) = started().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "retry me", "steps": [
            step("call", "http", &[], json!({"url": format!("{}/flaky/manual/1", server.url),
                                            "retry": {"max_attempts": 1}})),
            step("then", "template", &["call"], json!({"template": "done"}))]}),
        )
        .await;
    system.wait_for_run(&id, "failed", RUN_WITHIN).await;
    let reply = system
        .post(
            &format!("{}/v1/workflows/{id}/steps/call/retry", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepStarted(s) if s.step_id == "call" => Some(s.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1, 2], "the retry is a new attempt");
    assert_eq!(output_of(&events, "then"), json!("done"));
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_wait_step_completes_with_its_signal_and_fails_when_it_times_out() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let executor = system.executor().await;
    let approved = system
        .submit(&commands.url, &json!({"name": "approval", "steps": [
            step("approve", "wait", &[], json!({"signal": "approval", "timeout": "1m"})),
            step("after", "template", &["approve"], json!({"template": "approved by {{ steps.approve.output.by }}"}))]}))
        .await;
    let unanswered = system
        .submit(
            &commands.url,
            &json!({"name": "no answer", "steps": [
            step("approve", "wait", &[], json!({"signal": "approval", "timeout": "1s"}))]}),
        )
        .await;
    eventually(Duration::from_secs(30), || async {
        system
            .event_types(&approved)
            .await
            .contains(&"StepStarted".to_owned())
            .then_some(())
    })
    .await
    .expect("the wait step started");
    let reply = system
        .post(
            &format!("{}/v1/workflows/{approved}/signals/approval", commands.url),
            &json!({"by": "ana"}),
        )
        .await;
    assert!(reply.status < 300, "{}", reply.body);
    system
        .wait_for_run(&approved, "succeeded", RUN_WITHIN)
        .await;
    let events = system.events(&approved).await;
    assert_eq!(output_of(&events, "approve"), json!({"by": "ana"}));
    assert_eq!(output_of(&events, "after"), json!("approved by ana"));

    system.wait_for_run(&unanswered, "failed", RUN_WITHIN).await;
    let events = system.events(&unanswered).await;
    assert!(events.iter().any(|e| matches!(&e.event, WorkflowEvent::StepTimedOut(t) if t.step_id == "approve" && t.next_attempt_at.is_none())));
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn an_undefined_reference_fails_the_step_naming_it_and_llm_steps_are_not_configured() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let executor = system.executor().await;
    let undefined = system
        .submit(
            &commands.url,
            &json!({"name": "typo", "steps": [
            step("a", "template", &[], json!({"template": "x"})),
            step("b", "template", &["a"], json!({"template": "{{ steps.aa.output }}"}))]}),
        )
        .await;
    let llm = system
        .submit(
            &commands.url,
            &json!({"name": "ai", "steps": [
            step("ask", "llm", &[], json!({"provider": "openai", "model": "gpt", "prompt": "hi"}))]}),
        )
        .await;
    let metadata = system
        .submit(
            &commands.url,
            &json!({"name": "metadata", "steps": [
            step("steal", "http", &[], json!({"url": "http://169.254.169.254/latest/meta-data/"}))]}),
        )
        .await;
    system.wait_for_run(&undefined, "failed", RUN_WITHIN).await;
    system.wait_for_run(&llm, "failed", RUN_WITHIN).await;
    let error = |events: Vec<flowline_domain::EventEnvelope>| {
        events
            .into_iter()
            .find_map(|e| match e.event {
                WorkflowEvent::StepFailed(f) => Some(f.error),
                _ => None,
            })
            .unwrap()
    };
    let undefined = error(system.events(&undefined).await);
    assert_eq!(undefined.kind, "undefined_reference");
    assert!(
        undefined.message.contains("steps.aa.output"),
        "{}",
        undefined.message
    );
    assert_eq!(error(system.events(&llm).await).kind, "not_configured");
    system.wait_for_run(&metadata, "failed", RUN_WITHIN).await;
    let refused = error(system.events(&metadata).await);
    assert_eq!(refused.kind, "destination_refused", "{}", refused.message);
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_large_output_is_stored_by_reference_and_still_flows_to_later_steps() {
    let (system, _server, commands, executor) = started().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "big", "steps": [
            step("big", "template", &[], json!({"template": "{{ 'x' * 100000 }}"})),
            step("size", "template", &["big"], json!({"template": "{{ steps.big.output | length }}"}))]}),
        )
        .await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let big = events
        .iter()
        .find_map(|e| match &e.event {
            WorkflowEvent::StepSucceeded(s) if s.step_id == "big" => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        big.output,
        Value::Null,
        "the event does not carry the large output"
    );
    let reference = big.output_ref.expect("a payload reference");
    assert!(reference.starts_with("sha256:"));
    let stored: i32 = sqlx::query_scalar("SELECT size_bytes FROM step_payloads WHERE ref = $1")
        .bind(&reference)
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(stored, 100_002, "the JSON string of 100 000 characters");
    assert_eq!(output_of(&events, "size"), json!("100000"));
    executor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn outputs_a_server_controls_stay_readable_in_every_projection() {
    let (system, server, commands, executor) = started().await;
    let projectors = system.projectors().await;
    let queries = system.query_service().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "hostile answers", "steps": [
            step("nul", "http", &[], json!({"url": format!("{}/nul", server.url)})),
            step("deep", "http", &["nul"], json!({"url": format!("{}/deep", server.url)})),
            step("after", "template", &["deep"], json!({"template": "{{ steps.nul.output.body.text }}"}))]}),
        )
        .await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    // NUL characters (which PostgreSQL refuses in jsonb and text) were replaced, so the
    // projections took every event; the 100-deep body stayed text.
    let read = eventually(RUN_WITHIN, || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}", queries.url))
            .await;
        (reply.body["status"] == "succeeded").then_some(reply.body)
    })
    .await
    .expect("the read model shows the run finished");
    let steps = read["steps"].as_array().unwrap();
    let output = |id: &str| steps.iter().find(|s| s["id"] == id).unwrap()["output"].clone();
    assert_eq!(
        output("nul")["body"],
        json!({"text": "a\u{FFFD}b", "k\u{FFFD}": 1})
    );
    assert!(output("deep")["body"].is_string(), "{}", output("deep"));
    assert_eq!(output("after"), json!("a\u{FFFD}b"));
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    queries.stop().await;
    projectors.stop().await;
    executor.stop().await;
    commands.stop().await;
}

/// A `template` runner whose first attempt of every step panics.
struct PanicsFirst;

impl executor::runners::StepRunner for PanicsFirst {
    fn run(
        &self,
        attempt: executor::runners::AttemptInput,
    ) -> futures::future::BoxFuture<
        'static,
        Result<executor::runners::StepOutput, executor::runners::AttemptFailure>,
    > {
        Box::pin(async move {
            if attempt.attempt == 1 {
                panic!("a bug in a runner");
            }
            Ok(attempt.input["template"].clone().into())
        })
    }
}

#[tokio::test]
async fn a_runner_that_panics_fails_its_attempt_and_the_retry_runs() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let executor = system
        .executor_with_runners(
            |_| {},
            |runners| {
                runners.with(
                    flowline_domain::StepKind::Template,
                    std::sync::Arc::new(PanicsFirst),
                )
            },
        )
        .await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "panics", "input": {}, "steps": [
                step("a", "template", &[], json!({"template": "fine", "retry": {"initial_interval": "10ms"}}))
            ]}),
        )
        .await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let failed = step_events(&events, "a")
        .into_iter()
        .find_map(|e| match e {
            WorkflowEvent::StepFailed(failed) => Some(failed.clone()),
            _ => None,
        })
        .expect("the panicking attempt is a failed attempt on the log");
    assert_eq!(failed.error.kind, "runner_panicked");
    assert!(failed.error.message.contains("a bug in a runner"));
    assert_eq!(output_of(&events, "a"), json!("fine"));
    assert_eq!(
        system
            .metric(&executor.url, "flowline_executor_runner_panics_total")
            .await,
        1
    );
}
