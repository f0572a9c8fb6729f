//! Hostile commands (ADR 0017): each is refused with a 4xx naming what is wrong, nothing
//! of it is stored, and a plain submit and read afterwards still work (the system was not
//! wedged). Also: `Idempotency-Key` on signal and cancel, and a command that outlives
//! `PUBLISH_TIMEOUT_MS` answered 503 and published exactly once.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{OwnedBroker, Reply, Running, Stack, TestSystem, eventually};

/// The command and query services and the projectors of one test.
struct Services(Stack);

impl std::ops::Deref for Services {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Services {
    async fn start() -> Self {
        let system = TestSystem::new(1).await;
        let commands = system.command_service().await;
        Self::around(system, commands).await
    }

    async fn around(system: TestSystem, commands: Running) -> Self {
        let queries = system.query_service().await;
        Self(Stack::around(system, commands, queries).await)
    }

    async fn submit(&self, body: &Value) -> Reply {
        self.system
            .post(&format!("{}/v1/workflows", self.commands.url), body)
            .await
    }

    async fn signal(&self, id: &str, name: &str, body: Vec<u8>) -> Reply {
        self.system
            .send(
                self.system
                    .http
                    .post(format!(
                        "{}/v1/workflows/{id}/signals/{name}",
                        self.commands.url
                    ))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
    }

    /// A plain run: submitted, then read back through the query service and its events.
    async fn still_works(&self) {
        let id = self.system.submit(&self.commands.url, &plain()).await;
        let signalled = self.signal(&id, "ping", br#"{"ok": true}"#.to_vec()).await;
        assert_eq!(signalled.status, 200, "{}", signalled.body);
        let read = eventually(Duration::from_secs(30), || async {
            let reply = self
                .system
                .get(&format!("{}/v1/workflows/{id}/events", self.queries.url))
                .await;
            let events = reply.body["events"]
                .as_array()
                .or(reply.body["items"].as_array())
                .map(Vec::len);
            (events == Some(2)).then_some(())
        })
        .await;
        assert!(
            read.is_some(),
            "a plain run after the hostile command was not readable"
        );
        let run = self
            .system
            .get(&format!("{}/v1/workflows/{id}", self.queries.url))
            .await;
        assert_eq!(run.status, 200, "{}", run.body);
        assert_eq!(run.body["name"], "plain");
    }
}

fn plain() -> Value {
    json!({"name": "plain", "steps": [{"id": "a", "kind": "template", "config": {"template": "x"}}]})
}

/// A 422 (or `status`) problem whose `errors` name `field`; the fields it names.
fn assert_refused(reply: &Reply, status: u16, field: &str) -> Vec<String> {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let fields: Vec<String> = reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        fields.iter().any(|f| f == field),
        "{field} not named in {}",
        reply.body
    );
    let size = reply.body.to_string().len();
    assert!(size < 8_192, "an error body of {size} bytes");
    fields
}

fn nested(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| json!({ "a": inner }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_is_refused_naming_its_path_and_the_system_goes_on() {
    let services = Services::start().await;
    let id = services
        .system
        .submit(&services.commands.url, &plain())
        .await;

    // A 127-deep signal: serde_json reads it, later stages would not.
    let deep = services
        .signal(&id, "deep", nested(127, json!(1)).to_string().into_bytes())
        .await;
    let path = format!("payload{}", ".a".repeat(32));
    assert_refused(&deep, 422, &path);
    services.still_works().await;

    // NUL in an input value, an input key, a name, a signal payload and a reason.
    let nul_value = services
        .submit(&json!({"name": "n", "input": {"a": {"b": "x\u{0}y"}}, "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&nul_value, 422, "input.a.b");
    let nul_key = services
        .submit(&json!({"name": "n", "input": {"k\u{0}": 1}, "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&nul_key, 422, "input[\"k\\\\u0000\"]");
    let nul_name = services
        .submit(&json!({"name": "n\u{0}", "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&nul_name, 422, "name");
    let nul_config = services
        .submit(&json!({"name": "n", "steps": [{"id": "a", "kind": "template", "config": {"prompt": "\u{0}"}}]}))
        .await;
    assert_refused(&nul_config, 422, "steps[0].config.prompt");
    let nul_payload = services
        .signal(&id, "s", br#"{"list": ["ok", "\u0000"]}"#.to_vec())
        .await;
    assert_refused(&nul_payload, 422, "payload.list[1]");
    let nul_reason = services
        .system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", services.commands.url),
            &json!({"reason": "\u{0}"}),
        )
        .await;
    assert_refused(&nul_reason, 422, "reason");
    services.still_works().await;

    // Names too long for an index.
    let long_name = services
        .submit(&json!({"name": "n".repeat(201), "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&long_name, 422, "name");
    let long_model = services
        .submit(&json!({"name": "n", "steps": [{"id": "a", "kind": "llm", "config": {"model": "m".repeat(5_000)}}]}))
        .await;
    assert_refused(&long_model, 422, "steps[0].config.model");
    let long_tool = services
        .submit(&json!({"name": "n", "steps": [{"id": "a", "kind": "mcp_tool", "config": {"server": "s", "tool": "t".repeat(3_000)}}]}))
        .await;
    assert_refused(&long_tool, 422, "steps[0].config.tool");
    let long_step = services
        .submit(&json!({"name": "n", "steps": [{"id": "s".repeat(129), "kind": "template"}]}))
        .await;
    assert_refused(&long_step, 422, "steps[0].id");
    let long_key = services
        .submit(&json!({"name": "n", "input": {"k".repeat(300): 1}, "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_eq!(long_key.status, 422, "{}", long_key.body);
    services.still_works().await;

    // Too many items.
    let items = services
        .submit(&json!({"name": "n", "input": {"list": vec![0; 10_001]}, "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&items, 422, "input.list");
    services.still_works().await;

    // Nothing of it was stored: the first run has its submit only.
    assert_eq!(
        services.system.event_types(&id).await,
        ["WorkflowSubmitted"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_wrong_everywhere_gets_a_short_answer() {
    let services = Services::start().await;
    let steps: Vec<Value> = (0..900)
        .map(|i| json!({"id": format!("s{i}"), "kind": "x".repeat(100), "depends_on": ["missing".repeat(10)]}))
        .collect();
    let reply = services.submit(&json!({"name": "n", "steps": steps})).await;
    let fields = assert_refused(&reply, 422, "steps[0].kind");
    assert_eq!(fields.len(), flowline_domain::MAX_FIELD_ERRORS + 1);
    assert_eq!(fields.last().unwrap(), "(more)");
    // A wrongly typed megabyte is not echoed either.
    let typed = services
        .submit(&json!({"name": "n", "steps": "x".repeat(900_000)}))
        .await;
    assert_eq!(typed.status, 422, "{}", typed.body);
    assert!(typed.body.to_string().len() < 2_000, "{}", typed.body);
    services.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_too_large_for_the_log_is_refused_and_the_relay_goes_on() {
    let services = Services::start().await;
    let id = services
        .system
        .submit(&services.commands.url, &plain())
        .await;
    // Under MAX_BODY_BYTES (1 MiB), over what the producer takes (1 000 000 bytes).
    let payload = json!({"blob": "x".repeat(1_000_100)})
        .to_string()
        .into_bytes();
    assert!(payload.len() < 1024 * 1024);
    let refused = services.signal(&id, "big", payload).await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(
        refused.body["type"]
            .as_str()
            .map(|t| t.ends_with("event-too-large")),
        Some(true),
        "{}",
        refused.body
    );
    assert!(refused.body["event_bytes"].as_u64().unwrap() > 1_000_000);
    // Just under the limit is accepted and published.
    let fits = json!({"blob": "x".repeat(990_000)})
        .to_string()
        .into_bytes();
    let accepted = services.signal(&id, "big", fits).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(
        services.system.event_types(&id).await,
        ["WorkflowSubmitted", "SignalReceived"]
    );
    services.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_have_a_maximum_length() {
    let system = TestSystem::new(1).await;
    // Callers may fill half: 6 events.
    let commands = system
        .command_service_adjusted(|config| config.limits.max_stream_events = 12)
        .await;
    let services = Services::around(system, commands).await;
    // One step of 3 attempts could write 4 + 6 events: more than 6.
    let too_many = services
        .submit(&json!({"name": "n", "steps": [{"id": "a", "kind": "template"}]}))
        .await;
    assert_refused(&too_many, 422, "steps");
    let one_attempt = json!({"name": "plain", "steps": [{"id": "a", "kind": "template",
        "config": {"template": "x", "retry": {"max_attempts": 1}}}]});
    let id = services
        .system
        .submit(&services.commands.url, &one_attempt)
        .await;
    for index in 0..5 {
        let reply = services
            .signal(&id, &format!("s{index}"), b"{}".to_vec())
            .await;
        assert_eq!(reply.status, 200, "signal {index}: {}", reply.body);
    }
    let full = services.signal(&id, "one-more", b"{}".to_vec()).await;
    assert_eq!(full.status, 409, "{}", full.body);
    assert_eq!(full.body["max_stream_events"], 12);
    let pause = services
        .system
        .post(
            &format!("{}/v1/workflows/{id}/pause", services.commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(pause.status, 409, "{}", pause.body);
    let cancel = services
        .system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", services.commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(
        cancel.status, 200,
        "cancel is always possible: {}",
        cancel.body
    );
    assert_eq!(services.system.event_types(&id).await.len(), 7);
    // Still works: a plain run of one attempt.
    let other = services
        .system
        .submit(&services.commands.url, &one_attempt)
        .await;
    assert_eq!(
        services.signal(&other, "s", b"{}".to_vec()).await.status,
        200
    );
}

async fn keyed(system: &TestSystem, url: &str, key: &str, body: &Value) -> Reply {
    system
        .send(
            system
                .http
                .post(url)
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_make_signal_and_cancel_safe_to_retry() {
    let services = Services::start().await;
    let system = &services.system;
    let id = system.submit(&services.commands.url, &plain()).await;

    let signal_url = format!(
        "{}/v1/workflows/{id}/signals/approve",
        services.commands.url
    );
    let first = keyed(system, &signal_url, "sig-1", &json!({"by": "ana"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = keyed(system, &signal_url, "sig-1", &json!({"by": "ana"})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["event_id"], first.body["event_id"]);
    let reused = keyed(system, &signal_url, "sig-1", &json!({"by": "bo"})).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.body["header"], "Idempotency-Key");
    // Also when the cache forgot it: PostgreSQL appends a command id once.
    let mut redis = redis::Client::open(system_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:idempotency:*", system.redis_prefix()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let after_flush = keyed(system, &signal_url, "sig-1", &json!({"by": "ana"})).await;
    assert_eq!(after_flush.status, 200, "{}", after_flush.body);
    assert_eq!(after_flush.body["event_id"], first.body["event_id"]);

    let cancel_url = format!("{}/v1/workflows/{id}/cancel", services.commands.url);
    let cancelled = keyed(system, &cancel_url, "cancel-1", &json!({"reason": "r"})).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let cancelled_again = keyed(system, &cancel_url, "cancel-1", &json!({"reason": "r"})).await;
    assert_eq!(
        cancelled_again.status, 200,
        "a retry is not a 409: {}",
        cancelled_again.body
    );
    assert_eq!(cancelled_again.header("idempotent-replayed"), Some("true"));
    assert_eq!(cancelled_again.body["event_id"], cancelled.body["event_id"]);
    let other_reason = keyed(system, &cancel_url, "cancel-1", &json!({"reason": "s"})).await;
    assert_eq!(other_reason.status, 422, "{}", other_reason.body);

    assert_eq!(
        system.event_types(&id).await,
        ["WorkflowSubmitted", "SignalReceived", "WorkflowCancelled"]
    );
    services.still_works().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_the_publish_timeout_is_pending_and_then_published_once() {
    let mut broker = OwnedBroker::start().await;
    let system = TestSystem::with_brokers(broker.address.clone(), 1).await;
    let commands = system
        .command_service_adjusted(|config| config.publish_timeout_ms = 1_000)
        .await;
    // The first record to a fresh broker may take longer than the short timeout under a
    // loaded machine: then it is pending, and published once the relay gets through.
    let first = system
        .post(&format!("{}/v1/workflows", commands.url), &plain())
        .await;
    assert!(
        first.status == 201 || first.body["outcome"] == "pending",
        "{}",
        first.body
    );
    let id = first.body["workflow_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    let first_published = eventually(Duration::from_secs(60), || async {
        (!system.read_log().await.is_empty()).then_some(())
    })
    .await;
    assert!(
        first_published.is_some(),
        "the submission never reached the log"
    );

    broker.kill();
    let signal_url = format!("{}/v1/workflows/{id}/signals/late", commands.url);
    let pending = system.post(&signal_url, &json!({"n": 1})).await;
    assert_eq!(pending.status, 503, "{}", pending.body);
    assert_eq!(pending.body["outcome"], "pending", "{}", pending.body);
    assert_eq!(pending.body["workflow_id"], id.as_str());
    let event_id = pending.body["event_id"]
        .as_str()
        .expect("event id")
        .to_owned();
    assert_eq!(
        system.event_types(&id).await,
        ["WorkflowSubmitted", "SignalReceived"]
    );

    broker.restart().await;
    let published = eventually(Duration::from_secs(60), || async {
        let on_log = system
            .read_log()
            .await
            .into_iter()
            .filter(|record| record.headers.get("event-id") == Some(&event_id))
            .count();
        (on_log > 0).then_some(on_log)
    })
    .await;
    assert_eq!(published, Some(1), "the pending event is published");
    // A while later, still once, and nothing else was appended.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = system.read_log().await;
    assert_eq!(
        records
            .iter()
            .filter(|record| record.headers.get("event-id") == Some(&event_id))
            .count(),
        1
    );
    assert_eq!(records.len(), 2);
    assert_eq!(system.stored_events().await, 2);
}
