//! The graph view end to end: submitted workflows become runs, steps, tools, models and
//! principals that the query service answers questions about.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{TestSystem, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_answers_which_runs_used_what_and_where_outputs_come_from() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let system = &system;
    // Ana's own token: the principal on the log is the token's subject.
    let ana = system_tests::auth::client_with(&system_tests::auth::token_for(
        "ana",
        system_tests::auth::PLATFORM_TENANT,
        flowline_access::Role::Submitter,
        chrono::Duration::hours(1),
    ));
    let submit = |body: Value| {
        let request = ana
            .post(format!("{}/v1/workflows", commands.url))
            .json(&body);
        async move {
            let reply = system.send(request).await;
            assert_eq!(reply.status, 201, "{:?}", reply.body);
            reply.body["workflow_id"].as_str().unwrap().to_owned()
        }
    };
    let research = submit(json!({"name": "research", "steps": [
        {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}},
        {"id": "fetch", "kind": "http"},
        {"id": "summarize", "kind": "llm", "depends_on": ["search", "fetch"], "config": {"model": "gpt-x"}},
        {"id": "review", "kind": "llm", "depends_on": ["summarize"], "config": {"model": "claude"}}
    ]}))
    .await;
    let quick = submit(json!({"name": "quick", "steps": [{"id": "ask", "kind": "llm", "config": {"model": "gpt-x"}}]})).await;

    let base = queries.url.clone();
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { system.get(&url).await }
    };
    let by_model = eventually(Duration::from_secs(30), || async move {
        let reply = get("/v1/graph/runs?model=gpt-x".into()).await;
        (reply.body["runs"].as_array().map(Vec::len) == Some(2)).then_some(reply.body)
    })
    .await
    .expect("both runs in the graph");
    let mut ids: Vec<&str> = by_model["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![research.as_str(), quick.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let by_tool = get("/v1/graph/runs?tool=web/search".into()).await;
    assert_eq!(
        by_tool.body["runs"],
        json!([{"run": research, "name": "research"}])
    );

    // The step questions check the run exists in the read model (its own projection).
    let research_path = format!("/v1/workflows/{research}");
    let known = eventually(Duration::from_secs(30), || {
        let path = research_path.clone();
        async move { (get(path).await.status == 200).then_some(()) }
    })
    .await;
    assert!(known.is_some());
    let dependencies = get(format!(
        "/v1/workflows/{research}/steps/review/dependencies"
    ))
    .await;
    assert_eq!(
        dependencies.body["result"]["steps"],
        json!([{"depth": 1, "step": "summarize"}, {"depth": 2, "step": "fetch"}, {"depth": 2, "step": "search"}])
    );
    let shallow = get(format!(
        "/v1/workflows/{research}/steps/review/dependencies?depth=1"
    ))
    .await;
    assert_eq!(
        shallow.body["result"]["steps"],
        json!([{"depth": 1, "step": "summarize"}])
    );
    let dependents = get(format!("/v1/workflows/{research}/steps/search/dependents")).await;
    assert_eq!(
        dependents.body["result"]["steps"],
        json!([{"depth": 1, "step": "summarize"}, {"depth": 2, "step": "review"}])
    );

    let lineage = get(format!("/v1/workflows/{research}/steps/review/lineage")).await;
    assert_eq!(lineage.body["result"]["tools"], json!(["web/search"]));
    assert_eq!(lineage.body["result"]["models"], json!(["claude", "gpt-x"]));
    assert_eq!(lineage.body["result"]["submitted_by"], "ana");

    assert_eq!(
        get(format!("/v1/workflows/{research}/steps/nope/lineage"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(format!(
            "/v1/workflows/{research}/steps/review/lineage?depth=0"
        ))
        .await
        .status,
        400
    );
    assert_eq!(get("/v1/graph/runs".into()).await.status, 400);
    let other_tenant = system
        .send(
            system_tests::client_as("globex", flowline_access::Role::Reader)
                .get(format!("{}/v1/graph/runs?model=gpt-x", queries.url)),
        )
        .await;
    assert_eq!(other_tenant.body["runs"], json!([]));
}
