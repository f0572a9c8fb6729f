//! The Dgraph adapter reads every answer shape Dgraph gives to the queries it makes:
//! dependencies and dependents (`@recurse` over `depends_on` and its reverse), lineage
//! (the walk plus usage), runs by tool and by model, and errors. The answers are fixtures
//! written from Dgraph's documentation and its own tests (`fixtures/dgraph/SOURCES.md`
//! names each source), served over HTTP by a local server standing in for the alpha.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use flowline_graph::{DgraphGraph, GraphStore, RunPage, RunRef, StepRef};
use serde_json::Value;
use uuid::Uuid;

const RUN: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00aa);
const OTHER: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00bb);

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dgraph")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// An alpha answering every `/query` with the fixtures given, in turn; the bodies it got.
async fn alpha(answers: &[&str]) -> (DgraphGraph, Arc<Mutex<Vec<Value>>>) {
    #[derive(Clone)]
    struct Alpha {
        answers: Arc<Mutex<Vec<Value>>>,
        received: Arc<Mutex<Vec<Value>>>,
    }
    async fn answer(State(alpha): State<Alpha>, body: String) -> axum::Json<Value> {
        alpha
            .received
            .lock()
            .unwrap()
            .push(serde_json::from_str(&body).unwrap());
        axum::Json(alpha.answers.lock().unwrap().remove(0))
    }
    let alpha = Alpha {
        answers: Arc::new(Mutex::new(
            answers.iter().map(|name| fixture(name)).collect(),
        )),
        received: Arc::default(),
    };
    let received = alpha.received.clone();
    let app = Router::new()
        .route("/query", post(answer))
        .with_state(alpha);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (DgraphGraph::new(&url), received)
}

fn at(depth: u32, step: &str) -> StepRef {
    StepRef {
        depth,
        step: step.into(),
    }
}

#[tokio::test]
async fn dependencies_are_read_from_a_recurse_answer_with_each_step_at_its_shortest_distance() {
    let (graph, _) = alpha(&["walk-dependencies.json"]).await;
    assert_eq!(
        graph.dependencies(RUN, "review", 10).await.unwrap(),
        vec![at(1, "summarize"), at(2, "fetch"), at(2, "search")],
        "fetch, reached twice (once as a leaf), counts once at its shortest distance"
    );
}

#[tokio::test]
async fn dependents_are_read_from_reverse_edges() {
    let (graph, received) = alpha(&["walk-dependents.json"]).await;
    assert_eq!(
        graph.dependents(RUN, "fetch", 10).await.unwrap(),
        vec![at(1, "search"), at(1, "summarize"), at(2, "review")]
    );
    let query = received.lock().unwrap()[0]["query"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(query.contains("~depends_on"), "{query}");
}

#[tokio::test]
async fn a_step_dgraph_does_not_have_has_no_dependencies() {
    let (graph, _) = alpha(&["walk-unknown-step.json"]).await;
    assert!(
        graph
            .dependencies(RUN, "nope", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn lineage_is_the_walk_plus_the_tools_models_and_principal_of_its_steps() {
    let (graph, received) = alpha(&["walk-dependencies.json", "usage.json"]).await;
    let lineage = graph.lineage(RUN, "review", 10).await.unwrap();
    assert_eq!(
        lineage.steps,
        vec![at(1, "summarize"), at(2, "fetch"), at(2, "search")]
    );
    assert_eq!(lineage.tools, vec!["web/search"]);
    assert_eq!(lineage.models, vec!["claude", "gpt-x"]);
    assert_eq!(lineage.submitted_by.as_deref(), Some("ana"));
    // The usage query names the walked steps and the start.
    let usage = received.lock().unwrap()[1]["query"]
        .as_str()
        .unwrap()
        .to_owned();
    for step in ["review", "summarize", "fetch", "search"] {
        assert!(usage.contains(&format!("/{step}\"")), "{usage}");
    }
}

#[tokio::test]
async fn runs_by_tool_and_by_model_are_read_in_dgraphs_order() {
    let (graph, received) = alpha(&["runs.json", "runs.json"]).await;
    let expected = vec![
        RunRef {
            run: RUN,
            name: "research".into(),
        },
        RunRef {
            run: OTHER,
            name: "research again".into(),
        },
    ];
    let page = RunPage::first(2);
    assert_eq!(
        graph
            .runs_using_tool("acme", "web/search", page)
            .await
            .unwrap(),
        expected
    );
    assert_eq!(
        graph.runs_using_model("acme", "gpt-x", page).await.unwrap(),
        expected
    );
    let received = received.lock().unwrap();
    assert!(
        received[0]["query"]
            .as_str()
            .unwrap()
            .contains("~calls_tool")
    );
    assert!(
        received[1]["query"]
            .as_str()
            .unwrap()
            .contains("~uses_model")
    );
    assert_eq!(received[0]["variables"]["$xid"], "tool:acme/web/search");
}

#[tokio::test]
async fn an_error_answer_is_an_error() {
    let (graph, _) = alpha(&["error.json"]).await;
    let error = graph.dependencies(RUN, "review", 10).await.unwrap_err();
    assert!(
        error.to_string().contains("Unrecognized character"),
        "{error}"
    );
}
