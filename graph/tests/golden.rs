//! The exact schema and request bodies the Dgraph adapter sends, checked against files in
//! `tests/golden/`. `UPDATE_GOLDEN=1 cargo test -p flowline-graph --test golden` rewrites
//! them after an intended change; review the diff like code.

use std::path::PathBuf;

use flowline_graph::dgraph_bodies::{SCHEMA, mutation, runs_query, usage_query, walk_query};
use flowline_graph::{GraphChange, RunChange, RunPage, StepNode, xid};
use uuid::Uuid;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}", path.display()));
    assert_eq!(actual, expected, "{} changed", path.display());
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

const RUN: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00aa);

fn submitted() -> GraphChange {
    GraphChange {
        tenant: "acme".into(),
        run: RUN,
        version: 1,
        change: RunChange::Submitted {
            name: "research".into(),
            steps: vec![
                StepNode {
                    id: "search".into(),
                    kind: "mcp_tool".into(),
                    depends_on: vec![],
                    tool: Some("web/search".into()),
                    model: None,
                },
                StepNode {
                    id: "summarize".into(),
                    kind: "llm".into(),
                    depends_on: vec!["search".into()],
                    tool: None,
                    model: Some("gpt-x".into()),
                },
            ],
            submitted_by: Some("ana".into()),
        },
    }
}

#[test]
fn schema() {
    golden("schema.dql", SCHEMA);
}

#[test]
fn submitted_mutation() {
    golden("mutate-submitted.json", &pretty(&mutation(&submitted())));
}

#[test]
fn status_mutation() {
    let change = GraphChange {
        tenant: "acme".into(),
        run: RUN,
        version: 3,
        change: RunChange::Status("cancelled".into()),
    };
    golden("mutate-status.json", &pretty(&mutation(&change)));
}

fn at_version(version: u64, change: RunChange) -> GraphChange {
    GraphChange {
        tenant: "acme".into(),
        run: RUN,
        version,
        change,
    }
}

#[test]
fn run_life_mutations() {
    golden(
        "mutate-started.json",
        &pretty(&mutation(&at_version(2, RunChange::Started))),
    );
    golden(
        "mutate-step-status.json",
        &pretty(&mutation(&at_version(
            3,
            RunChange::StepStatus {
                step: "search".into(),
                status: "retrying".into(),
            },
        ))),
    );
    golden(
        "mutate-stopped.json",
        &pretty(&mutation(&at_version(
            4,
            RunChange::Stopped("failed".into()),
        ))),
    );
    golden(
        "mutate-step-retried.json",
        &pretty(&mutation(&at_version(
            5,
            RunChange::StepRetried {
                step: "search".into(),
            },
        ))),
    );
    golden(
        "mutate-resumed.json",
        &pretty(&mutation(&at_version(7, RunChange::Resumed))),
    );
}

#[test]
fn queries() {
    golden(
        "query-runs-using-tool.json",
        &pretty(&runs_query(
            "calls_tool",
            &xid::tool("acme", "web/search"),
            RunPage::first(100),
        )),
    );
    golden(
        "query-runs-using-tool-after.json",
        &pretty(&runs_query(
            "calls_tool",
            &xid::tool("acme", "web/search"),
            RunPage {
                after: Some(RUN),
                limit: 20,
                newest_first: true,
            },
        )),
    );
    golden(
        "query-dependencies.json",
        &pretty(&walk_query(&xid::step(RUN, "summarize"), 5, true)),
    );
    golden(
        "query-dependents.json",
        &pretty(&walk_query(&xid::step(RUN, "search"), 5, false)),
    );
    golden(
        "query-usage.json",
        &pretty(&usage_query(&[xid::step(RUN, "summarize")], &xid::run(RUN))),
    );
}
