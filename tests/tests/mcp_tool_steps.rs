//! `mcp_tool` steps against real MCP servers nobody here wrote: npm
//! `@modelcontextprotocol/server-everything` over stdio and over Streamable HTTP, PyPI
//! `mcp-server-time` over stdio. Outputs flow between steps, sessions are reused, a tool's
//! error fails its step, a server killed mid-call fails the attempt and the retry succeeds
//! on a fresh session. Everything real: command service, executor, PostgreSQL, the broker
//! and the servers' own processes.

use std::time::Duration;

use flowline_domain::{EventEnvelope, WorkflowEvent};
use flowline_service_kit::live::{LiveEntry, LiveReader, stream_key};
use serde_json::{Value, json};
use system_tests::mcp_servers::{EverythingHttp, ServersFile};
use system_tests::{Running, TestSystem, redis_url};

const RUN_WITHIN: Duration = Duration::from_secs(60);

fn step(id: &str, depends_on: &[&str], config: Value) -> Value {
    json!({"id": id, "kind": "mcp_tool", "depends_on": depends_on, "config": config})
}

/// A system whose executor calls the servers of `servers` and publishes live output
/// under the test's Redis prefix.
async fn started(servers: &ServersFile) -> (TestSystem, Running, Running) {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let path = servers.path.clone();
    let executor = system
        .executor_with(move |config| config.mcp.servers_file = Some(path))
        .await;
    (system, commands, executor)
}

fn output_of(events: &[EventEnvelope], step_id: &str) -> Value {
    events
        .iter()
        .find_map(|e| match &e.event {
            WorkflowEvent::StepSucceeded(s) if s.step_id == step_id => Some(s.output.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{step_id} has no success event: {events:?}"))
}

fn failures_of(events: &[EventEnvelope], step_id: &str) -> Vec<flowline_domain::StepFailed> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepFailed(f) if f.step_id == step_id => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// A reader of the live output of `step` of run `id`.
async fn live_reader(system: &TestSystem, id: &str, step: &str) -> LiveReader {
    let tenant = system.events(id).await[0].metadata.tenant.clone();
    let key = stream_key(&system.redis_prefix(), &tenant, id.parse().unwrap(), step);
    LiveReader::open(&redis_url(), key).await.expect("Redis")
}

/// The first live entries, waited for up to 30 s (in short blocking reads: a long one
/// would outlast the Redis connection's response timeout).
async fn first_entries(reader: &mut LiveReader) -> Vec<LiveEntry> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let entries = reader
            .next_batch(Duration::from_millis(200), 100)
            .await
            .expect("Redis read");
        if !entries.is_empty() {
            return entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live entry within 30 s"
        );
    }
}

fn text_of(output: &Value) -> &str {
    output[0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text block: {output}"))
}

#[tokio::test]
async fn a_workflow_calls_tools_over_stdio_and_streamable_http_with_outputs_flowing() {
    let http = EverythingHttp::start().await;
    let servers = ServersFile::write(Some(&http.url), "");
    let (system, commands, _executor) = started(&servers).await;
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "mcp", "input": {"city": "Chicago", "zone": "Asia/Tokyo"},
                "steps": [
                    step("sum", &[], json!({"server": "everything", "tool": "get-sum",
                                            "arguments": {"a": 2, "b": 3}})),
                    step("echo", &["sum"], json!({"server": "everything_http", "tool": "echo",
                                                  "arguments": {"message": "{{ steps.sum.output[0].text }}"}})),
                    step("weather", &["sum"], json!({"server": "everything", "tool": "get-structured-content",
                                                     "arguments": {"location": "{{ input.city }}"}})),
                    step("again", &["echo", "weather"], json!({"server": "everything", "tool": "echo",
                                                               "arguments": {"message": "{{ steps.weather.output.conditions }}"}})),
                    step("time", &[], json!({"server": "time", "tool": "get_current_time",
                                             "arguments": {"timezone": "{{ input.zone }}"}})),
                ]
            }),
        )
        .await;
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;

    // Content when the tool sends no structured content; structuredContent when it does.
    assert_eq!(
        output_of(&events, "sum"),
        json!([{"type": "text", "text": "The sum of 2 and 3 is 5."}])
    );
    assert_eq!(
        text_of(&output_of(&events, "echo")),
        "Echo: The sum of 2 and 3 is 5."
    );
    let weather = output_of(&events, "weather");
    assert_eq!(
        weather,
        json!({"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82})
    );
    assert_eq!(
        text_of(&output_of(&events, "again")),
        "Echo: Light rain / drizzle"
    );
    let time = output_of(&events, "time");
    assert_eq!(time["timezone"], "Asia/Tokyo");
    assert!(
        time["datetime"].as_str().unwrap().ends_with("+09:00"),
        "{time}"
    );

    // Three calls to the stdio server, one process: the session was reused.
    assert_eq!(servers.everything_starts().len(), 1);
}

#[tokio::test]
async fn a_tool_error_fails_the_step_for_good_and_the_run() {
    let servers = ServersFile::write(None, "");
    let (system, commands, _executor) = started(&servers).await;
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "bad zone",
                "steps": [step("time", &[], json!({"server": "time", "tool": "get_current_time",
                                                   "arguments": {"timezone": "Mars/Olympus_Mons"},
                                                   "retry": {"max_attempts": 3, "initial_interval": "100ms"}}))]
            }),
        )
        .await;
    system.wait_for_run(&id, "failed", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let failures = failures_of(&events, "time");
    // `isError` is the tool's answer: trying again would get the same one.
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.error.kind, "mcp_tool_error");
    assert!(
        failure.error.message.contains("Invalid timezone"),
        "{}",
        failure.error.message
    );
    assert!(!failure.retryable);
    assert!(failure.next_attempt_at.is_none());

    // Arguments the server's schema refuses fail the same way; an unknown tool and an
    // unknown server fail for good too, with kinds of their own.
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "bad calls",
                "steps": [
                    step("sum", &[], json!({"server": "everything", "tool": "get-sum",
                                            "arguments": {"a": "two", "b": 3},
                                            "on_failure": "continue"})),
                    step("nope", &[], json!({"server": "time", "tool": "no_such_tool",
                                             "on_failure": "continue"})),
                    step("unknown", &[], json!({"server": "nowhere", "tool": "x",
                                                "on_failure": "continue"})),
                ]
            }),
        )
        .await;
    // Every step fails, each with `continue`: the run ends once all three did.
    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let sum = &failures_of(&events, "sum")[0];
    assert_eq!(sum.error.kind, "mcp_tool_error");
    assert!(
        sum.error.message.contains("expected number"),
        "{}",
        sum.error.message
    );
    let nope = &failures_of(&events, "nope")[0];
    assert_eq!(nope.error.kind, "mcp_protocol", "{nope:?}");
    assert!(nope.error.message.contains("no_such_tool"), "{nope:?}");
    let unknown = &failures_of(&events, "unknown")[0];
    assert_eq!(unknown.error.kind, "mcp_unknown_server");
    assert!(
        unknown.error.message.contains("everything"),
        "{}",
        unknown.error.message
    );
}

#[tokio::test]
async fn progress_notifications_of_a_long_running_tool_reach_the_live_channel_while_it_runs() {
    let servers = ServersFile::write(None, "");
    let (system, commands, _executor) = started(&servers).await;
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "progress",
                "steps": [step("long", &[], json!({"server": "everything", "tool": "trigger-long-running-operation",
                                                   "arguments": {"duration": 4, "steps": 4}}))]
            }),
        )
        .await;
    let mut reader = live_reader(&system, &id, "long").await;
    let first = first_entries(&mut reader).await;
    // Live: the first notification is there a second in, while the tool still runs.
    assert_eq!(system.run_status(&id).await.as_deref(), Some("running"));

    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut entries = first;
    entries.extend(reader.drain(100).await.expect("Redis read"));
    // The attempt's end is marked last, before its outcome was recorded.
    assert_eq!(
        entries.pop(),
        Some(LiveEntry::Finished { attempt: 1 }),
        "{entries:?}"
    );
    let progress: Vec<(u32, f64, Option<f64>)> = entries
        .iter()
        .map(|entry| match entry {
            LiveEntry::Progress {
                attempt,
                progress,
                total,
                ..
            } => (*attempt, *progress, *total),
            other => panic!("only progress expected: {other:?}"),
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (1, 1.0, Some(4.0)),
            (1, 2.0, Some(4.0)),
            (1, 3.0, Some(4.0)),
            (1, 4.0, Some(4.0)),
        ]
    );
}

#[tokio::test]
async fn a_server_killed_mid_call_fails_the_attempt_and_the_retry_succeeds_on_a_fresh_session() {
    let servers = ServersFile::write(None, "");
    let (system, commands, _executor) = started(&servers).await;
    let id = system
        .submit(
            &commands.url,
            &json!({
                "name": "long",
                "steps": [step("long", &[], json!({"server": "everything", "tool": "trigger-long-running-operation",
                                                   "arguments": {"duration": 4, "steps": 4},
                                                   "retry": {"max_attempts": 2, "initial_interval": "100ms"}}))]
            }),
        )
        .await;
    // Mid-call: the tool's first progress notification (a second into four) came.
    let mut reader = live_reader(&system, &id, "long").await;
    let progress = first_entries(&mut reader).await;
    assert!(
        matches!(progress[0], LiveEntry::Progress { attempt: 1, .. }),
        "{progress:?}"
    );
    let first = servers.everything_starts()[0];
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    system.wait_for_run(&id, "succeeded", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let failures = failures_of(&events, "long");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].error.kind, "mcp_session_lost");
    assert!(failures[0].retryable);
    assert_eq!(failures[0].attempt, 1);
    assert!(
        text_of(&output_of(&events, "long")).contains("completed"),
        "{events:?}"
    );
    let starts = servers.everything_starts();
    assert_eq!(starts.len(), 2, "a fresh process for the retry: {starts:?}");
    assert_ne!(starts[0], starts[1]);
}

#[tokio::test]
async fn without_a_servers_file_mcp_tool_steps_fail_at_once_naming_the_setting() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let _executor = system.executor().await;

    // A step that could never call anything is refused at submit, naming the field.
    let refused = system
        .post(
            &format!("{}/v1/workflows", commands.url),
            &json!({"name": "n", "steps": [step("a", &[], json!({"server": "s", "arguments": []}))]}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let fields: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["steps[0].config.tool", "steps[0].config.arguments"]
    );

    let id = system
        .submit(
            &commands.url,
            &json!({"name": "n", "steps": [step("a", &[], json!({"server": "s", "tool": "t"}))]}),
        )
        .await;
    system.wait_for_run(&id, "failed", RUN_WITHIN).await;
    let events = system.events(&id).await;
    let failures = failures_of(&events, "a");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].error.kind, "not_configured");
    assert!(failures[0].error.message.contains("MCP_SERVERS_FILE"));
}
