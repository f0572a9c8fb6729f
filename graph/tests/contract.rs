//! The contract every `GraphStore` must honour, run against PostgreSQL always and against
//! Dgraph when `DGRAPH_URL` names a running alpha.

use flowline_graph::{
    DgraphGraph, GraphChange, GraphStore, PostgresGraph, RunChange, RunRef, StepNode, StepRef,
};
use uuid::Uuid;

fn step(
    id: &str,
    kind: &str,
    depends_on: &[&str],
    tool: Option<&str>,
    model: Option<&str>,
) -> StepNode {
    StepNode {
        id: id.into(),
        kind: kind.into(),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        tool: tool.map(Into::into),
        model: model.map(Into::into),
    }
}

fn submitted(
    tenant: &str,
    run: Uuid,
    name: &str,
    steps: Vec<StepNode>,
    by: Option<&str>,
) -> GraphChange {
    GraphChange {
        tenant: tenant.into(),
        run,
        version: 1,
        change: RunChange::Submitted {
            name: name.into(),
            steps,
            submitted_by: by.map(Into::into),
        },
    }
}

fn at(depth: u32, step: &str) -> StepRef {
    StepRef {
        depth,
        step: step.into(),
    }
}

async fn contract<G: GraphStore>(graph: &G) {
    graph.ensure_schema().await.unwrap();
    graph.ensure_schema().await.unwrap(); // idempotent at every start
    let (a, b, c, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let tenant = format!("acme-{}", Uuid::new_v4().simple());
    let other = format!("other-{}", Uuid::new_v4().simple());
    let changes = vec![
        submitted(
            &tenant,
            a,
            "research",
            vec![
                step("fetch", "http", &[], None, None),
                step("search", "mcp_tool", &[], Some("web/search"), None),
                step(
                    "summarize",
                    "llm",
                    &["fetch", "search"],
                    None,
                    Some("gpt-x"),
                ),
                step("review", "llm", &["summarize"], None, Some("claude")),
            ],
            Some("ana"),
        ),
        submitted(
            &tenant,
            b,
            "quick",
            vec![step("s1", "llm", &[], None, Some("gpt-x"))],
            None,
        ),
        submitted(
            &other,
            c,
            "elsewhere",
            vec![step("x", "mcp_tool", &[], Some("web/search"), None)],
            None,
        ),
        // The domain refuses cycles; the graph must still be safe with one.
        submitted(
            &tenant,
            d,
            "loop",
            vec![
                step("p", "template", &["q"], None, None),
                step("q", "template", &["p"], None, None),
            ],
            None,
        ),
        GraphChange {
            tenant: tenant.clone(),
            run: a,
            version: 2,
            change: RunChange::Touched,
        },
        GraphChange {
            tenant: tenant.clone(),
            run: a,
            version: 3,
            change: RunChange::Status("cancelled".into()),
        },
    ];
    // One batch holding every change twice (a stale relay's duplicates next to the
    // originals) writes each run once, with its newest version and status.
    let doubled: Vec<GraphChange> = changes.iter().chain(&changes).cloned().collect();
    graph.apply_all(&doubled).await.unwrap();
    // Every write is idempotent: applying the log again, twice (a replay), changes nothing.
    for _ in 0..2 {
        for change in &changes {
            graph.apply(change).await.unwrap();
        }
    }

    let run = |id: Uuid, name: &str| RunRef {
        run: id,
        name: name.into(),
    };
    assert_eq!(
        graph.runs_using_tool(&tenant, "web/search").await.unwrap(),
        vec![run(a, "research")]
    );
    assert_eq!(
        graph.runs_using_tool(&other, "web/search").await.unwrap(),
        vec![run(c, "elsewhere")]
    );
    let mut by_model = vec![run(a, "research"), run(b, "quick")];
    by_model.sort();
    assert_eq!(
        graph.runs_using_model(&tenant, "gpt-x").await.unwrap(),
        by_model
    );
    assert!(
        graph
            .runs_using_model(&tenant, "nobody")
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        graph.dependencies(a, "review", 10).await.unwrap(),
        vec![at(1, "summarize"), at(2, "fetch"), at(2, "search")]
    );
    assert_eq!(
        graph.dependencies(a, "review", 1).await.unwrap(),
        vec![at(1, "summarize")]
    );
    assert_eq!(
        graph.dependents(a, "fetch", 10).await.unwrap(),
        vec![at(1, "summarize"), at(2, "review")]
    );
    assert_eq!(
        graph.dependencies(d, "p", 50).await.unwrap(),
        vec![at(1, "q")],
        "cycle-safe"
    );

    let lineage = graph.lineage(a, "review", 10).await.unwrap();
    assert_eq!(
        lineage.steps,
        vec![at(1, "summarize"), at(2, "fetch"), at(2, "search")]
    );
    assert_eq!(lineage.tools, vec!["web/search"]);
    assert_eq!(lineage.models, vec!["claude", "gpt-x"]);
    assert_eq!(lineage.submitted_by.as_deref(), Some("ana"));
}

#[tokio::test]
async fn postgres_graph_honours_the_contract() {
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = flowline_service_kit::db::with_database(
        &server,
        &format!("test_{}", Uuid::new_v4().simple()),
    )
    .unwrap();
    let pool = flowline_service_kit::db::prepare(&url, 4).await.unwrap();
    contract(&PostgresGraph::new(pool)).await;
}

#[tokio::test]
async fn dgraph_graph_honours_the_contract_when_dgraph_runs() {
    let Ok(url) = std::env::var("DGRAPH_URL") else {
        eprintln!(
            "DGRAPH_URL is not set: the Dgraph adapter's contract was not run (no Dgraph here)"
        );
        return;
    };
    contract(&DgraphGraph::new(&url)).await;
}
