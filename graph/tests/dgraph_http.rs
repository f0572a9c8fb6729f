//! The Dgraph adapter over real HTTP, against a local server answering as a Dgraph alpha
//! does (Dgraph itself cannot be installed here): the paths and query strings it calls,
//! the bodies it sends, how it reads answers, and its retry when Dgraph aborts a
//! transaction. The bodies themselves are pinned by the golden tests.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::HeaderMap;
use axum::routing::post;
use flowline_graph::dgraph_bodies::{SCHEMA, mutation, runs_query};
use flowline_graph::{DgraphGraph, GraphChange, GraphStore, RunChange, RunPage, RunRef, xid};
use serde_json::{Value, json};
use uuid::Uuid;

/// One request as the alpha received it.
#[derive(Debug, Clone)]
struct Received {
    path_and_query: String,
    content_type: String,
    body: String,
}

/// An alpha that aborts the first `aborts` mutations, as Dgraph does on a conflict.
#[derive(Clone, Default)]
struct Alpha {
    received: Arc<Mutex<Vec<Received>>>,
    aborts: Arc<Mutex<u32>>,
    run: Uuid,
}

async fn answer(
    State(alpha): State<Alpha>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: String,
) -> axum::Json<Value> {
    let path_and_query = uri
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    alpha.received.lock().unwrap().push(Received {
        path_and_query: path_and_query.clone(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body,
    });
    let answer = match uri.path() {
        "/alter" => json!({"data": {"code": "Success", "message": "Done"}}),
        "/mutate" => {
            let mut aborts = alpha.aborts.lock().unwrap();
            if *aborts > 0 {
                *aborts -= 1;
                json!({"errors": [{"message": "Transaction has been aborted. Please retry",
                                   "extensions": {"code": "Error"}}]})
            } else {
                json!({"data": {"code": "Success", "message": "Done", "uids": {}}})
            }
        }
        _ => json!({"data": {"q": [{"xid": xid::run(alpha.run), "name": "research"}]}}),
    };
    axum::Json(answer)
}

async fn alpha(aborts: u32) -> (Alpha, DgraphGraph) {
    let alpha = Alpha {
        aborts: Arc::new(Mutex::new(aborts)),
        run: Uuid::now_v7(),
        ..Alpha::default()
    };
    let app = Router::new()
        .route("/alter", post(answer))
        .route("/mutate", post(answer))
        .route("/query", post(answer))
        .with_state(alpha.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (alpha, DgraphGraph::new(&format!("http://{address}/")))
}

fn cancelled(run: Uuid) -> GraphChange {
    GraphChange {
        tenant: "acme".into(),
        run,
        version: 2,
        change: RunChange::Status("cancelled".into()),
    }
}

#[tokio::test]
async fn the_schema_goes_to_alter_and_mutations_commit_now_retrying_aborts() {
    let (alpha, graph) = alpha(2).await;
    graph.ensure_schema().await.unwrap();
    let change = cancelled(alpha.run);
    graph.apply(&change).await.unwrap();

    let received = alpha.received.lock().unwrap().clone();
    assert_eq!(received[0].path_and_query, "/alter");
    assert_eq!(received[0].body, SCHEMA);
    let mutations: Vec<&Received> = received[1..].iter().collect();
    assert_eq!(
        mutations.len(),
        3,
        "two aborted tries, then the one that commits"
    );
    for sent in mutations {
        assert_eq!(sent.path_and_query, "/mutate?commitNow=true");
        assert_eq!(sent.content_type, "application/json");
        let body: Value = serde_json::from_str(&sent.body).unwrap();
        assert_eq!(body, mutation(&change), "the same upsert block each time");
    }
}

#[tokio::test]
async fn a_mutation_aborted_every_time_fails_after_bounded_tries() {
    let (alpha, graph) = alpha(u32::MAX).await;
    let error = graph.apply(&cancelled(alpha.run)).await.unwrap_err();
    assert!(error.to_string().contains("aborted"), "{error}");
    let tries = alpha.received.lock().unwrap().len();
    assert!((2..=10).contains(&tries), "{tries} tries");
}

#[tokio::test]
async fn queries_send_dql_with_variables_and_read_dgraph_answers() {
    let (alpha, graph) = alpha(0).await;
    let page = RunPage::first(10);
    let runs = graph
        .runs_using_tool("acme", "web/search", page)
        .await
        .unwrap();
    assert_eq!(
        runs,
        vec![RunRef {
            run: alpha.run,
            name: "research".into()
        }]
    );
    let received = alpha.received.lock().unwrap().clone();
    assert_eq!(received[0].path_and_query, "/query");
    let body: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(
        body,
        runs_query("calls_tool", &xid::tool("acme", "web/search"), page)
    );
}
