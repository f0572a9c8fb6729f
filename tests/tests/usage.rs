//! What model calls used and cost, as users read it: `GET /v1/usage` and GraphQL
//! `usage(groupBy, from, to)` over the usage read model, and the `usage` of a run, its steps
//! and their attempts in REST and GraphQL (current and `asOf`). Known-answer sums from calls
//! the real executor made against the local model server, tenant isolation, a price change
//! between two calls, and rebuilds of both projections reproducing every cost.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use flowline_domain::WorkflowEvent;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use system_tests::llm::{LlmSystem, PRICES, anthropic_answer, llm_config, openai_answer};
use system_tests::model_server::{MockUsage, Reply};
use system_tests::{Running, TestSystem, eventually};

const WITHIN: Duration = Duration::from_secs(60);
const OTHER_TENANT: &str = "globex";

/// `GET /v1/usage?{query}` as `tenant`.
async fn usage(system: &TestSystem, queries: &Running, tenant: &str, query: &str) -> Value {
    let reply = system
        .send(
            system_tests::client_as(tenant, flowline_access::Role::Reader)
                .get(format!("{}/v1/usage?{query}", queries.url)),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// `GET /v1/usage?{query}` once its groups' call counts are `calls` (the usage projection
/// follows the log on its own).
async fn usage_once(
    system: &TestSystem,
    queries: &Running,
    tenant: &str,
    query: &str,
    calls: &[i64],
) -> Value {
    let counts = |report: &Value| -> Vec<i64> {
        report["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|group| group["usage"]["model_calls"].as_i64().expect("a count"))
            .collect()
    };
    let reached = eventually(WITHIN, || async {
        let report = usage(system, queries, tenant, query).await;
        (counts(&report) == calls).then_some(report)
    })
    .await;
    match reached {
        Some(report) => report,
        None => panic!(
            "usage?{query} never had {calls:?} calls: {}",
            usage(system, queries, tenant, query).await
        ),
    }
}

async fn read(system: &TestSystem, url: String) -> Value {
    let reply = system.get(&url).await;
    assert_eq!(reply.status, 200, "{url}: {}", reply.body);
    reply.body
}

/// The run once the read model shows it `status`.
async fn run_read(system: &TestSystem, queries: &Running, id: &str, status: &str) -> Value {
    let url = format!("{}/v1/workflows/{id}", queries.url);
    eventually(WITHIN, || async {
        let run = system.get(&url).await.body;
        (run["status"] == status).then_some(run)
    })
    .await
    .unwrap_or_else(|| panic!("run {id} never read {status}"))
}

fn cost(value: &Value) -> Decimal {
    value["cost_usd"]
        .as_str()
        .unwrap_or_else(|| panic!("a decimal string: {value}"))
        .parse()
        .expect("a decimal")
}

#[tokio::test]
async fn usage_sums_exact_costs_by_provider_model_run_and_step_for_the_callers_tenant_only() {
    let llm = LlmSystem::start(PRICES).await;
    let system = &llm.system;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    llm.server.script(
        "priced",
        [
            openai_answer(),
            anthropic_answer(),
            Reply::status(500, None),
            openai_answer(),
            openai_answer(),
        ],
    );

    // One at a time, so each takes its scripted answers in order.
    let first = llm.run(llm_config("mock-openai", "priced")).await;
    system.wait_for_run(&first, "succeeded", WITHIN).await;
    let second = llm.run(llm_config("mock-anthropic", "priced")).await;
    system.wait_for_run(&second, "succeeded", WITHIN).await;
    let mut retried_config = llm_config("mock-openai", "priced");
    retried_config["retry"] = json!({"max_attempts": 2, "initial_interval": "100ms"});
    let retried = llm.run(retried_config).await;
    system.wait_for_run(&retried, "succeeded", WITHIN).await;
    let other = llm
        .run_in(OTHER_TENANT, llm_config("mock-openai", "priced"))
        .await;
    system.wait_for_run(&other, "succeeded", WITHIN).await;

    // By provider: the failed attempt's call (a 500: no tokens, nothing billed) counts as
    // a call; the other tenant's call is not there.
    let by_provider = usage_once(system, &queries, "default", "group_by=provider", &[1, 3]).await;
    let groups = by_provider["groups"].as_array().unwrap();
    assert_eq!(groups[0]["provider"], "mock-anthropic");
    assert_eq!(
        groups[0]["usage"],
        json!({"model_calls": 1, "unpriced_calls": 0, "input_tokens": 200, "output_tokens": 42,
               "cache_read_tokens": 800, "cache_write_tokens": 100, "reasoning_tokens": 0,
               "total_tokens": 1142, "cost_usd": "0.001845"})
    );
    assert_eq!(groups[1]["provider"], "mock-openai");
    assert_eq!(groups[1]["usage"]["input_tokens"], 400);
    assert_eq!(groups[1]["usage"]["cache_read_tokens"], 1600);
    assert_eq!(groups[1]["usage"]["reasoning_tokens"], 100);
    assert_eq!(groups[1]["usage"]["cost_usd"], "0.0018");
    assert_eq!(by_provider["truncated"], false);

    let total = usage(system, &queries, "default", "").await;
    assert_eq!(total["groups"][0]["usage"]["model_calls"], 4);
    assert_eq!(
        cost(&total["groups"][0]["usage"]),
        "0.003645".parse().unwrap()
    );
    let by_run = usage(system, &queries, "default", "group_by=run&limit=2").await;
    assert_eq!(by_run["groups"].as_array().unwrap().len(), 2);
    assert_eq!(by_run["truncated"], true, "three runs, two asked for");
    let by_step = usage(system, &queries, "default", "group_by=step,provider").await;
    let retried_step = by_step["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|group| group["run"] == retried.as_str())
        .expect("the retried run's step");
    assert_eq!(retried_step["step"], "ask");
    assert_eq!(retried_step["provider"], "mock-openai");
    assert_eq!(retried_step["usage"]["model_calls"], 2);
    assert_eq!(retried_step["usage"]["cost_usd"], "0.0009");

    // A window: today's calls are in, tomorrow has none.
    let today = Utc::now().date_naive();
    let window = usage(
        system,
        &queries,
        "default",
        &format!("from={today}&to={today}"),
    )
    .await;
    let later = usage(
        system,
        &queries,
        "default",
        &format!("from={}", today.succ_opt().unwrap()),
    )
    .await;
    assert_eq!(window["groups"][0]["usage"]["model_calls"], 4);
    assert_eq!(later["groups"][0]["usage"]["model_calls"], 0);
    assert_eq!(later["groups"][0]["usage"]["cost_usd"], "0");

    // The other tenant sees its own call only, and none of the first tenant's runs.
    let theirs = usage(system, &queries, OTHER_TENANT, "group_by=run,tenant").await;
    assert_eq!(
        theirs["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["run"].as_str().unwrap().to_owned(), g["tenant"].clone()))
            .collect::<Vec<_>>(),
        [(other.clone(), json!(OTHER_TENANT))]
    );

    // Bad parameters are refused naming them.
    for (query, parameter) in [
        ("group_by=model,colour", "group_by"),
        ("limit=0", "limit"),
        ("from=yesterday", "from"),
        ("from=2026-12-08&to=2026-12-01", "to"),
    ] {
        let reply = system
            .get(&format!("{}/v1/usage?{query}", queries.url))
            .await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert_eq!(
            reply.body["parameter"], parameter,
            "{query}: {}",
            reply.body
        );
    }

    // The run, its step and each attempt carry their usage (REST).
    let run = run_read(system, &queries, &retried, "succeeded").await;
    assert_eq!(run["usage"]["model_calls"], 2);
    assert_eq!(run["usage"]["cost_usd"], "0.0009");
    assert_eq!(run["steps"][0]["usage"], run["usage"]);
    let step = read(
        system,
        format!("{}/v1/workflows/{retried}/steps/ask", queries.url),
    )
    .await;
    assert_eq!(step["usage"], run["usage"]);
    let attempts = step["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["status"], "failed");
    assert_eq!(attempts[0]["usage"]["model_calls"], 1);
    assert_eq!(attempts[0]["usage"]["cost_usd"], "0");
    assert_eq!(attempts[1]["usage"]["input_tokens"], 200);
    assert_eq!(attempts[1]["usage"]["cost_usd"], "0.0009");
    // A run without model calls has no usage rather than a usage of zero.
    let templated = system
        .submit(
            &llm.commands.url,
            &json!({"name": "t", "steps": [{"id": "t", "kind": "template",
                    "config": {"template": "hi"}}]}),
        )
        .await;
    let templated = run_read(system, &queries, &templated, "succeeded").await;
    assert!(templated.get("usage").is_none(), "{templated}");

    // GraphQL: the same numbers, current and as of now (rebuilt from the events).
    let answer = system
        .graphql(
            &queries.url,
            &format!(
                r#"{{ now: workflow(id: "{retried}") {{ ...usage }}
                     then: workflow(id: "{retried}", asOf: "{}") {{ ...usage }}
                     usage(groupBy: [MODEL, PROVIDER]) {{ truncated groups {{ model provider
                       usage {{ modelCalls costUsd totalTokens }} }} }} }}
                   fragment usage on Workflow {{ usage {{ modelCalls costUsd inputTokens }}
                     steps {{ usage {{ costUsd }} attempts {{ attempt usage {{ modelCalls costUsd }} }} }} }}"#,
                Utc::now().to_rfc3339()
            ),
        )
        .await;
    assert!(answer.get("errors").is_none(), "{answer}");
    let data = &answer["data"];
    assert_eq!(
        data["now"], data["then"],
        "asOf shows the usage the events recorded"
    );
    assert_eq!(
        data["now"]["usage"],
        json!({"modelCalls": 2, "costUsd": "0.0009", "inputTokens": 200})
    );
    assert_eq!(
        data["now"]["steps"][0]["attempts"],
        json!([{"attempt": 1, "usage": {"modelCalls": 1, "costUsd": "0"}},
               {"attempt": 2, "usage": {"modelCalls": 1, "costUsd": "0.0009"}}])
    );
    assert_eq!(
        data["usage"]["groups"],
        json!([
            {"model": "priced", "provider": "mock-anthropic",
             "usage": {"modelCalls": 1, "costUsd": "0.001845", "totalTokens": 1142}},
            {"model": "priced", "provider": "mock-openai",
             "usage": {"modelCalls": 3, "costUsd": "0.0018", "totalTokens": 2300}},
        ])
    );
    let refused = system
        .graphql(&queries.url, "{ usage(first: 0) { truncated } }")
        .await;
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("first")),
        "{refused}"
    );
    llm.stop().await;
}

#[tokio::test]
async fn a_price_change_between_two_calls_prices_each_at_its_time_and_rebuilds_reproduce_both() {
    // The price changes a few seconds from now: one call before, one after.
    let change_at: DateTime<Utc> = (Utc::now() + chrono::Duration::seconds(4)).trunc_subsecs(0);
    let prices = format!(
        r#"
[[price]]
provider = "mock-openai"
model = "repriced"
effective_from = "2020-01-01T00:00:00Z"
effective_to = "{at}"
input = "1"
output = "1"
cache_read = "1"
cache_write = "1"
reasoning = "1"

[[price]]
provider = "mock-openai"
model = "repriced"
effective_from = "{at}"
input = "4"
output = "4"
cache_read = "4"
cache_write = "4"
reasoning = "4"
"#,
        at = change_at.to_rfc3339()
    );
    let llm = LlmSystem::start(&prices).await;
    let system = &llm.system;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let answer = || {
        Reply::text(
            "priced twice",
            MockUsage {
                input: 1000,
                output: 1000,
                cache_read: 0,
                cache_write: 0,
                reasoning: 0,
            },
        )
    };
    llm.server.script("repriced", [answer(), answer()]);
    let before = llm.run(llm_config("mock-openai", "repriced")).await;
    system.wait_for_run(&before, "succeeded", WITHIN).await;
    let wait = (change_at - Utc::now()).to_std().unwrap_or_default();
    assert!(
        wait > Duration::ZERO,
        "the first call was made before the price change"
    );
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let after = llm.run(llm_config("mock-openai", "repriced")).await;
    system.wait_for_run(&after, "succeeded", WITHIN).await;

    // Each call is priced, on its event, at the price of its own time.
    for (run, expected) in [(&before, "0.002"), (&after, "0.008")] {
        let calls: Vec<_> = system
            .events(run)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                WorkflowEvent::StepSucceeded(s) => Some(s.calls),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].cost_usd, Some(expected.parse().unwrap()), "{run}");
        assert!(
            calls[0]
                .price_ref
                .as_deref()
                .is_some_and(|r| r.contains("repriced")),
            "{:?}",
            calls[0].price_ref
        );
    }
    let by_run = usage_once(system, &queries, "default", "group_by=run", &[1, 1]).await;
    let cost_of = |report: &Value, run: &str| {
        report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|group| group["run"] == run)
            .map(|group| group["usage"]["cost_usd"].clone())
    };
    assert_eq!(cost_of(&by_run, &before), Some(json!("0.002")));
    assert_eq!(cost_of(&by_run, &after), Some(json!("0.008")));
    let runs_before = [
        run_read(system, &queries, &before, "succeeded").await,
        run_read(system, &queries, &after, "succeeded").await,
    ];
    assert_eq!(runs_before[1]["usage"]["cost_usd"], "0.008");

    // Both projections rebuilt from history (prices are not consulted again).
    for projection in ["usage.v1", "workflow_read_model.v1"] {
        let rebuilt = system
            .rebuild_through_admin(&projectors.url, projection)
            .await;
        assert_eq!(rebuilt["status"], "swapped", "{rebuilt}");
    }
    assert_eq!(
        usage(system, &queries, "default", "group_by=run").await,
        by_run
    );
    for (run, earlier) in [&before, &after].into_iter().zip(&runs_before) {
        let now = run_read(system, &queries, run, "succeeded").await;
        assert_eq!(now["usage"], earlier["usage"], "{run}");
        assert_eq!(now["steps"], earlier["steps"], "{run}");
    }
    llm.stop().await;
}
