//! Read-your-writes: every command answer carries a consistency token; a query given it
//! answers with state at least that new (waiting for the projection up to a bound), from
//! the cache only when the cached entry is that new too.

use serde_json::{Value, json};
use system_tests::{Reply, TestSystem};

fn workflow() -> Value {
    json!({
        "name": "summaries",
        "input": {},
        "steps": [
            {"id": "draft", "kind": "llm", "depends_on": [], "config": {"model": "gpt-x"}}
        ]
    })
}

async fn get_with_token(system: &TestSystem, url: &str, token: &str) -> Reply {
    system
        .send(
            system_tests::client()
                .get(url)
                .header("X-Consistency-Token", token),
        )
        .await
}

fn token_of(reply: &Reply) -> String {
    let header = reply
        .header("x-consistency-token")
        .expect("a command answer carries X-Consistency-Token")
        .to_owned();
    assert_eq!(reply.body["consistency_token"], header.as_str());
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_answer_names_its_log_position_as_the_token() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let reply = system
        .post(&format!("{}/v1/workflows", commands.url), &workflow())
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let token = token_of(&reply);
    assert_eq!(
        token,
        format!(
            "{}:{}",
            reply.body["log_partition"], reply.body["log_offset"]
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_the_token_sees_the_write_without_polling() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    // The wait bound is another test's subject; here the projectors start just before the
    // first write, and their start-up on a loaded machine must not count against it.
    let queries = system.query_service_waiting(30_000).await;
    let _projectors = system.projectors().await;

    let submitted = system
        .post(&format!("{}/v1/workflows", commands.url), &workflow())
        .await;
    let id = submitted.body["workflow_id"].as_str().unwrap().to_owned();
    let detail_url = format!("{}/v1/workflows/{id}", queries.url);

    // The very first read, with the token: no 404 from a projection that lags.
    let first = get_with_token(&system, &detail_url, &token_of(&submitted)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["version"], 1);

    // Read again without a token: cached now, and still version 1.
    let cached = system.get(&detail_url).await;
    assert_eq!(cached.body["version"], 1);

    let cancelled = system
        .post(
            &format!("{}/v1/workflows/{id}/cancel", commands.url),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    // A cached version 1 exists; the token must never let it through.
    let after = get_with_token(&system, &detail_url, &token_of(&cancelled)).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert_eq!(after.body["version"], 2);
    assert_eq!(after.body["status"], "cancelled");

    // Without a token, the committed cancel invalidates the cached version 1 (which would
    // otherwise be served for READ_CACHE_TTL_SECONDS = 300 s).
    let invalidated = system_tests::eventually(std::time::Duration::from_secs(10), || async {
        let reply = system.get(&detail_url).await;
        (reply.body["version"] == 2).then_some(())
    })
    .await;
    assert!(invalidated.is_some(), "the cache kept serving version 1");

    // Lists, events and GraphQL take the token too.
    let events = get_with_token(
        &system,
        &format!("{detail_url}/events"),
        &token_of(&cancelled),
    )
    .await;
    assert_eq!(events.body["events"].as_array().unwrap().len(), 2);
    let graphql = system
        .send(
            system_tests::client()
                .post(format!("{}/graphql", queries.url))
                .header("X-Consistency-Token", token_of(&cancelled))
                .json(
                    &json!({"query": format!("{{ workflow(id: \"{id}\") {{ status version }} }}")}),
                ),
        )
        .await;
    assert_eq!(graphql.body["data"]["workflow"]["version"], 2);
    let by_argument = system
        .graphql(
            &queries.url,
            &format!(
                "{{ workflow(id: \"{id}\", consistencyToken: \"{}\") {{ status version }} }}",
                token_of(&cancelled)
            ),
        )
        .await;
    assert_eq!(by_argument["data"]["workflow"]["status"], "cancelled");
    let malformed = system
        .graphql(
            &queries.url,
            &format!("{{ workflow(id: \"{id}\", consistencyToken: \"soon\") {{ version }} }}"),
        )
        .await;
    assert_eq!(
        malformed["errors"][0]["extensions"]["code"], "invalid-parameter",
        "{malformed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_a_query_answers_a_retryable_503_then_succeeds_once_projected() {
    let system = TestSystem::new(3).await;
    let commands = system.command_service().await;
    let queries = system.query_service_waiting(300).await;

    let submitted = system
        .post(&format!("{}/v1/workflows", commands.url), &workflow())
        .await;
    let id = submitted.body["workflow_id"].as_str().unwrap().to_owned();
    let token = token_of(&submitted);
    let detail_url = format!("{}/v1/workflows/{id}", queries.url);

    // No projector runs: the read model cannot reach the token.
    let waiting = get_with_token(&system, &detail_url, &token).await;
    assert_eq!(waiting.status, 503, "{:?}", waiting.body);
    assert_eq!(
        waiting.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(waiting.header("retry-after"), Some("1"));
    assert_eq!(waiting.body["type"], "/problems/not-yet-consistent");
    assert_eq!(waiting.body["retryable"], true);
    assert_eq!(waiting.body["consistency_token"], token.as_str());

    let _projectors = system.projectors().await;
    let retried = system_tests::eventually(std::time::Duration::from_secs(30), || async {
        let reply = get_with_token(&system, &detail_url, &token).await;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .expect("answers once the projection passed the token");
    assert_eq!(retried["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_a_400_naming_the_header() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;
    let reply = get_with_token(
        &system,
        &format!("{}/v1/workflows", queries.url),
        "not-a-token",
    )
    .await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    assert_eq!(reply.body["header"], "X-Consistency-Token");
}
