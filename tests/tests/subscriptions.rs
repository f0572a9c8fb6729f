//! GraphQL subscriptions as off-the-shelf clients use them: `graphql-ws` (over `ws`) and
//! `graphql-request` from npm, against the real services, broker and PostgreSQL.

use serde_json::{Value, json};
use system_tests::js_clients::{JsSubscription, js_query};
use system_tests::{Reply, TestSystem};

const WORKFLOW_UPDATED: &str = "subscription ($id: UUID!) { workflowUpdated(id: $id) { id status version cancelReason steps { id status } } }";
const WORKFLOW_EVENTS: &str = "subscription ($filter: WorkflowEventFilter, $after: String) { workflowEvents(filter: $filter, after: $after) { workflowId version type data logPartition logOffset cursor } }";

fn ws_url(http_url: &str) -> String {
    format!("{}/graphql/ws", http_url.replacen("http://", "ws://", 1))
}

fn workflow(name: &str) -> Value {
    json!({
        "name": name,
        "input": {"topic": "subscriptions"},
        "steps": [{"id": "fetch", "kind": "http", "depends_on": []}]
    })
}

/// Sends a command as `tenant` and expects a 2xx.
async fn command(system: &TestSystem, url: String, tenant: &str, body: Value) -> Reply {
    let reply = system
        .send(
            system
                .http
                .post(url)
                .header("x-tenant-id", tenant)
                .json(&body),
        )
        .await;
    assert!((200..300).contains(&reply.status), "{:?}", reply.body);
    reply
}

async fn submit(system: &TestSystem, commands: &str, tenant: &str, name: &str) -> String {
    let reply = command(
        system,
        format!("{commands}/v1/workflows"),
        tenant,
        workflow(name),
    )
    .await;
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

async fn cancel(system: &TestSystem, commands: &str, tenant: &str, id: &str) {
    command(
        system,
        format!("{commands}/v1/workflows/{id}/cancel"),
        tenant,
        json!({"reason": "done"}),
    )
    .await;
}

fn subscribe(query_url: &str, query: &str, variables: Value, tenant: &str) -> JsSubscription {
    JsSubscription::start(&json!({
        "url": ws_url(query_url),
        "query": query,
        "variables": variables,
        "connectionParams": {"tenant": tenant},
    }))
}

/// The next `workflowEvents` item as (workflow id, version, type).
async fn next_event(client: &mut JsSubscription) -> (String, i64, String, Value) {
    let data = client.next_data().await;
    let event = data["workflowEvents"].clone();
    (
        event["workflowId"].as_str().unwrap().to_owned(),
        event["version"].as_i64().unwrap(),
        event["type"].as_str().unwrap().to_owned(),
        event,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_updated_yields_each_projected_version_in_order() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = submit(&system, &commands.url, "acme", "watched").await;

    let mut client = subscribe(&queries.url, WORKFLOW_UPDATED, json!({"id": id}), "acme");
    let first = client.next_data().await["workflowUpdated"].clone();
    assert_eq!(first["id"], id);
    assert_eq!(first["version"], 1);
    assert_eq!(first["status"], "pending");

    command(
        &system,
        format!("{}/v1/workflows/{id}/signals/approve", commands.url),
        "acme",
        json!({"by": "ana"}),
    )
    .await;
    let second = client.next_data().await["workflowUpdated"].clone();
    assert_eq!(second["version"], 2);
    assert_eq!(second["status"], "pending");

    cancel(&system, &commands.url, "acme", &id).await;
    let third = client.next_data().await["workflowUpdated"].clone();
    assert_eq!(third["version"], 3);
    assert_eq!(third["status"], "cancelled");
    assert_eq!(third["cancelReason"], "done");
    assert_eq!(
        third["steps"],
        json!([{"id": "fetch", "status": "cancelled"}])
    );

    // A plain GraphQL HTTP client from npm reads the same state.
    let read = js_query(&json!({
        "url": format!("{}/graphql", queries.url),
        "query": "query ($id: UUID!) { workflow(id: $id) { version status } }",
        "variables": {"id": id},
        "headers": {"x-tenant-id": "acme"},
    }))
    .await;
    assert_eq!(
        read,
        json!({"data": {"workflow": {"version": 3, "status": "cancelled"}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_events_delivers_new_events_filtered_and_per_tenant() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;

    // `after: ""` starts before the first event, so what a client receives does not
    // depend on when its subscription reached the server.
    let mut acme = subscribe(&queries.url, WORKFLOW_EVENTS, json!({"after": ""}), "acme");
    let mut globex = subscribe(
        &queries.url,
        WORKFLOW_EVENTS,
        json!({"after": ""}),
        "globex",
    );

    let first = submit(&system, &commands.url, "acme", "first").await;
    let (workflow, version, kind, event) = next_event(&mut acme).await;
    assert_eq!(
        (workflow.as_str(), version, kind.as_str()),
        (first.as_str(), 1, "WorkflowSubmitted")
    );
    assert_eq!(event["data"]["name"], "first");

    // A client that asks only for one workflow's cancellations, from now on.
    let mut cancellations = subscribe(
        &queries.url,
        WORKFLOW_EVENTS,
        json!({"filter": {"workflowId": first, "types": ["WorkflowCancelled"]}, "after": event["cursor"]}),
        "acme",
    );

    let other = submit(&system, &commands.url, "globex", "other").await;
    let (workflow, version, kind, _) = next_event(&mut globex).await;
    assert_eq!(
        (workflow.as_str(), version, kind.as_str()),
        (other.as_str(), 1, "WorkflowSubmitted")
    );

    let second = submit(&system, &commands.url, "acme", "second").await;
    cancel(&system, &commands.url, "acme", &first).await;
    cancel(&system, &commands.url, "globex", &other).await;

    // Per workflow in version order; across partitions either order is log order.
    let mut received = [next_event(&mut acme).await, next_event(&mut acme).await];
    received.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut expected = vec![
        (first.clone(), 2, "WorkflowCancelled".to_owned()),
        (second.clone(), 1, "WorkflowSubmitted".to_owned()),
    ];
    expected.sort();
    assert_eq!(
        received
            .iter()
            .map(|(w, v, k, _)| (w.clone(), *v, k.clone()))
            .collect::<Vec<_>>(),
        expected
    );

    let (workflow, version, kind, _) = next_event(&mut cancellations).await;
    assert_eq!(
        (workflow.as_str(), version, kind.as_str()),
        (first.as_str(), 2, "WorkflowCancelled")
    );

    // globex sees its own cancellation next, none of acme's events.
    let (workflow, version, kind, _) = next_event(&mut globex).await;
    assert_eq!(
        (workflow.as_str(), version, kind.as_str()),
        (other.as_str(), 2, "WorkflowCancelled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_after_a_query_service_restart_gets_exactly_the_missed_events() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let _projectors = system.projectors().await;
    let mut queries = system.query_process().await;

    let mut client = subscribe(&queries.url, WORKFLOW_EVENTS, json!({"after": ""}), "acme");
    let mut seen = Vec::new();
    for name in ["a", "b", "c"] {
        submit(&system, &commands.url, "acme", name).await;
    }
    let mut cursor = Value::Null;
    for _ in 0..3 {
        let (workflow, version, _, event) = next_event(&mut client).await;
        seen.push((workflow, version));
        cursor = event["cursor"].clone();
    }

    queries.kill();
    client.kill();
    let mut missed = Vec::new();
    for name in ["d", "e"] {
        let id = submit(&system, &commands.url, "acme", name).await;
        missed.push((id, 1));
    }
    cancel(&system, &commands.url, "acme", &seen[0].0).await;
    missed.push((seen[0].0.clone(), 2));
    queries.restart().await;

    let mut resumed = subscribe(
        &queries.url,
        WORKFLOW_EVENTS,
        json!({"after": cursor}),
        "acme",
    );
    let mut received = Vec::new();
    for _ in 0..missed.len() {
        let (workflow, version, _, _) = next_event(&mut resumed).await;
        received.push((workflow, version));
    }
    received.sort();
    missed.sort();
    assert_eq!(received, missed, "exactly the events missed while down");

    // And nothing replayed after them: the next item is the next new event.
    let last = submit(&system, &commands.url, "acme", "f").await;
    let (workflow, version, _, _) = next_event(&mut resumed).await;
    assert_eq!((workflow, version), (last, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_credentials_or_with_a_foreign_cursor_is_refused_clearly() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;

    let mut anonymous = JsSubscription::start(&json!({
        "url": ws_url(&queries.url),
        "query": WORKFLOW_EVENTS,
        "variables": {},
        "connectionParams": {"authorization": null},
        "headers": {"authorization": null},
    }));
    let refusal = loop {
        let line = anonymous.line().await;
        if line.get("connected").is_none() {
            break line;
        }
    };
    let reason = refusal["error"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("authorization"),
        "expected a refusal asking for credentials, got {refusal}"
    );
    assert_eq!(refusal["error"]["code"], 4403, "{refusal}");

    // The credentials of the upgrade request are enough.
    let mut by_header = JsSubscription::start(&json!({
        "url": ws_url(&queries.url),
        "query": WORKFLOW_EVENTS,
        "variables": {"after": "not a cursor!"},
        "connectionParams": {"authorization": null},
        "headers": {"x-tenant-id": "acme"},
    }));
    let refusal = loop {
        let line = by_header.line().await;
        if line.get("connected").is_none() {
            break line;
        }
    };
    // A resolver's error arrives as a result with `errors` (then `complete`).
    let errors = &refusal["next"]["errors"];
    assert!(
        errors[0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("after:")),
        "expected an error naming `after`, got {refusal}"
    );
    assert_eq!(errors[0]["extensions"]["code"], "invalid-parameter");
}

/// The next notification on the change feed (a minute at most: a hang guard).
async fn announcement(listener: &mut sqlx::postgres::PgListener) -> Value {
    let notification = tokio::time::timeout(std::time::Duration::from_secs(60), listener.recv())
        .await
        .expect("an announcement within a minute")
        .unwrap();
    serde_json::from_str(notification.payload()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_announces_committed_changes_and_rebuilds_announce_nothing() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let projectors = system.projectors().await;
    let mut listener = sqlx::postgres::PgListener::connect(&system.database_url)
        .await
        .unwrap();
    listener.listen("workflow_changes").await.unwrap();

    let reply = command(
        &system,
        format!("{}/v1/workflows", commands.url),
        "acme",
        workflow("announced"),
    )
    .await;
    let announced = announcement(&mut listener).await;
    assert_eq!(
        announced,
        json!({
            "tenant": "acme",
            "workflow_id": reply.body["workflow_id"],
            "version": 1,
            "log_partition": reply.body["log_partition"],
            "log_offset": reply.body["log_offset"],
        })
    );

    // A rebuild replays that history into shadow tables and swaps them in, silently.
    system
        .rebuild_through_admin(&projectors.url, "workflow_read_model")
        .await;

    // The next announcement is the next live change, not a replayed one.
    let next = submit(&system, &commands.url, "acme", "after the rebuild").await;
    let announced = announcement(&mut listener).await;
    assert_eq!(announced["workflow_id"], next);
}
