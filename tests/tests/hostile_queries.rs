//! Hostile queries against the query service, over real HTTP, broker and PostgreSQL: each
//! is refused with a clear error naming its limit and setting, or answered within a bound,
//! and is followed by a plain submit and read that must still work.
//!
//! - a 200-byte GraphQL query nesting `dependents { dependencies { … } }` seven deep over a
//!   20-step run (within the depth limit), and answers that grow past their budget;
//! - graph walks over a 50-step ladder (each step depending on the two before it: the
//!   number of paths grows as Fibonacci's), through REST and GraphQL, at full depth;
//! - alias and field floods, `asOf` floods, a huge `/graphql` body;
//! - a read that runs into the statement timeout;
//! - pages of a run's events (GraphQL) and of the runs using a tool (REST);
//! - the Dgraph adapter end to end, on a fake alpha.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use system_tests::fake_dgraph::FakeDgraph;
use system_tests::{Running, TestSystem, eventually};

/// Generous for a loaded CI machine, far below what unbounded answers take (minutes, or
/// gigabytes until the process dies).
const BOUND: Duration = Duration::from_secs(10);

/// A run of `n` steps, each depending on every step before it.
fn dense(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let before: Vec<String> = (0..i).map(|j| format!("s{j:02}")).collect();
            json!({"id": format!("s{i:02}"), "kind": "http", "depends_on": before})
        })
        .collect();
    json!({"name": "dense", "steps": steps})
}

/// A run of `n` steps, each depending on the two before it.
fn ladder(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let before: Vec<String> = (i.saturating_sub(2)..i)
                .map(|j| format!("s{j:02}"))
                .collect();
            json!({"id": format!("s{i:02}"), "kind": "http", "depends_on": before})
        })
        .collect();
    json!({"name": "ladder", "steps": steps})
}

/// POSTs a GraphQL query; the status, the body, and how long it took.
async fn graphql(system: &TestSystem, queries: &Running, query: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let reply = system
        .post(
            &format!("{}/graphql", queries.url),
            &json!({ "query": query }),
        )
        .await;
    (reply.status, reply.body, started.elapsed())
}

/// The first error's code and message.
fn error(answer: &Value) -> (String, String) {
    let error = &answer["errors"][0];
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Waits until the read model has the run.
async fn readable(system: &TestSystem, queries: &Running, id: &str) {
    let read = eventually(Duration::from_secs(60), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{id}", queries.url))
            .await;
        (reply.status == 200).then_some(())
    })
    .await;
    assert!(read.is_some(), "run {id} never became readable");
}

/// Waits until the graph view answers the walk at `path` with `count` steps; its answer.
async fn walked(system: &TestSystem, queries: &Running, path: &str, count: usize) -> Value {
    eventually(Duration::from_secs(60), || async {
        let reply = system.get(&format!("{}{path}", queries.url)).await;
        let steps = reply.body["result"]["steps"].as_array().map(Vec::len);
        (reply.status == 200 && steps == Some(count)).then_some(reply.body)
    })
    .await
    .unwrap_or_else(|| panic!("{path} never reached {count} steps"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_step_graph_query_is_refused_and_a_growing_answer_stops_at_its_budget() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = system.submit(&commands.url, &dense(20)).await;
    readable(&system, &queries, &id).await;

    // 19^7 steps if it ran: refused before it runs, naming the limit and its setting.
    let nested = format!(
        "{{ workflow(id: \"{id}\") {{ steps {{ dependents {{ dependencies {{ dependents {{ \
         dependencies {{ dependents {{ dependencies {{ dependents {{ id }} }} }} }} }} }} }} }} }} }}"
    );
    assert!(nested.len() < 260, "{} bytes", nested.len());
    let (status, answer, took) = graphql(&system, &queries, &nested).await;
    assert_eq!(status, 200);
    let (code, message) = error(&answer);
    assert_eq!(code, "query-too-complex", "{answer}");
    assert!(message.contains("GRAPHQL_MAX_COMPLEXITY"), "{message}");
    assert!(answer["data"].is_null(), "nothing ran: {answer}");
    assert!(took < BOUND, "refused in {took:?}");
    system.still_serves(&commands, &queries).await;

    // Within the static limit, the real fan-out is charged while the answer grows: the
    // 20-step run's dependents of dependencies of dependents hold ~33 000 values.
    let growing = format!(
        "{{ workflow(id: \"{id}\") {{ steps {{ dependents {{ dependencies {{ dependents {{ id }} }} }} }} }} }}"
    );
    let (_, answer, took) = graphql(&system, &queries, &growing).await;
    let (code, message) = error(&answer);
    assert_eq!(code, "", "the default budget answers it: {message}");
    assert!(took < BOUND, "answered in {took:?}");
    let budgeted = system
        .query_service_with(query_service::GraphqlLimits {
            max_answer_values: 5_000,
            ..Default::default()
        })
        .await;
    let (_, answer, took) = graphql(&system, &budgeted, &growing).await;
    let (code, message) = error(&answer);
    assert_eq!(code, "answer-too-large", "{answer}");
    assert!(message.contains("GRAPHQL_MAX_ANSWER_VALUES"), "{message}");
    assert!(took < BOUND, "stopped in {took:?}");
    system.still_serves(&commands, &budgeted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_over_a_ladder_visit_each_step_once_at_any_depth() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = system.submit(&commands.url, &ladder(50)).await;
    readable(&system, &queries, &id).await;
    let base = format!("/v1/workflows/{id}/steps");
    walked(
        &system,
        &queries,
        &format!("{base}/s49/dependencies?depth=50"),
        49,
    )
    .await;

    // Now that the graph view has the run, every walk at full depth is bounded.
    for (path, nearest, farthest) in [
        ("s49/dependencies", "s47", "s00"),
        ("s00/dependents", "s01", "s49"),
        ("s49/lineage", "s47", "s00"),
    ] {
        let started = Instant::now();
        let reply = system
            .get(&format!("{}{base}/{path}?depth=50", queries.url))
            .await;
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{}", reply.body);
        let steps = reply.body["result"]["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 49, "{path}");
        assert_eq!(steps[0], json!({"depth": 1, "step": nearest}), "{path}");
        assert_eq!(steps[48], json!({"depth": 25, "step": farthest}), "{path}");
        assert!(took < Duration::from_secs(2), "{path} took {took:?}");
    }
    let query = format!(
        "{{ workflow(id: \"{id}\") {{ steps {{ id \
           transitiveDependencies(depth: 50) {{ depth step {{ id }} }} \
           transitiveDependents(depth: 50) {{ depth }} }} }} }}"
    );
    let (_, answer, took) = graphql(&system, &queries, &query).await;
    assert!(answer["errors"].is_null(), "{answer}");
    let steps = answer["data"]["workflow"]["steps"].as_array().unwrap();
    assert_eq!(
        steps[49]["transitiveDependencies"]
            .as_array()
            .unwrap()
            .len(),
        49
    );
    assert_eq!(
        steps[0]["transitiveDependents"].as_array().unwrap().len(),
        49
    );
    assert!(took < Duration::from_secs(2), "GraphQL walks took {took:?}");
    system.still_serves(&commands, &queries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_aliases_fields_as_of_lookups_and_bytes_are_refused() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "target", "steps": [{"id": "a", "kind": "http"}]}),
        )
        .await;
    readable(&system, &queries, &id).await;

    // Aliases: each a lookup of its own.
    let aliases: String = (0..100)
        .map(|i| format!("a{i}: workflow(id: \"{id}\") {{ id }} "))
        .collect();
    let (_, answer, took) = graphql(&system, &queries, &format!("{{ {aliases}}}")).await;
    let (code, message) = error(&answer);
    assert_eq!(code, "query-too-large", "{answer}");
    assert!(
        message.contains("aliases") && message.contains("GRAPHQL_MAX_ALIASES"),
        "{message}"
    );
    assert!(took < BOUND);
    system.still_serves(&commands, &queries).await;

    // Fields, also when spread from a fragment many times.
    let fields = "name ".repeat(2_000);
    let (_, answer, _) = graphql(
        &system,
        &queries,
        &format!("{{ workflow(id: \"{id}\") {{ {fields} }} }}"),
    )
    .await;
    let (code, message) = error(&answer);
    assert_eq!(code, "query-too-large", "{answer}");
    assert!(
        message.contains("fields") && message.contains("GRAPHQL_MAX_FIELDS"),
        "{message}"
    );
    let spreads = "...f ".repeat(100);
    let (_, answer, _) = graphql(
        &system,
        &queries,
        &format!(
            "query {{ workflow(id: \"{id}\") {{ {spreads} }} }} \
             fragment f on Workflow {{ id name status version tenant }}"
        ),
    )
    .await;
    assert_eq!(error(&answer).0, "query-too-large", "{answer}");
    system.still_serves(&commands, &queries).await;

    // `asOf` is costed by the replay it causes: 20 past lookups are too complex where 20
    // current ones are not.
    let now = chrono::Utc::now().to_rfc3339();
    let lookups = |as_of: &str| -> String {
        (0..20)
            .map(|i| format!("w{i}: workflow(id: \"{id}\"{as_of}) {{ status }} "))
            .collect()
    };
    let (_, answer, _) = graphql(&system, &queries, &format!("{{ {}}}", lookups(""))).await;
    assert!(answer["errors"].is_null(), "{answer}");
    let past = lookups(&format!(", asOf: \"{now}\""));
    let (_, answer, _) = graphql(&system, &queries, &format!("{{ {past}}}")).await;
    assert_eq!(error(&answer).0, "query-too-complex", "{answer}");
    system.still_serves(&commands, &queries).await;

    // A body over the limit is refused before it is read whole (just over it, so that
    // the client has sent it all when the answer comes and reads the answer, not a reset).
    let padding = " ".repeat(96 * 1024);
    let reply = system
        .post(
            &format!("{}/graphql", queries.url),
            &json!({"query": format!("{{ workflow(id: \"{id}\") {{ id }} }}{padding}")}),
        )
        .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        reply.body["setting"], "GRAPHQL_MAX_BODY_BYTES",
        "{}",
        reply.body
    );
    system.still_serves(&commands, &queries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_running_into_the_statement_timeout_answers_503_without_sql() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let mut config = system.query_config(
        5_000,
        query_service::GraphqlLimits::default(),
        query_service::ReadLimits::default(),
    );
    config.statements.statement_timeout_ms = 300;
    let queries = system.query_service_from(config).await;
    let _projectors = system.projectors().await;
    let id = system
        .submit(
            &commands.url,
            &json!({"name": "slow", "steps": [{"id": "a", "kind": "http"}]}),
        )
        .await;
    readable(&system, &queries, &id).await;

    // A lock held elsewhere makes every read of the table wait; the statement timeout
    // cancels the wait.
    let mut locker = system.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE workflows IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let started = Instant::now();
    let reply = system
        .get(&format!("{}/v1/workflows?limit=5", queries.url))
        .await;
    let took = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(
        reply.body["type"], "/problems/read-timed-out",
        "{}",
        reply.body
    );
    assert_eq!(reply.body["setting"], "QUERY_STATEMENT_TIMEOUT_MS");
    let text = reply.body.to_string().to_lowercase();
    assert!(
        !text.contains("select") && !text.contains("canceling"),
        "{text}"
    );
    assert!(took < BOUND, "took {took:?}");
    let (_, answer, _) = graphql(
        &system,
        &queries,
        "{ workflows(first: 5) { nodes { id } } }",
    )
    .await;
    assert_eq!(error(&answer).0, "read-timed-out", "{answer}");
    locker.rollback().await.unwrap();
    system.still_serves(&commands, &queries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_run_and_runs_using_a_tool_come_a_page_at_a_time() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let tool_run = |name: &str| {
        json!({"name": name, "steps": [
            {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}}
        ]})
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            system
                .submit(&commands.url, &tool_run(&format!("r{i}")))
                .await,
        );
    }
    for id in &ids {
        readable(&system, &queries, id).await;
    }
    let cancelled = system
        .post(
            &format!("{}/v1/workflows/{}/cancel", commands.url, ids[0]),
            &json!({"reason": "enough"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let first = &ids[0];
    eventually(Duration::from_secs(60), || async {
        let (_, answer, _) = graphql(
            &system,
            &queries,
            &format!("{{ workflow(id: \"{first}\") {{ events {{ version }} }} }}"),
        )
        .await;
        (answer["data"]["workflow"]["events"]
            .as_array()
            .map(Vec::len)
            == Some(2))
        .then_some(())
    })
    .await
    .expect("both events projected");

    // GraphQL: a page of one event, then the next after its version.
    let page = |after: &str| {
        format!("{{ workflow(id: \"{first}\") {{ events(first: 1{after}) {{ version type }} }} }}")
    };
    let (_, answer, _) = graphql(&system, &queries, &page("")).await;
    assert_eq!(
        answer["data"]["workflow"]["events"],
        json!([{"version": 1, "type": "WorkflowSubmitted"}])
    );
    let (_, answer, _) = graphql(&system, &queries, &page(", afterVersion: 1")).await;
    assert_eq!(
        answer["data"]["workflow"]["events"][0]["version"], 2,
        "{answer}"
    );
    let (_, answer, _) = graphql(&system, &queries, &page(", afterVersion: 2")).await;
    assert_eq!(answer["data"]["workflow"]["events"], json!([]));
    let (_, answer, _) = graphql(
        &system,
        &queries,
        &format!("{{ workflow(id: \"{first}\") {{ events(first: 100000) {{ version }} }} }}"),
    )
    .await;
    assert_eq!(error(&answer).0, "invalid-parameter", "{answer}");

    // REST: the runs calling a tool, two per page, oldest first.
    let runs = |query: String| {
        let system = &system;
        let url = format!("{}/v1/graph/runs?tool=web/search&{query}", queries.url);
        async move { system.get(&url).await }
    };
    let whole = eventually(Duration::from_secs(60), || async {
        let reply = runs("limit=10".into()).await;
        (reply.body["runs"].as_array().map(Vec::len) == Some(3)).then_some(reply)
    })
    .await
    .expect("the graph view has the three runs");
    assert!(whole.body["next_cursor"].is_null(), "{}", whole.body);
    let page1 = runs("limit=2".into()).await;
    let names: Vec<&str> = page1.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r0", "r1"]);
    let cursor = page1.body["next_cursor"].as_str().unwrap().to_owned();
    let page2 = runs(format!("limit=2&cursor={cursor}")).await;
    assert_eq!(page2.body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(page2.body["runs"][0]["name"], "r2");
    assert!(page2.body["next_cursor"].is_null());
    for bad in ["limit=0", "limit=5000", "cursor=nope"] {
        let reply = runs(bad.into()).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    system.still_serves(&commands, &queries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_and_queries_work_on_the_dgraph_adapter() {
    let alpha = FakeDgraph::start().await;
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let mut config = system.query_config(
        5_000,
        query_service::GraphqlLimits::default(),
        query_service::ReadLimits::default(),
    );
    config.graph.dgraph_url = Some(alpha.url.clone());
    let queries = system.query_service_from(config).await;
    let mut projectors = system.projectors_config(&system.database_url, &system.group_prefix());
    projectors.graph.dgraph_url = Some(alpha.url.clone());
    let _projectors = system.projectors_from(projectors).await;
    let pipeline = |name: &str| {
        json!({"name": name, "steps": [
            {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}},
            {"id": "fetch", "kind": "http"},
            {"id": "summarize", "kind": "llm", "depends_on": ["search", "fetch"], "config": {"model": "gpt-x"}},
            {"id": "review", "kind": "llm", "depends_on": ["summarize"], "config": {"model": "claude"}}
        ]})
    };
    let id = system.submit(&commands.url, &pipeline("research")).await;
    let other = system.submit(&commands.url, &pipeline("again")).await;
    readable(&system, &queries, &id).await;
    readable(&system, &queries, &other).await;

    let lineage = walked(
        &system,
        &queries,
        &format!("/v1/workflows/{id}/steps/review/lineage"),
        3,
    )
    .await;
    assert_eq!(
        lineage["result"],
        json!({
            "steps": [
                {"depth": 1, "step": "summarize"},
                {"depth": 2, "step": "fetch"},
                {"depth": 2, "step": "search"}
            ],
            "tools": ["web/search"],
            "models": ["claude", "gpt-x"],
            // The harness's token's subject.
            "submitted_by": "system-tests"
        })
    );
    let dependents = walked(
        &system,
        &queries,
        &format!("/v1/workflows/{id}/steps/fetch/dependents"),
        2,
    )
    .await;
    assert_eq!(
        dependents["result"]["steps"],
        json!([{"depth": 1, "step": "summarize"}, {"depth": 2, "step": "review"}])
    );
    let runs = eventually(Duration::from_secs(60), || async {
        let reply = system
            .get(&format!(
                "{}/v1/graph/runs?model=claude&limit=1",
                queries.url
            ))
            .await;
        (reply.body["runs"].as_array().map(Vec::len) == Some(1)
            && reply.body["next_cursor"].is_string())
        .then_some(reply)
    })
    .await
    .expect("both runs in the graph");
    assert_eq!(runs.body["runs"][0]["name"], "research");

    let query = format!(
        "{{ workflow(id: \"{id}\") {{ runsUsingSameTools {{ name }} \
           steps {{ id transitiveDependencies(depth: 5) {{ depth step {{ id }} }} }} }} }}"
    );
    let (_, answer, _) = graphql(&system, &queries, &query).await;
    assert!(answer["errors"].is_null(), "{answer}");
    assert_eq!(
        answer["data"]["workflow"]["runsUsingSameTools"],
        json!([{"name": "again"}])
    );
    assert_eq!(
        answer["data"]["workflow"]["steps"][3]["transitiveDependencies"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(alpha.node_count() > 8, "the projectors wrote to the alpha");
    let nodes_in_postgres = system.count("SELECT count(*) FROM graph_nodes").await;
    assert_eq!(nodes_in_postgres, 0, "the graph view lives in Dgraph");
    system.still_serves(&commands, &queries).await;
}
