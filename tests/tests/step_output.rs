//! The `stepOutput` GraphQL subscription, driven by an off-the-shelf client from npm
//! (`graphql-ws`): a streaming `llm` step's tokens arrive live and in order, then the
//! step's completion with its output and usage; a late subscriber reads the same from the
//! first token; a retried step's attempts arrive one after the other; a run without the
//! step is an error. Real executor, model server, Redis, broker and PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::js_clients::JsSubscription;
use system_tests::llm::{LlmSystem, PRICES, llm_config};
use system_tests::model_server::{MockUsage, Reply};
use system_tests::{Running, TestSystem};

const WITHIN: Duration = Duration::from_secs(60);

/// At least a token per streamed chunk, as real providers count.
const USAGE: MockUsage = MockUsage {
    input: 10,
    output: 8,
    cache_read: 0,
    cache_write: 0,
    reasoning: 0,
};

fn subscribe(queries: &Running, workflow_id: &str, step_id: &str) -> JsSubscription {
    JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", queries.url.replacen("http://", "ws://", 1)),
        "query": "subscription ($id: UUID!, $step: String!) { stepOutput(workflowId: $id, \
                  stepId: $step) { kind attempt text status output error { kind } \
                  usage { modelCalls costUsd } } }",
        "variables": {"id": workflow_id, "step": step_id},
        "connectionParams": {"tenant": "default"},
    }))
}

/// Every item until the subscription completes.
async fn all_items(subscription: &mut JsSubscription) -> Vec<Value> {
    let mut items = Vec::new();
    loop {
        let line = subscription.line().await;
        if line.get("connected").is_some() {
            continue;
        }
        if line.get("complete").is_some() {
            return items;
        }
        let next = line
            .get("next")
            .unwrap_or_else(|| panic!("expected an item, got {line} after {items:?}"));
        assert!(next.get("errors").is_none(), "errors: {next}");
        items.push(next["data"]["stepOutput"].clone());
    }
}

/// The items as `kind:attempt:text` lines, for comparing whole sequences.
fn outline(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            format!(
                "{}:{}:{}",
                item["kind"].as_str().unwrap_or("?"),
                item["attempt"],
                item["text"].as_str().unwrap_or("")
            )
        })
        .collect()
}

async fn started() -> (LlmSystem, Running, Running) {
    let llm = LlmSystem::start(PRICES).await;
    let queries = llm.system.query_service().await;
    let projectors = llm.system.projectors().await;
    (llm, queries, projectors)
}

fn slow_story(chunks: &[&str]) -> Reply {
    Reply::Text {
        chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
        delay: Duration::from_millis(300),
        usage: USAGE,
    }
}

async fn wait_until_running(system: &TestSystem, id: &str) {
    system_tests::eventually(WITHIN, || async {
        system
            .event_types(id)
            .await
            .iter()
            .any(|t| t == "StepStarted")
            .then_some(())
    })
    .await
    .expect("the step started");
}

#[tokio::test]
async fn a_streaming_steps_tokens_arrive_live_in_order_then_its_completion() {
    let (llm, queries, _projectors) = started().await;
    llm.server.script(
        "priced",
        [slow_story(&[
            "Once", " upon", " a", " time", " there", " was",
        ])],
    );
    let id = llm.run(llm_config("mock-openai", "priced")).await;
    wait_until_running(&llm.system, &id).await;
    let mut live = subscribe(&queries, &id, "ask");
    let first = loop {
        let line = live.line().await;
        if line.get("connected").is_none() {
            break line["next"]["data"]["stepOutput"].clone();
        }
    };
    assert_eq!(first["text"], "Once", "{first}");
    // Live: the first token is there while the step still streams the rest (five more
    // chunks, 300 ms apart).
    assert!(
        !llm.system
            .event_types(&id)
            .await
            .iter()
            .any(|t| t == "StepSucceeded"),
        "the first token arrived only after the step ended"
    );
    let mut items = vec![first];
    items.extend(all_items(&mut live).await);
    assert_eq!(
        outline(&items),
        [
            "TOKEN:1:Once",
            "TOKEN:1: upon",
            "TOKEN:1: a",
            "TOKEN:1: time",
            "TOKEN:1: there",
            "TOKEN:1: was",
            "ATTEMPT_FINISHED:1:",
            "COMPLETED:null:",
        ]
    );
    let completed = items.last().unwrap();
    assert_eq!(completed["status"], "succeeded");
    assert_eq!(completed["output"]["text"], "Once upon a time there was");
    // 10 × 1 + 8 × 2 per million.
    assert_eq!(
        completed["usage"],
        json!({"modelCalls": 1, "costUsd": "0.000026"})
    );
    llm.system.wait_for_run(&id, "succeeded", WITHIN).await;

    // A subscriber arriving after the end reads the same output from the first token.
    let mut late = subscribe(&queries, &id, "ask");
    assert_eq!(outline(&all_items(&mut late).await), outline(&items));
    llm.stop().await;
}

#[tokio::test]
async fn a_retried_steps_attempts_arrive_in_turn_and_a_missing_step_is_an_error() {
    let (llm, queries, _projectors) = started().await;
    llm.server.script(
        "priced",
        [
            Reply::Cut {
                chunks: vec!["Once".into(), " up".into()],
            },
            slow_story(&["Once", " upon", " a", " time"]),
        ],
    );
    let mut config = llm_config("mock-openai", "priced");
    config["retry"] = json!({"max_attempts": 2, "initial_interval": "200ms"});
    let id = llm.run(config).await;
    let mut live = subscribe(&queries, &id, "ask");
    let first = loop {
        let line = live.line().await;
        if line.get("connected").is_none() {
            break line["next"]["data"]["stepOutput"].clone();
        }
    };
    assert_eq!(first["text"], "Once", "{first}");
    // Live: the first token is there while the step still streams the rest (five more
    // chunks, 300 ms apart).
    assert!(
        !llm.system
            .event_types(&id)
            .await
            .iter()
            .any(|t| t == "StepSucceeded"),
        "the first token arrived only after the step ended"
    );
    let mut items = vec![first];
    items.extend(all_items(&mut live).await);
    assert_eq!(
        outline(&items),
        [
            "TOKEN:1:Once",
            "TOKEN:1: up",
            "ATTEMPT_FINISHED:1:",
            "TOKEN:2:Once",
            "TOKEN:2: upon",
            "TOKEN:2: a",
            "TOKEN:2: time",
            "ATTEMPT_FINISHED:2:",
            "COMPLETED:null:",
        ]
    );
    assert_eq!(items.last().unwrap()["status"], "succeeded");

    // A step the run does not have.
    let mut missing = subscribe(&queries, &id, "nope");
    let line = loop {
        let line = missing.line().await;
        if line.get("connected").is_none() {
            break line;
        }
    };
    let error = &line["next"]["errors"][0];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{line}"
    );
    assert_eq!(error["extensions"]["code"], "not-found", "{line}");
    llm.stop().await;
}
