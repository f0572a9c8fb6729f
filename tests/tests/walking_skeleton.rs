//! The first whole path: submit over HTTP, read over REST and GraphQL, through the real
//! broker and PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{TestSystem, eventually};

fn research_workflow() -> Value {
    json!({
        "name": "research",
        "input": {"topic": "event sourcing"},
        "steps": [
            {"id": "fetch", "kind": "http", "depends_on": [], "config": {"url": "http://example.test"}},
            {"id": "summarize", "kind": "llm", "depends_on": ["fetch"]}
        ]
    })
}

const WORKFLOW_SELECTION: &str = "id name status version steps { id kind status dependsOn }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_workflow_is_readable_over_rest_and_graphql() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;

    let reply = system
        .post(
            &format!("{}/v1/workflows", commands.url),
            &research_workflow(),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(reply.body["version"], 1);
    let id = reply.body["workflow_id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/workflows/{id}").as_str())
    );
    // The 2xx means the event is on the log already.
    assert_eq!(system.records_on_log().await, 1);

    // How soon is measured by `scripts/bench subscribe`, not here: on a loaded 2-core CI
    // machine the projectors' start-up alone can take longer than any latency goal.
    let rest = eventually(Duration::from_secs(30), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}", queries.url))
            .await;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .expect("visible over REST");
    assert_eq!(rest["id"], id);
    assert_eq!(rest["name"], "research");
    assert_eq!(rest["status"], "pending");
    assert_eq!(rest["version"], 1);
    assert_eq!(rest["input"], json!({"topic": "event sourcing"}));
    assert_eq!(rest["steps"][0]["id"], "fetch");
    assert_eq!(
        rest["steps"][0]["config"],
        json!({"url": "http://example.test"})
    );
    assert_eq!(rest["steps"][1]["depends_on"], json!(["fetch"]));

    let graphql = system
        .graphql(
            &queries.url,
            &format!("{{ workflow(id: \"{id}\") {{ {WORKFLOW_SELECTION} }} }}"),
        )
        .await;
    let workflow = &graphql["data"]["workflow"];
    for field in ["id", "name", "status", "version"] {
        assert_eq!(
            workflow[field], rest[field],
            "{field} differs between REST and GraphQL"
        );
    }
    assert_eq!(
        workflow["steps"],
        json!([
            {"id": "fetch", "kind": "http", "status": "pending", "dependsOn": []},
            {"id": "summarize", "kind": "llm", "status": "pending", "dependsOn": ["fetch"]}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_signal_append_events_that_both_reads_show() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let submitted = system
        .post(
            &format!("{}/v1/workflows", commands.url),
            &research_workflow(),
        )
        .await;
    let id = submitted.body["workflow_id"].as_str().unwrap().to_owned();

    let signal = system
        .post(
            &format!("{}/v1/workflows/{id}/signals/approve", commands.url),
            &json!({"approved_by": "ana"}),
        )
        .await;
    assert_eq!(signal.status, 200, "{:?}", signal.body);
    assert_eq!(signal.body["version"], 2);
    assert_eq!(signal.header("etag"), Some("\"2\""));

    let cancel = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({"reason": "no longer needed"}),
        )
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    assert_eq!(cancel.body["version"], 3);
    assert_eq!(cancel.body["status"], "cancelled");

    let rest = eventually(Duration::from_secs(30), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}", queries.url))
            .await;
        (reply.body["version"] == 3).then_some(reply.body)
    })
    .await
    .expect("cancel visible");
    assert_eq!(rest["status"], "cancelled");
    assert_eq!(rest["cancel_reason"], "no longer needed");
    assert!(
        rest["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cancelled")
    );

    let graphql = system
        .graphql(
            &queries.url,
            &format!("{{ workflow(id: \"{id}\") {{ status version }} }}"),
        )
        .await;
    assert_eq!(
        graphql["data"]["workflow"],
        json!({"status": "cancelled", "version": 3})
    );

    let events = system
        .get(&format!("{}/v1/workflows/{id}/events", queries.url))
        .await;
    let types: Vec<(i64, &str)> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["version"].as_i64().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        vec![
            (1, "WorkflowSubmitted"),
            (2, "SignalReceived"),
            (3, "WorkflowCancelled")
        ]
    );
    assert_eq!(
        events.body["events"][1]["data"]["payload"],
        json!({"approved_by": "ana"})
    );

    // A cancelled workflow takes no more signals, and says why.
    let late = system
        .post(
            &format!("{}/v1/workflows/{id}/signals/approve", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(late.status, 409);
    assert_eq!(
        late.header("content-type"),
        Some("application/problem+json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_by_status_and_pages_with_a_cursor() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let reply = system
            .post(
                &format!("{}/v1/workflows", commands.url),
                &research_workflow(),
            )
            .await;
        ids.push(reply.body["workflow_id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..2] {
        let reply = system
            .post(
                &format!("{}/v1/workflows/{id}/cancel", commands.url),
                &json!({}),
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    // The runs sit on three partitions, projected in no particular order: wait until every
    // submission and both cancellations are in before paging.
    for (query, expected) in [("", 5), ("status=cancelled&", 2)] {
        let url = format!("{}/v1/workflows?{query}limit=100", queries.url);
        eventually(Duration::from_secs(30), || async {
            let reply = system.get(&url).await;
            (reply.body["items"].as_array().map_or(0, Vec::len) == expected).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{expected} runs visible at {url}"));
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/workflows?limit=2", queries.url);
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = system.get(&url).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every workflow once, newest first");

    let pending = system
        .graphql(
            &queries.url,
            "{ workflows(filter: {status: \"pending\"}, first: 10) { nodes { id status } pageInfo { hasNextPage } } }",
        )
        .await;
    assert_eq!(
        pending["data"]["workflows"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        pending["data"]["workflows"]["pageInfo"]["hasNextPage"],
        false
    );

    let bad = system
        .get(&format!("{}/v1/workflows?status=sleeping", queries.url))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["parameter"], "status");
    let bad = system
        .get(&format!("{}/v1/workflows?limit=0", queries.url))
        .await;
    assert_eq!(bad.status, 400);
    let bad = system
        .get(&format!("{}/v1/workflows?cursor=nonsense", queries.url))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_problem_naming_the_field_and_nothing_is_appended() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service_with(4 * 1024).await;
    let queries = system.query_service().await;
    let submit_url = format!("{}/v1/workflows", commands.url);

    let malformed = system
        .send(
            system
                .http
                .post(&submit_url)
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(malformed.body["status"], 400);

    let step =
        |id: &str, kind: &str, deps: &[&str]| json!({"id": id, "kind": kind, "depends_on": deps});
    let cases = [
        (json!({"steps": [step("a", "llm", &[])]}), "name"),
        (
            json!({"name": "  ", "steps": [step("a", "llm", &[])]}),
            "name",
        ),
        (json!({"name": "x", "steps": []}), "steps"),
        (json!({"name": "x"}), "steps"),
        (
            json!({"name": "x", "steps": [step("a", "llm", &[]), step("a", "http", &[])]}),
            "steps[1].id",
        ),
        (
            json!({"name": "x", "steps": [step("a", "teleport", &[])]}),
            "steps[0].kind",
        ),
        (
            json!({"name": "x", "steps": [step("a", "llm", &["ghost"])]}),
            "steps[0].depends_on[0]",
        ),
        (
            json!({"name": "x", "steps": [step("a", "llm", &["b"]), step("b", "llm", &["a"])]}),
            "steps",
        ),
        (
            json!({"name": 42, "steps": [step("a", "llm", &[])]}),
            "name",
        ),
    ];
    for (body, field) in cases {
        let reply = system.post(&submit_url, &body).await;
        assert_eq!(reply.status, 422, "{body} → {:?}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        let fields: Vec<&str> = reply.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field} in {fields:?}"
        );
    }
    let cycle = system
        .post(
            &submit_url,
            &json!({"name": "x", "steps": [step("a", "llm", &["b"]), step("b", "llm", &["a"])]}),
        )
        .await;
    assert!(
        cycle.body["detail"].as_str().unwrap().contains("cycle"),
        "{:?}",
        cycle.body
    );

    let huge = json!({"name": "x".repeat(8 * 1024), "steps": [step("a", "llm", &[])]});
    let too_large = system.post(&submit_url, &huge).await;
    assert_eq!(too_large.status, 413, "{:?}", too_large.body);
    assert_eq!(
        too_large.header("content-type"),
        Some("application/problem+json")
    );

    let unknown = uuid::Uuid::now_v7();
    for url in [
        format!("{}/v1/workflows/{unknown}/cancel", commands.url),
        format!("{}/v1/workflows/{unknown}/signals/go", commands.url),
        format!("{}/v1/workflows/not-a-uuid/cancel", commands.url),
    ] {
        let reply = system.post(&url, &json!({})).await;
        assert_eq!(reply.status, 404, "{url}: {:?}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
    for url in [
        format!("{}/v1/workflows/{unknown}", queries.url),
        format!("{}/v1/workflows/{unknown}/events", queries.url),
    ] {
        let reply = system.get(&url).await;
        assert_eq!(reply.status, 404, "{url}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }

    assert_eq!(system.stored_events().await, 0, "nothing stored");
    assert_eq!(system.records_on_log().await, 0, "nothing on the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_and_graphql_errors_are_clear() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;
    let page = system.get(&format!("{}/graphql", queries.url)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.as_str().unwrap().contains("graphiql"));

    let missing = system
        .graphql(
            &queries.url,
            &format!("{{ workflow(id: \"{}\") {{ id }} }}", uuid::Uuid::now_v7()),
        )
        .await;
    assert_eq!(missing["data"]["workflow"], Value::Null);

    let invalid = system
        .graphql(
            &queries.url,
            "{ workflows(filter: {status: \"sleeping\"}) { nodes { id } } }",
        )
        .await;
    assert_eq!(
        invalid["errors"][0]["extensions"]["code"],
        "invalid-parameter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_do_not_see_each_others_workflows() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let reply = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows", commands.url))
                .header("x-tenant-id", "acme")
                .json(&research_workflow()),
        )
        .await;
    let id = reply.body["workflow_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), || async {
        let reply = system
            .send(
                system
                    .http
                    .get(format!("{}/v1/workflows/{id}", queries.url))
                    .header("x-tenant-id", "acme"),
            )
            .await;
        (reply.status == 200).then_some(())
    })
    .await
    .expect("visible to its tenant");
    let other = system
        .get(&format!("{}/v1/workflows/{id}", queries.url))
        .await;
    assert_eq!(other.status, 404);
    let cancel = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status, 404, "another tenant cannot cancel it");
}
