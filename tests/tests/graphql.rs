//! The GraphQL API end to end over real HTTP, broker and PostgreSQL: a paged connection
//! with filters, nested steps, events and graph fields, the state at a past time, batching
//! (a page costs the same number of SQL statements whatever its size), query limits and
//! Apollo Federation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{Running, TestSystem, eventually};

async fn submit(system: &TestSystem, commands: &Running, body: Value) -> String {
    let reply = system
        .post(&format!("{}/v1/workflows", commands.url), &body)
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

fn pipeline(name: &str) -> Value {
    json!({"name": name, "steps": [
        {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}},
        {"id": "fetch", "kind": "http"},
        {"id": "summarize", "kind": "llm", "depends_on": ["search", "fetch"], "config": {"model": "gpt-x"}},
        {"id": "review", "kind": "llm", "depends_on": ["summarize"], "config": {"model": "claude"}}
    ]})
}

/// The `errors[0].extensions.code` of a response, with its message for failures.
fn error_code(response: &Value) -> (String, String) {
    let error = &response["errors"][0];
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_page_through_a_connection_and_count_by_status() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        let body = if i % 2 == 0 {
            pipeline(&format!("research {i}"))
        } else {
            json!({"name": format!("chat {i}"), "steps": [{"id": "ask", "kind": "llm", "config": {"model": "small"}}]})
        };
        submitted.push(submit(&system, &commands, body).await);
    }
    let cancel = system
        .post(
            &format!("{}/v1/workflows/{}/cancel", commands.url, submitted[1]),
            &json!({"reason": "not needed"}),
        )
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    // Five runs in, then the cancellation: a pending run matches "version = 1" until its
    // cancellation is projected, so one combined count would not wait for it.
    system
        .wait_for_count("SELECT count(*) FROM workflows", 5)
        .await;
    system
        .wait_for_count(
            "SELECT count(*) FROM workflows WHERE status = 'cancelled'",
            1,
        )
        .await;

    let mut seen = Vec::new();
    let mut after = None::<String>;
    let mut pages = 0;
    loop {
        let after_arg = after
            .as_ref()
            .map(|cursor| format!(", after: \"{cursor}\""))
            .unwrap_or_default();
        let page = system
            .graphql(
                &queries.url,
                &format!(
                    "{{ workflows(first: 2{after_arg}) {{ edges {{ cursor node {{ id name }} }} \
                     pageInfo {{ hasNextPage endCursor }} }} }}"
                ),
            )
            .await;
        let connection = &page["data"]["workflows"];
        let edges = connection["edges"].as_array().expect("edges");
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        if !connection["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        assert_eq!(
            connection["pageInfo"]["endCursor"],
            edges.last().unwrap()["cursor"],
            "the page ends at its last edge"
        );
        after = connection["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "every workflow once, newest first");

    let pending = system
        .graphql(
            &queries.url,
            "{ workflows(filter: {status: \"cancelled\"}) { nodes { id status cancelReason } } }",
        )
        .await;
    assert_eq!(
        pending["data"]["workflows"]["nodes"],
        json!([{"id": submitted[1], "status": "cancelled", "cancelReason": "not needed"}])
    );

    let counts = system
        .graphql(
            &queries.url,
            "{ all: workflowCounts { total byStatus { status count } } \
               research: workflowCounts(filter: {name: \"RESEARCH\", tool: \"web/search\"}) { total } \
               small: workflowCounts(filter: {model: \"small\"}) { total byStatus { status count } } }",
        )
        .await;
    let data = &counts["data"];
    assert_eq!(data["all"]["total"], 5);
    assert_eq!(
        data["all"]["byStatus"],
        json!([
            {"status": "pending", "count": 4},
            {"status": "running", "count": 0},
            {"status": "paused", "count": 0},
            {"status": "succeeded", "count": 0},
            {"status": "failed", "count": 0},
            {"status": "cancelled", "count": 1}
        ])
    );
    assert_eq!(data["research"]["total"], 3);
    assert_eq!(data["small"]["total"], 2);
    assert_eq!(
        data["small"]["byStatus"][5],
        json!({"status": "cancelled", "count": 1})
    );

    let refused = system
        .graphql(
            &queries.url,
            "{ workflows(filter: {status: \"asleep\"}) { nodes { id } } }",
        )
        .await;
    let (code, message) = error_code(&refused);
    assert_eq!(code, "invalid-parameter", "{message}");
    assert!(
        message.starts_with("status: unknown status 'asleep'"),
        "{message}"
    );
    assert_eq!(refused["errors"][0]["extensions"]["parameter"], "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_shows_its_steps_events_and_place_in_the_graph() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let research = submit(&system, &commands, pipeline("research")).await;
    let other = submit(&system, &commands, pipeline("research again")).await;
    let unrelated = submit(
        &system,
        &commands,
        json!({"name": "chat", "steps": [{"id": "ask", "kind": "llm", "config": {"model": "gpt-x"}}]}),
    )
    .await;

    let query = format!(
        "{{ workflow(id: \"{research}\") {{ name tools models \
           events {{ version type }} \
           runsUsingSameTools {{ id name shared workflow {{ id status }} }} \
           runsUsingSameModels {{ id shared }} \
           steps {{ id tool model dependencies {{ id }} dependents {{ id }} \
             transitiveDependencies(depth: 5) {{ depth step {{ id kind }} }} \
             transitiveDependents {{ depth step {{ id }} }} }} }} }}"
    );
    let queries_url = queries.url.clone();
    let system = &system;
    let query = &query;
    // The read model and the graph view are projected independently, and the three runs
    // may sit on different partitions: wait for all three in the read model, then for this
    // run's graph and its neighbours'.
    system
        .wait_for_count("SELECT count(*) FROM workflows", 3)
        .await;
    let workflow = eventually(Duration::from_secs(30), || {
        let url = queries_url.clone();
        async move {
            let reply = system.graphql(&url, query).await;
            let workflow = reply["data"]["workflow"].clone();
            let own_graph = workflow["steps"].as_array().is_some_and(|steps| {
                steps.iter().any(|step| {
                    step["transitiveDependencies"]
                        .as_array()
                        .is_some_and(|d| !d.is_empty())
                })
            });
            (own_graph && workflow["runsUsingSameModels"].as_array().map(Vec::len) == Some(2))
                .then_some(workflow)
        }
    })
    .await
    .expect("the workflow and both graph neighbours are visible");

    assert_eq!(workflow["name"], "research");
    assert_eq!(workflow["tools"], json!(["web/search"]));
    assert_eq!(workflow["models"], json!(["claude", "gpt-x"]));
    assert_eq!(
        workflow["events"],
        json!([{"version": 1, "type": "WorkflowSubmitted"}])
    );
    assert_eq!(
        workflow["runsUsingSameTools"],
        json!([{"id": other, "name": "research again", "shared": ["web/search"],
                "workflow": {"id": other, "status": "pending"}}])
    );
    // Newest first.
    assert_eq!(
        workflow["runsUsingSameModels"],
        json!([{"id": unrelated, "shared": ["gpt-x"]},
               {"id": other, "shared": ["claude", "gpt-x"]}])
    );
    let steps = workflow["steps"].as_array().unwrap();
    let step = |id: &str| steps.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(step("search")["tool"], "web/search");
    assert_eq!(step("summarize")["model"], "gpt-x");
    assert_eq!(
        step("summarize")["dependencies"],
        json!([{"id": "search"}, {"id": "fetch"}])
    );
    assert_eq!(step("summarize")["dependents"], json!([{"id": "review"}]));
    assert_eq!(step("search")["dependents"], json!([{"id": "summarize"}]));
    let mut upstream = step("review")["transitiveDependencies"]
        .as_array()
        .unwrap()
        .clone();
    upstream.sort_by_key(|s| {
        (
            s["depth"].as_u64(),
            s["step"]["id"].as_str().map(str::to_owned),
        )
    });
    assert_eq!(
        upstream,
        vec![
            json!({"depth": 1, "step": {"id": "summarize", "kind": "llm"}}),
            json!({"depth": 2, "step": {"id": "fetch", "kind": "http"}}),
            json!({"depth": 2, "step": {"id": "search", "kind": "mcp_tool"}}),
        ]
    );
    assert_eq!(
        step("fetch")["transitiveDependents"],
        json!([{"depth": 1, "step": {"id": "summarize"}}, {"depth": 2, "step": {"id": "review"}}])
    );

    let too_deep = system
        .graphql(
            &queries.url,
            &format!(
                "{{ workflow(id: \"{research}\") {{ steps {{ transitiveDependencies(depth: 51) {{ depth }} }} }} }}"
            ),
        )
        .await;
    let (code, message) = error_code(&too_deep);
    assert_eq!(code, "invalid-parameter", "{message}");
    assert_eq!(message, "depth: must be between 1 and 50");

    let missing = system
        .graphql(
            &queries.url,
            "{ workflow(id: \"00000000-0000-7000-8000-000000000000\") { id } }",
        )
        .await;
    assert_eq!(missing["data"]["workflow"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_answers_with_the_state_before_and_after_a_cancel() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let before_submit = chrono::Utc::now();
    let id = submit(&system, &commands, pipeline("research")).await;
    let before_cancel = chrono::Utc::now();
    let cancel = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({"reason": "wrong topic"}),
        )
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.body);
    system
        .wait_for_count("SELECT count(*) FROM workflow_events", 2)
        .await;

    let selection = "status version asOf cancelReason submittedAt updatedAt \
                     steps { id status } events { version type }";
    let at = |time: chrono::DateTime<chrono::Utc>| {
        let rfc3339 = time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        format!("{{ workflow(id: \"{id}\", asOf: \"{rfc3339}\") {{ {selection} }} }}")
    };
    let before = system.graphql(&queries.url, &at(before_cancel)).await;
    let before = &before["data"]["workflow"];
    assert_eq!(before["status"], "pending");
    assert_eq!(before["version"], 1);
    assert_eq!(before["cancelReason"], Value::Null);
    assert!(
        before["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "pending"),
        "{before}"
    );
    assert_eq!(
        before["events"],
        json!([{"version": 1, "type": "WorkflowSubmitted"}])
    );
    assert_eq!(before["submittedAt"], before["updatedAt"]);
    assert!(before["asOf"].is_string());

    let now = system.graphql(&queries.url, &at(chrono::Utc::now())).await;
    let now = &now["data"]["workflow"];
    assert_eq!(now["status"], "cancelled");
    assert_eq!(now["version"], 2);
    assert_eq!(now["cancelReason"], "wrong topic");
    assert_eq!(now["events"].as_array().unwrap().len(), 2);
    assert_eq!(now["submittedAt"], before["submittedAt"]);
    // The historical view of now is the current view.
    let current = system
        .graphql(
            &queries.url,
            &format!("{{ workflow(id: \"{id}\") {{ {selection} }} }}"),
        )
        .await;
    let current = &current["data"]["workflow"];
    for field in [
        "status",
        "version",
        "cancelReason",
        "steps",
        "events",
        "submittedAt",
        "updatedAt",
    ] {
        assert_eq!(now[field], current[field], "{field}");
    }
    assert_eq!(current["asOf"], Value::Null);

    let too_early = system.graphql(&queries.url, &at(before_submit)).await;
    let (code, message) = error_code(&too_early);
    assert_eq!(code, "not-yet-existing", "{message}");
    let future = system
        .graphql(
            &queries.url,
            &at(chrono::Utc::now() + chrono::Duration::days(1)),
        )
        .await;
    let (code, message) = error_code(&future);
    assert_eq!(code, "invalid-parameter", "{message}");
    assert!(message.starts_with("asOf: "), "{message}");
}

/// Counts the SQL statements sqlx executes in this process (its `sqlx::query` events, one
/// per statement sent to PostgreSQL).
struct StatementCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_costs_the_same_statements_for_10_and_100_workflows() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    let statements = Arc::new(AtomicUsize::new(0));
    let counter = StatementCounter(statements.clone()).with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::TRACE),
    );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(counter))
        .expect("this test owns its process (cargo nextest)");

    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    for i in 0..100 {
        submit(&system, &commands, pipeline(&format!("research {i}"))).await;
    }
    system
        .wait_for_count("SELECT count(*) FROM workflows", 100)
        .await;
    system
        .wait_for_count("SELECT count(*) FROM graph_nodes WHERE kind = 'run'", 100)
        .await;
    // Only the query service runs statements from here on.
    projectors.stop().await;
    commands.stop().await;

    let page = |first: usize| {
        format!(
            "{{ workflows(first: {first}) {{ edges {{ cursor node {{ id name status \
               steps {{ id status dependencies {{ id }} dependents {{ id }} }} \
               events {{ version type }} runsUsingSameTools(first: 3) {{ id }} }} }} \
               pageInfo {{ hasNextPage }} }} }}"
        )
    };
    let mut counted = Vec::new();
    for first in [100, 10, 100] {
        let before = statements.load(Ordering::SeqCst);
        let reply = system.graphql(&queries.url, &page(first)).await;
        let after = statements.load(Ordering::SeqCst);
        assert!(reply["errors"].is_null(), "{}", reply["errors"]);
        let edges = reply["data"]["workflows"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), first);
        assert!(
            edges
                .iter()
                .all(|e| e["node"]["steps"].as_array().unwrap().len() == 4
                    && e["node"]["events"].as_array().unwrap().len() == 1
                    && e["node"]["runsUsingSameTools"].as_array().unwrap().len() == 3)
        );
        counted.push(after - before);
    }
    // The first query may open connections; compare the two that follow it.
    assert_eq!(
        counted[1], counted[2],
        "statements for 10 vs 100: {counted:?}"
    );
    // workflows, their steps, their events, the runs calling the one shared tool.
    assert!(counted[2] <= 4, "statements per page: {counted:?}");
    assert!(counted[2] > 0, "the counter sees the service's statements");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_limits_are_refused_with_a_clear_error() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;

    let deep = system
        .graphql(
            &queries.url,
            "{ workflows { edges { node { steps { dependencies { dependencies { dependencies { dependencies \
               { dependencies { dependencies { dependencies { dependencies { id } } } } } } } } } } } } }",
        )
        .await;
    let (code, message) = error_code(&deep);
    assert_eq!(code, "query-too-deep", "{message}");
    assert_eq!(
        message,
        "the query is nested 13 levels deep; at most 12 are allowed (GRAPHQL_MAX_DEPTH)"
    );
    assert_eq!(deep["errors"][0]["extensions"]["limit"], 12);
    assert!(deep["data"].is_null());

    // 100 workflows × (1 + 10 steps × 50 hops × 2 fields) > 50 000.
    let complex = system
        .graphql(
            &queries.url,
            "{ workflows(first: 100) { nodes { id steps { transitiveDependents(depth: 50) { depth step { id } } } } } }",
        )
        .await;
    let (code, message) = error_code(&complex);
    assert_eq!(code, "query-too-complex", "{message}");
    assert!(
        message.contains("at most 50000 is allowed (GRAPHQL_MAX_COMPLEXITY)"),
        "{message}"
    );
    assert!(
        complex["errors"][0]["extensions"]["complexity"]
            .as_u64()
            .unwrap()
            > 50_000
    );

    // A page of 100 workflows with steps and events is within the defaults.
    let page = system
        .graphql(
            &queries.url,
            "{ workflows(first: 100) { nodes { id steps { id status dependsOn } events { version type } } } }",
        )
        .await;
    assert!(page["errors"].is_null(), "{}", page["errors"]);

    // The limits are settings.
    let strict = system
        .query_service_with(query_service::GraphqlLimits {
            max_depth: 3,
            max_complexity: 50,
            ..Default::default()
        })
        .await;
    let refused = system
        .graphql(&strict.url, "{ workflows { nodes { id name } } }")
        .await;
    let (code, message) = error_code(&refused);
    assert_eq!(code, "query-too-complex", "{message}");
    let refused = system
        .graphql(
            &strict.url,
            "{ workflows(first: 1) { nodes { steps { dependencies { id } } } } }",
        )
        .await;
    assert_eq!(error_code(&refused).0, "query-too-deep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_resolves_workflow_entities_of_the_callers_tenant() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let send = |tenant: &str, query: String| {
        system.send(
            system
                .http
                .post(format!("{}/graphql", queries.url))
                .header("x-tenant-id", tenant)
                .json(&json!({ "query": query })),
        )
    };
    let acme = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows", commands.url))
                .header("x-tenant-id", "acme")
                .json(&pipeline("acme research")),
        )
        .await;
    assert_eq!(acme.status, 201, "{:?}", acme.body);
    let acme = acme.body["workflow_id"].as_str().unwrap().to_owned();
    let other = submit(&system, &commands, pipeline("default research")).await;
    system
        .wait_for_count("SELECT count(*) FROM workflows", 2)
        .await;

    let sdl = system.graphql(&queries.url, "{ _service { sdl } }").await;
    let sdl = sdl["data"]["_service"]["sdl"].as_str().unwrap();
    assert!(
        sdl.contains("extend schema @link(")
            && sdl.contains("url: \"https://specs.apollo.dev/federation/v2."),
        "{sdl}"
    );
    assert!(sdl.contains("type Workflow @key(fields: \"id\")"), "{sdl}");

    let entities = format!(
        "{{ _entities(representations: [\
           {{__typename: \"Workflow\", id: \"{acme}\"}}, \
           {{__typename: \"Workflow\", id: \"{other}\"}}]) \
           {{ ... on Workflow {{ id name tenant steps {{ id }} }} }} }}"
    );
    let reply = send("acme", entities.clone()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.body["data"]["_entities"],
        json!([
            {"id": acme, "name": "acme research", "tenant": "acme",
             "steps": [{"id": "search"}, {"id": "fetch"}, {"id": "summarize"}, {"id": "review"}]},
            null
        ]),
        "another tenant's workflow is not resolved"
    );
    let reply = send("default", entities).await;
    assert_eq!(reply.body["data"]["_entities"][0], Value::Null);
    assert_eq!(
        reply.body["data"]["_entities"][1]["name"],
        "default research"
    );
}
