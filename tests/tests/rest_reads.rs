//! The query service's REST reads as a client uses them: list filters and sorts paged with
//! cursors, step detail, 400s naming the parameter, problem+json for every error, and the
//! OpenAPI document of every HTTP service (checked and fuzzed by schemathesis when the test
//! clients' Python venv is there).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use system_tests::{Reply, TestSystem, eventually};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// The `i`-th of the submitted runs: names repeat (so sorting by name needs the id as
/// tie-breaker); every third calls the web/search tool, every other one uses gpt-x.
fn run(i: usize) -> Value {
    let mut steps = vec![json!({"id": "fetch", "kind": "http"})];
    if i.is_multiple_of(3) {
        steps.push(json!({"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}}));
    } else {
        steps.push(json!({"id": "lookup", "kind": "mcp_tool", "config": {"server": "db", "tool": "query"}}));
    }
    let model = if i.is_multiple_of(2) {
        "gpt-x"
    } else {
        "claude"
    };
    steps.push(json!({"id": "summarize", "kind": "llm", "depends_on": ["fetch"], "config": {"model": model}}));
    json!({"name": format!("{}{}", NAMES[i % 3], if i.is_multiple_of(5) { "Special" } else { "" }), "steps": steps})
}

fn time(item: &Value, field: &str) -> DateTime<Utc> {
    item[field].as_str().unwrap().parse().unwrap()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["status"], status);
}

/// Every item of `path` (which has a query string), following `next_cursor` with pages of
/// `limit`, checking no page is larger.
async fn all_pages(system: &TestSystem, base: &str, path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            None => format!("{base}{path}&limit={limit}"),
            Some(cursor) => format!("{base}{path}&limit={limit}&cursor={cursor}"),
        };
        let reply = system.get(&url).await;
        assert_eq!(reply.status, 200, "{url}: {:?}", reply.body);
        let page = reply.body["items"].as_array().unwrap().clone();
        assert!(page.len() <= limit);
        items.extend(page);
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
    panic!("{path}: more than 100 pages");
}

fn sorted(mut items: Vec<Value>, sort: &str) -> Vec<Value> {
    let (descending, field) = match sort.strip_prefix('-') {
        Some(field) => (true, field),
        None => (false, sort),
    };
    items.sort_by(|a, b| {
        let key = |item: &Value| match field {
            "name" => (item["name"].as_str().unwrap().to_owned(), String::new()),
            _ => (
                time(item, field).timestamp_micros().to_string(),
                String::new(),
            ),
        };
        let (ka, kb) = (key(a), key(b));
        let by_key = if field == "name" {
            ka.0.cmp(&kb.0)
        } else {
            ka.0.parse::<i64>()
                .unwrap()
                .cmp(&kb.0.parse::<i64>().unwrap())
        };
        by_key.then_with(|| a["id"].as_str().unwrap().cmp(b["id"].as_str().unwrap()))
    });
    if descending {
        items.reverse();
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_and_sort_pages_through_all_matching_runs_once() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;

    const RUNS: usize = 13;
    let mut submitted = Vec::new();
    for i in 0..RUNS {
        let reply = system
            .post(&format!("{}/v1/workflows", commands.url), &run(i))
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        submitted.push(reply.body["workflow_id"].as_str().unwrap().to_owned());
    }
    // Cancelling changes status and updated_at, so updated_at order differs from submission.
    for id in submitted.iter().step_by(4) {
        let reply = system
            .post(
                &format!("{}/v1/workflows/{id}/cancel", commands.url),
                &json!({"reason": "test"}),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let cancelled: HashSet<String> = submitted.iter().step_by(4).cloned().collect();
    let base = queries.url.clone();
    let everything = eventually(Duration::from_secs(60), || async {
        let reply = system.get(&format!("{base}/v1/workflows?limit=100")).await;
        let items = reply.body["items"].as_array()?.clone();
        let done = items.len() == RUNS
            && items
                .iter()
                .filter(|item| item["status"] == "cancelled")
                .count()
                == cancelled.len();
        done.then_some(items)
    })
    .await
    .expect("every run and cancellation projected");

    // Sorts: each one, in pages of 4, is the whole set in that order.
    for sort in [
        "-submitted_at",
        "submitted_at",
        "-updated_at",
        "updated_at",
        "name",
        "-name",
    ] {
        let paged = all_pages(&system, &base, &format!("/v1/workflows?sort={sort}"), 4).await;
        assert_eq!(
            ids(&paged),
            ids(&sorted(everything.clone(), sort)),
            "sort={sort}"
        );
    }
    // The default is newest first.
    let default = all_pages(&system, &base, "/v1/workflows?", 5).await;
    assert_eq!(
        ids(&default),
        ids(&sorted(everything.clone(), "-submitted_at"))
    );

    // Filters, each paged in twos, under two sorts.
    let by_submission = sorted(everything.clone(), "submitted_at");
    let after = time(&by_submission[3], "submitted_at");
    let before = time(&by_submission[9], "submitted_at");
    let has_step = |item: &Value, kind: &str, key: &str, value: &str| {
        item["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|step| step["kind"] == kind && step["config"][key] == value)
    };
    type Matches = Box<dyn Fn(&Value) -> bool>;
    let filters: Vec<(String, Matches)> = vec![
        (
            "status=cancelled".into(),
            Box::new(|item: &Value| item["status"] == "cancelled"),
        ),
        (
            "name=SPEC".into(),
            Box::new(|item: &Value| item["name"].as_str().unwrap().ends_with("Special")),
        ),
        (
            format!(
                "submitted_after={}&submitted_before={}",
                after.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            Box::new(move |item: &Value| {
                let at = time(item, "submitted_at");
                at >= after && at < before
            }),
        ),
        (
            "tool=web/search".into(),
            Box::new(move |item: &Value| has_step(item, "mcp_tool", "server", "web")),
        ),
        (
            "model=gpt-x".into(),
            Box::new(move |item: &Value| has_step(item, "llm", "model", "gpt-x")),
        ),
        (
            "model=gpt-x&status=pending&name=ar".into(),
            Box::new(move |item: &Value| {
                has_step(item, "llm", "model", "gpt-x")
                    && item["status"] == "pending"
                    && item["name"].as_str().unwrap().contains("ar")
            }),
        ),
    ];
    for (query, matches) in &filters {
        let expected: Vec<Value> = everything.iter().filter(|i| matches(i)).cloned().collect();
        assert!(
            !expected.is_empty() && expected.len() < RUNS,
            "{query} selects a proper subset"
        );
        for sort in ["-submitted_at", "name"] {
            let paged = all_pages(
                &system,
                &base,
                &format!("/v1/workflows?{query}&sort={sort}"),
                2,
            )
            .await;
            assert_eq!(
                ids(&paged),
                ids(&sorted(expected.clone(), sort)),
                "{query}&sort={sort}"
            );
        }
    }
    // A filter nothing matches is an empty last page.
    let none = system
        .get(&format!("{base}/v1/workflows?tool=web/nothing"))
        .await;
    assert_eq!(none.body, json!({"items": [], "next_cursor": null}));

    // A cursor only continues the sort it was made for.
    let first = system
        .get(&format!("{base}/v1/workflows?sort=name&limit=2"))
        .await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let mismatched = system
        .get(&format!(
            "{base}/v1/workflows?sort=-updated_at&limit=2&cursor={cursor}"
        ))
        .await;
    assert_problem(&mismatched, 400);
    assert_eq!(mismatched.body["parameter"], "cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_detail_shows_the_step_and_what_depends_on_it() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let reply = system
        .post(
            &format!("{}/v1/workflows", commands.url),
            &json!({"name": "research", "steps": [
                {"id": "fetch", "kind": "http", "config": {"url": "http://example.test"}},
                {"id": "search", "kind": "mcp_tool", "config": {"server": "web", "tool": "search"}},
                {"id": "summarize", "kind": "llm", "depends_on": ["fetch", "search"], "config": {"model": "gpt-x"}},
                {"id": "review", "kind": "llm", "depends_on": ["fetch"]}
            ]}),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let id = reply.body["workflow_id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/workflows/{id}/steps/fetch", queries.url);
    let fetch = eventually(Duration::from_secs(30), || async {
        let reply = system.get(&url).await;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .expect("the run is projected");
    assert_eq!(
        fetch,
        json!({
            "workflow_id": id, "workflow_status": "pending",
            "id": "fetch", "kind": "http", "status": "pending", "depends_on": [],
            "config": {"url": "http://example.test"},
            "dependents": ["summarize", "review"]
        })
    );
    let summarize = system
        .get(&format!(
            "{}/v1/workflows/{id}/steps/summarize",
            queries.url
        ))
        .await;
    assert_eq!(summarize.body["depends_on"], json!(["fetch", "search"]));
    assert_eq!(summarize.body["config"], json!({"model": "gpt-x"}));
    assert_eq!(summarize.body["dependents"], json!([]));

    let unknown_step = system
        .get(&format!("{}/v1/workflows/{id}/steps/nope", queries.url))
        .await;
    assert_problem(&unknown_step, 404);
    let unknown_run = system
        .get(&format!(
            "{}/v1/workflows/0190b5c4-0000-7000-8000-000000000000/steps/fetch",
            queries.url
        ))
        .await;
    assert_problem(&unknown_run, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_problems_naming_the_parameter() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;
    let id = "0190b5c4-0000-7000-8000-000000000000";
    for (query, parameter) in [
        ("/v1/workflows?limit=abc", "limit"),
        ("/v1/workflows?limit=0", "limit"),
        ("/v1/workflows?limit=101", "limit"),
        ("/v1/workflows?status=sleeping", "status"),
        ("/v1/workflows?sort=size", "sort"),
        ("/v1/workflows?sort=-", "sort"),
        ("/v1/workflows?submitted_after=yesterday", "submitted_after"),
        (
            "/v1/workflows?submitted_before=2026-13-01T00:00:00Z",
            "submitted_before",
        ),
        (
            "/v1/workflows?submitted_after=2026-11-02T00:00:00Z&submitted_before=2026-11-01T00:00:00Z",
            "submitted_before",
        ),
        ("/v1/workflows?name=", "name"),
        ("/v1/workflows?tool=", "tool"),
        ("/v1/workflows?cursor=not-a-cursor", "cursor"),
        ("/v1/workflows?cursor=eyJzb3J0IjoxfQ", "cursor"),
        (
            &format!("/v1/workflows/{id}/steps/a/dependencies?depth=x") as &str,
            "depth",
        ),
        (
            &format!("/v1/workflows/{id}/state?version=-1") as &str,
            "version",
        ),
    ] {
        let reply = system.get(&format!("{}{query}", queries.url)).await;
        assert_problem(&reply, 400);
        assert_eq!(
            reply.body["parameter"], parameter,
            "{query}: {:?}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_errors_as_problems_and_documents_its_api() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;

    // 405 (keeping Allow), unknown routes, malformed query strings and paths.
    let put = system
        .send(system.http.put(format!("{}/v1/workflows", queries.url)))
        .await;
    assert_problem(&put, 405);
    assert!(put.header("allow").unwrap().contains("GET"));
    let get_commands = system.get(&format!("{}/v1/workflows", commands.url)).await;
    assert_problem(&get_commands, 405);
    let delete_lag = system
        .send(system.http.delete(format!("{}/admin/lag", projectors.url)))
        .await;
    assert_problem(&delete_lag, 405);
    for url in [
        format!("{}/nowhere", queries.url),
        format!("{}/nowhere", commands.url),
        format!("{}/nowhere", projectors.url),
    ] {
        assert_problem(&system.get(&url).await, 404);
    }
    let duplicate = system
        .get(&format!("{}/v1/workflows?status=a&status=b", queries.url))
        .await;
    assert_problem(&duplicate, 400);
    let bad_path = system
        .send(
            system
                .http
                .get(format!("{}/admin/dead-letters/abc", projectors.url))
                .bearer_auth(system_tests::admin_token()),
        )
        .await;
    assert_problem(&bad_path, 400);
    let bad_json = system
        .send(
            system
                .http
                .post(format!("{}/admin/rebuilds", projectors.url))
                .bearer_auth(system_tests::admin_token())
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_problem(&bad_json, 400);

    // The documents: OpenAPI 3.1, every route, problem+json as the default error answer.
    for (service, expected) in [
        (
            &queries.url,
            vec![
                "/v1/workflows",
                "/v1/workflows/{id}",
                "/v1/workflows/{id}/events",
                "/v1/workflows/{id}/state",
                "/v1/workflows/{id}/steps/{step}",
                "/v1/workflows/{id}/steps/{step}/dependencies",
                "/v1/workflows/{id}/steps/{step}/dependents",
                "/v1/workflows/{id}/steps/{step}/lineage",
                "/v1/graph/runs",
                "/v1/audit/events",
                "/v1/audit/verify",
                "/v1/budgets/{tenant}",
                "/v1/usage",
                "/v1/privacy",
            ],
        ),
        (
            &commands.url,
            vec![
                "/v1/workflows",
                "/v1/workflows/{id}/cancel",
                "/v1/workflows/{id}/signals/{name}",
                "/v1/workflows/{id}/pause",
                "/v1/workflows/{id}/resume",
                "/v1/workflows/{id}/steps/{step}/retry",
                "/v1/budgets/{tenant}",
                "/v1/api-keys",
                "/v1/api-keys/{id}",
                "/v1/privacy",
                "/v1/subjects/{id}",
            ],
        ),
        (
            &projectors.url,
            vec![
                "/admin/lag",
                "/metrics",
                "/admin/dead-letters",
                "/admin/dead-letters/{id}",
                "/admin/dead-letters/{id}/redrive",
                "/admin/dead-letters/redrive",
                "/admin/rebuilds",
                "/admin/rebuilds/{id}",
            ],
        ),
    ] {
        let reply = system.get(&format!("{service}/openapi.json")).await;
        assert_eq!(reply.status, 200);
        let document = reply.body;
        assert!(
            document["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            document["openapi"]
        );
        let mut paths: Vec<&str> = document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        paths.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(paths, expected, "{service}");
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                assert_eq!(
                    operation["responses"]["default"]["$ref"],
                    "#/components/responses/Problem"
                );
            }
        }
        assert!(document["components"]["schemas"]["Problem"].is_object());
        let ui = system.get(&format!("{service}/docs/")).await;
        assert_eq!(ui.status, 200);
        assert!(ui.body.as_str().unwrap().contains("swagger"));
    }
    let list = system
        .get(&format!("{}/openapi.json", queries.url))
        .await
        .body;
    let parameters: Vec<&str> = list["paths"]["/v1/workflows"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "status",
        "name",
        "submitted_after",
        "submitted_before",
        "tool",
        "model",
        "sort",
        "limit",
        "cursor",
        "X-Tenant-Id",
    ] {
        assert!(parameters.contains(&name), "{name} in {parameters:?}");
    }
}

/// The interpreter of the test clients' venv (`scripts/test` makes it and sets this).
fn python() -> String {
    std::env::var("FLOWLINE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let venv = format!("{home}/.cache/flowline/venv/bin/python");
        assert!(
            std::path::Path::new(&venv).exists(),
            "no Python venv with schemathesis: run scripts/test (or source scripts/lib.sh && ensure_python_venv)"
        );
        venv
    })
}

async fn run_python(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_validate_and_schemathesis_finds_no_server_error_or_answer_off_the_spec() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    // openapi-spec-validator reads files, not URLs.
    for service in [&queries.url, &commands.url, &projectors.url] {
        let document = system.get(&format!("{service}/openapi.json")).await.body;
        let file = std::env::temp_dir().join(format!(
            "openapi-{}-{}.json",
            system.kafka.topic,
            service.rsplit(':').next().unwrap()
        ));
        std::fs::write(&file, document.to_string()).unwrap();
        let (valid, output) =
            run_python(&["-m", "openapi_spec_validator", file.to_str().unwrap()]).await;
        let _ = std::fs::remove_file(&file);
        assert!(valid, "{service}/openapi.json: {output}");
    }
    // Some runs, so that lists, runs and steps answer with bodies to check: the fuzzer
    // draws ids and step names from them most of the time, and generates the rest.
    let mut runs = Vec::new();
    for i in 0..3 {
        let reply = system
            .post(&format!("{}/v1/workflows", commands.url), &run(i))
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        runs.push(format!("{}", reply.body["workflow_id"]));
    }
    let base = queries.url.clone();
    let projected = eventually(Duration::from_secs(30), || async {
        let reply = system.get(&format!("{base}/v1/workflows")).await;
        (reply.body["items"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    assert!(projected.is_some());
    let config = std::env::temp_dir().join(format!("schemathesis-{}.toml", system.kafka.topic));
    std::fs::write(
        &config,
        format!(
            "[dictionaries.runs]\nvalues = [{}]\n\
             [dictionaries.steps]\nvalues = [\"fetch\", \"search\", \"summarize\"]\n\
             [parameters]\n\
             \"path.id\" = {{ dictionary = \"runs\", probability = 0.7 }}\n\
             \"path.step\" = {{ dictionary = \"steps\", probability = 0.7 }}\n",
            runs.join(", ")
        ),
    )
    .unwrap();
    // Every service's document, fuzzed: the query service, the command service, and the
    // projectors' admin API.
    let mut problems = Vec::new();
    // With a platform admin's credentials, so every operation is open to the fuzzer.
    let authorization = format!("Authorization: {}", system_tests::auth::admin_bearer());
    for (service, url) in [
        ("query service", &queries.url),
        ("command service", &commands.url),
        ("projectors", &projectors.url),
    ] {
        let document = format!("{url}/openapi.json");
        let args = [
            "-m",
            "schemathesis.cli",
            "--config-file",
            config.to_str().unwrap(),
            "run",
            &document,
            "--header",
            &authorization,
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261126",
            "--workers",
            "2",
            "--generation-database",
            "none",
            "--no-color",
        ];
        let (mut passed, mut output) = run_python(&args).await;
        // An error of the tool itself (a "Runtime Error" section and no finding, as
        // Hypothesis's lambda-source cache raised once in CI) gets one more run; a finding
        // about the service never does.
        if !passed && output.contains("Runtime Error") && !output.contains("FAILURES") {
            (passed, output) = run_python(&args).await;
        }
        // What it tested, so a run that checked nothing cannot pass unnoticed.
        assert!(
            output.contains("passed") || output.contains("failed"),
            "{service}: schemathesis reported no operations:\n{output}"
        );
        if !passed {
            problems.push(format!("{service} ({url}):\n{output}"));
        }
    }
    let _ = std::fs::remove_file(&config);
    assert!(
        problems.is_empty(),
        "schemathesis found problems:\n{}",
        problems.join("\n")
    );
}
