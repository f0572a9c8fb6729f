//! `llm` steps driven by the real executor against a local server speaking both wire APIs
//! (`system_tests::model_server`): streaming and usage normalised per API with the cost on
//! the events, retries honouring `Retry-After`, a 429 cooling the provider down for every
//! run, fallback models, structured output validated, a missing key, malformed and cut
//! streams, a slow answer past the timeout, keys kept out of everything a user reads, and
//! the budget race. Command service, executor, PostgreSQL and the broker are all real.

use std::time::{Duration, Instant};

use flowline_domain::{ModelCall, StepError, WorkflowEvent};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use system_tests::llm::{
    ANTHROPIC_KEY, LlmSystem, OPENAI_KEY, PRICES, UNSET_KEY_VAR, anthropic_answer, llm_config,
    openai_answer,
};
use system_tests::model_server::{MockUsage, ModelServer, Reply};

const RUN_WITHIN: Duration = Duration::from_secs(60);
async fn started() -> LlmSystem {
    LlmSystem::start(PRICES).await
}

async fn started_with(providers: impl FnOnce(&ModelServer) -> String) -> LlmSystem {
    LlmSystem::start_with(PRICES, providers).await
}

fn config(provider: &str, model: &str) -> Value {
    llm_config(provider, model)
}

fn successes(events: &[flowline_domain::EventEnvelope]) -> Vec<(Value, Vec<ModelCall>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepSucceeded(s) => Some((s.output.clone(), s.calls.clone())),
            _ => None,
        })
        .collect()
}

fn failures(events: &[flowline_domain::EventEnvelope]) -> Vec<(StepError, Vec<ModelCall>)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            WorkflowEvent::StepFailed(f) => Some((f.error.clone(), f.calls.clone())),
            _ => None,
        })
        .collect()
}

fn usd(text: &str) -> Decimal {
    text.parse().unwrap()
}

#[tokio::test]
async fn both_wire_apis_stream_normalise_usage_and_price_each_call_on_its_event() {
    let setup = started().await;
    setup
        .server
        .script("priced", [openai_answer(), anthropic_answer()]);
    let openai = setup.run(config("mock-openai", "priced")).await;
    setup
        .system
        .wait_for_run(&openai, "succeeded", RUN_WITHIN)
        .await;
    let anthropic = setup.run(config("mock-anthropic", "priced")).await;
    setup
        .system
        .wait_for_run(&anthropic, "succeeded", RUN_WITHIN)
        .await;

    let (output, calls) = successes(&setup.system.events(&openai).await).remove(0);
    assert_eq!(output["text"], "Hello from OpenAI");
    assert_eq!(output["provider"], "mock-openai");
    assert_eq!(output["finish_reason"], "stop");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    // prompt_tokens 1000 of which 800 cached; completion_tokens 150 of which 50 reasoning.
    assert_eq!(
        (
            call.usage.input_tokens,
            call.usage.cache_read_tokens,
            call.usage.output_tokens,
            call.usage.reasoning_tokens
        ),
        (200, 800, 100, 50)
    );
    // 200 × 1.00 + 800 × 0.50 + 100 × 2.00 + 50 × 2.00 per million.
    assert_eq!(call.cost_usd, Some(usd("0.0009")));
    assert!(call.complete);
    assert_eq!(output["cost_usd"], "0.0009");

    // The text went out live, chunk by chunk, in order.
    let key = flowline_service_kit::live::stream_key(
        &setup.system.redis_prefix(),
        "default",
        openai.parse().unwrap(),
        "ask",
    );
    let mut reader = flowline_service_kit::live::LiveReader::open(&system_tests::redis_url(), key)
        .await
        .expect("redis");
    let mut tokens = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokens.len() < 3 && Instant::now() < deadline {
        tokens.extend(
            reader
                .next_batch(Duration::from_millis(200), 100)
                .await
                .expect("redis"),
        );
    }
    let texts: Vec<String> = tokens
        .iter()
        .filter_map(|entry| match entry {
            flowline_service_kit::live::LiveEntry::Token { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["Hello", " from", " OpenAI"]);

    let (output, calls) = successes(&setup.system.events(&anthropic).await).remove(0);
    assert_eq!(output["text"], "Hello from Anthropic");
    assert_eq!(output["finish_reason"], "end_turn");
    let call = &calls[0];
    assert_eq!(
        (
            call.usage.input_tokens,
            call.usage.cache_read_tokens,
            call.usage.cache_write_tokens,
            call.usage.output_tokens
        ),
        (200, 800, 100, 42)
    );
    // 200 × 3 + 800 × 0.30 + 100 × 3.75 + 42 × 15 per million.
    assert_eq!(call.cost_usd, Some(usd("0.001845")));

    let requests = setup.server.requests_for("priced");
    let openai_request = &requests[0];
    assert_eq!(openai_request.path, "/v1/chat/completions");
    assert_eq!(
        openai_request.headers["authorization"],
        format!("Bearer {OPENAI_KEY}")
    );
    assert_eq!(openai_request.body["stream"], json!(true));
    assert_eq!(
        openai_request.body["stream_options"]["include_usage"],
        json!(true)
    );
    assert_eq!(openai_request.body["messages"][0]["content"], "Say hello");
    let anthropic_request = &requests[1];
    assert_eq!(anthropic_request.path, "/v1/messages");
    assert_eq!(anthropic_request.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(anthropic_request.headers["anthropic-version"], "2023-06-01");
    assert!(!anthropic_request.headers.contains_key("authorization"));
    assert_eq!(anthropic_request.body["max_tokens"], json!(64));
    setup.stop().await;
}

#[tokio::test]
async fn retryable_statuses_are_retried_honouring_retry_after_and_a_400_fails_at_once() {
    let setup = started().await;
    setup.server.script(
        "flaky",
        [
            Reply::status(500, None),
            Reply::status(529, None),
            Reply::status(503, Some("1")),
        ],
    );
    setup.server.always(
        "refused",
        Reply::Status {
            code: 400,
            retry_after: None,
            message: "model 'refused' does not exist".into(),
        },
    );
    let retry = json!({"max_attempts": 5, "initial_interval": "100ms"});
    let mut flaky = config("mock-anthropic", "flaky");
    flaky["retry"] = retry.clone();
    let mut refused = config("mock-openai", "refused");
    refused["retry"] = retry;
    let flaky = setup.run(flaky).await;
    let refused = setup.run(refused).await;
    setup
        .system
        .wait_for_run(&flaky, "succeeded", RUN_WITHIN)
        .await;
    setup
        .system
        .wait_for_run(&refused, "failed", RUN_WITHIN)
        .await;

    let requests = setup.server.requests_for("flaky");
    assert_eq!(requests.len(), 4);
    let after_503 = requests[3].at - requests[2].at;
    assert!(
        after_503 >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {after_503:?}"
    );
    let kinds: Vec<String> = failures(&setup.system.events(&flaky).await)
        .into_iter()
        .map(|(e, _)| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "model_unavailable",
            "model_unavailable",
            "model_unavailable"
        ]
    );

    assert_eq!(
        setup.server.requests_for("refused").len(),
        1,
        "a 400 is not retried"
    );
    let (error, _) = failures(&setup.system.events(&refused).await).remove(0);
    assert_eq!(error.kind, "model_request_refused");
    assert!(
        error.message.contains("model 'refused' does not exist"),
        "{}",
        error.message
    );
    assert!(error.message.contains("mock-openai"), "{}", error.message);
    setup.stop().await;
}

#[tokio::test]
async fn a_429_cools_the_provider_down_for_every_run_of_the_process() {
    let setup = started().await;
    setup
        .server
        .script("limited", [Reply::status(429, Some("2"))]);
    let mut limited = config("mock-openai", "limited");
    limited["retry"] = json!({"max_attempts": 3, "initial_interval": "100ms"});
    let first = setup.run(limited).await;
    let limited_at = system_tests::eventually(RUN_WITHIN, || async {
        setup.server.requests_for("limited").first().map(|r| r.at)
    })
    .await
    .expect("the first run called");
    // Another run, another model, same provider: it waits out the cool-down.
    let second = setup.run(config("mock-openai", "bystander")).await;
    setup
        .system
        .wait_for_run(&first, "succeeded", RUN_WITHIN)
        .await;
    setup
        .system
        .wait_for_run(&second, "succeeded", RUN_WITHIN)
        .await;
    let bystander = setup.server.requests_for("bystander");
    assert_eq!(bystander.len(), 1);
    let waited = bystander[0].at - limited_at;
    assert!(
        waited >= Duration::from_millis(1900),
        "the second run called {waited:?} after the 429"
    );
    let retried = setup.server.requests_for("limited");
    assert_eq!(retried.len(), 2);
    assert!(retried[1].at - limited_at >= Duration::from_millis(1900));
    let (error, _) = failures(&setup.system.events(&first).await).remove(0);
    assert_eq!(error.kind, "model_rate_limited");
    setup.stop().await;
}

#[tokio::test]
async fn malformed_answers_cut_streams_and_slow_answers_fail_clearly_with_what_arrived() {
    let setup = started().await;
    setup.server.always("garbled", Reply::Malformed);
    setup.server.always(
        "cut",
        Reply::Cut {
            chunks: vec!["one".into(), " two".into(), " three".into()],
        },
    );
    setup.server.always(
        "slow",
        Reply::Slow {
            delay: Duration::from_secs(5),
        },
    );
    let garbled = setup.run(config("mock-anthropic", "garbled")).await;
    let cut = setup.run(config("mock-openai", "cut")).await;
    let slow = setup.run(config("mock-openai", "slow")).await;
    for run in [&garbled, &cut, &slow] {
        setup.system.wait_for_run(run, "failed", RUN_WITHIN).await;
    }
    let (error, _) = failures(&setup.system.events(&garbled).await).remove(0);
    assert_eq!(error.kind, "model_malformed_response");
    assert!(error.message.contains("not JSON"), "{}", error.message);

    let (error, calls) = failures(&setup.system.events(&cut).await).remove(0);
    assert_eq!(error.kind, "model_stream_cut", "{}", error.message);
    assert_eq!(calls.len(), 1, "the cut call is recorded");
    assert!(!calls[0].complete);
    assert_eq!(
        calls[0].usage.output_tokens, 3,
        "output counted by the chunks that arrived"
    );
    assert!(calls[0].usage.input_tokens > 0, "the prompt is counted");

    let (error, calls) = failures(&setup.system.events(&slow).await).remove(0);
    assert_eq!(error.kind, "model_timed_out", "{}", error.message);
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].complete);
    setup.stop().await;
}

#[tokio::test]
async fn fallback_models_answer_once_the_primary_failed_on_the_last_attempt() {
    let setup = started().await;
    setup.server.always("down", Reply::status(503, None));
    setup.server.always(
        "backup",
        Reply::text(
            "Backup here",
            MockUsage {
                input: 5,
                output: 2,
                ..MockUsage::default()
            },
        ),
    );
    let run = setup
        .run(
            json!({"provider": "mock-openai", "model": "down", "prompt": "hi",
                    "fallback_models": ["backup"],
                    "retry": {"max_attempts": 2, "initial_interval": "100ms"}}),
        )
        .await;
    setup
        .system
        .wait_for_run(&run, "succeeded", RUN_WITHIN)
        .await;
    assert_eq!(
        setup.server.requests_for("down").len(),
        2,
        "retried first, then fell back"
    );
    assert_eq!(setup.server.requests_for("backup").len(), 1);
    let events = setup.system.events(&run).await;
    let (output, calls) = successes(&events).remove(0);
    assert_eq!(output["text"], "Backup here");
    assert_eq!(output["fallback_from"], json!(["mock-openai/down"]));
    let models: Vec<(&str, bool)> = calls
        .iter()
        .map(|c| (c.model.as_str(), c.complete))
        .collect();
    assert_eq!(models, [("down", false), ("backup", true)]);
    setup.stop().await;
}

#[tokio::test]
async fn response_format_is_asked_for_and_the_output_parsed_and_validated() {
    let setup = started().await;
    let schema = json!({"type": "object", "required": ["answer"],
                        "properties": {"answer": {"type": "integer"}}});
    setup.server.always(
        "json-good",
        Reply::text(r#"{"answer": 42}"#, MockUsage::default()),
    );
    setup.server.always(
        "json-bad",
        Reply::text(r#"{"answer": "forty-two"}"#, MockUsage::default()),
    );
    let mut good = config("mock-openai", "json-good");
    good["response_format"] = schema.clone();
    let mut fenced = config("mock-anthropic", "json-good");
    fenced["response_format"] = schema.clone();
    let mut bad = config("mock-openai", "json-bad");
    bad["response_format"] = schema.clone();
    let good = setup.run(good).await;
    let fenced = setup.run(fenced).await;
    let bad = setup.run(bad).await;
    setup
        .system
        .wait_for_run(&good, "succeeded", RUN_WITHIN)
        .await;
    setup
        .system
        .wait_for_run(&fenced, "succeeded", RUN_WITHIN)
        .await;
    setup.system.wait_for_run(&bad, "failed", RUN_WITHIN).await;
    assert_eq!(
        successes(&setup.system.events(&good).await)[0].0["parsed"],
        json!({"answer": 42})
    );
    let (error, _) = failures(&setup.system.events(&bad).await).remove(0);
    assert_eq!(error.kind, "invalid_output");
    assert!(error.message.contains("answer"), "{}", error.message);

    let requests = setup.server.requests_for("json-good");
    let openai = requests
        .iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    assert_eq!(openai.body["response_format"]["type"], "json_schema");
    assert_eq!(
        openai.body["response_format"]["json_schema"]["schema"],
        schema
    );
    let anthropic = requests.iter().find(|r| r.path == "/v1/messages").unwrap();
    assert!(
        anthropic.body["system"]
            .as_str()
            .unwrap()
            .contains(r#""required":["answer"]"#)
    );

    // A config of the wrong shape is refused at submit, naming the field.
    let refused = setup
        .system
        .post(
            &format!("{}/v1/workflows", setup.commands.url),
            &json!({"name": "bad", "steps": [{"id": "ask", "kind": "llm",
                    "config": {"provider": "mock-openai", "model": "m", "prompt": "x",
                               "max_tokens": -1, "response_format": "json"}}]}),
        )
        .await;
    assert_eq!(refused.status, 422);
    let fields: Vec<&str> = refused.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "steps[0].config.max_tokens",
            "steps[0].config.response_format"
        ]
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_provider_without_a_key_fails_at_once_naming_the_variable_to_set() {
    let setup = started().await;
    let mut keyless = config("keyless", "anything");
    keyless["retry"] = json!({"max_attempts": 5, "initial_interval": "100ms"});
    let run = setup.run(keyless).await;
    setup.system.wait_for_run(&run, "failed", RUN_WITHIN).await;
    let events = setup.system.events(&run).await;
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "not retried");
    let (error, calls) = &failed[0];
    assert_eq!(error.kind, "missing_api_key");
    assert!(
        error.message.contains("keyless") && error.message.contains(UNSET_KEY_VAR),
        "{}",
        error.message
    );
    assert!(calls.is_empty());
    assert!(setup.server.requests().is_empty(), "nothing was sent");
    setup.stop().await;
}

#[tokio::test]
async fn keys_never_appear_in_events_the_log_or_reads() {
    let setup = started().await;
    let query = setup.system.query_service().await;
    let projectors = setup.system.projectors().await;
    // A provider that echoes the refused key in its error, as OpenAI's 401 does.
    setup.server.always(
        "echo",
        Reply::Status {
            code: 401,
            retry_after: None,
            message: format!("Incorrect API key provided: {OPENAI_KEY}"),
        },
    );
    let ok_openai = setup.run(config("mock-openai", "fine")).await;
    let ok_anthropic = setup.run(config("mock-anthropic", "fine")).await;
    let echo = setup.run(config("mock-openai", "echo")).await;
    setup
        .system
        .wait_for_run(&ok_openai, "succeeded", RUN_WITHIN)
        .await;
    setup
        .system
        .wait_for_run(&ok_anthropic, "succeeded", RUN_WITHIN)
        .await;
    setup.system.wait_for_run(&echo, "failed", RUN_WITHIN).await;
    let (error, _) = failures(&setup.system.events(&echo).await).remove(0);
    assert!(error.message.contains("[redacted]"), "{}", error.message);
    // The keys went to the provider...
    assert!(setup.server.requests().iter().any(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v.contains(OPENAI_KEY))
    }));
    // ...and nowhere else: not the stored events, not the log, not the reads.
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM event_store")
        .fetch_all(&setup.system.pool)
        .await
        .unwrap();
    let mut everything: Vec<u8> = payloads.concat();
    for record in setup.system.read_log().await {
        everything.extend_from_slice(&record.payload);
    }
    for run in [&ok_openai, &ok_anthropic, &echo] {
        let read = system_tests::eventually(RUN_WITHIN, || async {
            let reply = setup
                .system
                .get(&format!("{}/v1/workflows/{run}", query.url))
                .await;
            (reply.status == 200
                && reply.body["status"] != "pending"
                && reply.body["status"] != "running")
                .then_some(reply)
        })
        .await
        .expect("the run is readable");
        everything.extend_from_slice(read.body.to_string().as_bytes());
        for read in ["steps/ask", "events", "state"] {
            let reply = setup
                .system
                .get(&format!("{}/v1/workflows/{run}/{read}", query.url))
                .await;
            everything.extend_from_slice(reply.body.to_string().as_bytes());
        }
    }
    let text = String::from_utf8_lossy(&everything);
    assert!(text.contains("Hello from fine"), "the reads were captured");
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        assert!(!text.contains(key), "a key leaked");
        assert!(!text.contains(&key[8..]), "part of a key leaked");
    }
    projectors.stop().await;
    query.stop().await;
    setup.stop().await;
}

#[tokio::test]
async fn a_budget_race_never_overspends_past_the_reservations_in_flight() {
    let setup = started().await;
    // "hi" is estimated at 12 prompt tokens; max_tokens 1000; $1 per million tokens: each
    // call reserves exactly what it then costs, $0.001012, and the budget covers 10.
    setup.server.always(
        "budgeted",
        Reply::Text {
            chunks: vec!["a".into(), "b".into()],
            delay: Duration::from_millis(150),
            usage: MockUsage {
                input: 12,
                output: 1000,
                ..MockUsage::default()
            },
        },
    );
    let put = setup
        .system
        .send(
            setup
                .system
                .http
                .put(format!("{}/v1/budgets/default", setup.commands.url))
                .json(&json!({"monthly_limit_usd": "0.01012"})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["monthly_limit_usd"], "0.01012");
    let bad = setup
        .system
        .send(
            setup
                .system
                .http
                .put(format!("{}/v1/budgets/default", setup.commands.url))
                .json(&json!({"monthly_limit_usd": 12.5})),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.body["errors"][0]["field"], "monthly_limit_usd");

    let started_at = Instant::now();
    let runs = futures::future::join_all((0..50).map(|_| {
        setup.run(json!({"provider": "mock-openai", "model": "budgeted", "prompt": "hi",
                         "max_tokens": 1000, "retry": {"max_attempts": 3, "initial_interval": "100ms"}}))
    }))
    .await;
    let mut succeeded = 0;
    let mut exceeded = 0;
    // Failures other than the budget's (a connection the machine's load broke) are retried
    // and spend money; the exact 10/40 split holds only without them.
    let mut other_failures = Vec::new();
    for run in &runs {
        system_tests::eventually(RUN_WITHIN, || async {
            matches!(
                setup.system.run_status(run).await.as_deref(),
                Some("succeeded" | "failed")
            )
            .then_some(())
        })
        .await
        .expect("every run ends");
        let events = setup.system.events(run).await;
        for event in &events {
            if let WorkflowEvent::StepFailed(failed) = &event.event {
                if failed.error.kind == "budget_exceeded" {
                    assert!(
                        !failed.retryable && failed.next_attempt_at.is_none(),
                        "budget_exceeded is not retried"
                    );
                    assert!(failed.calls.is_empty(), "a refused call is not made");
                    let message = &failed.error.message;
                    assert!(
                        message.contains("0.01012")
                            && message.contains("spent")
                            && message.contains("reserved"),
                        "{message}"
                    );
                } else {
                    other_failures.push(failed.error.clone());
                }
            }
        }
        if !successes(&events).is_empty() {
            succeeded += 1;
        } else {
            let failed = failures(&events);
            assert_eq!(failed.last().unwrap().0.kind, "budget_exceeded");
            exceeded += 1;
        }
    }
    if other_failures.is_empty() {
        assert_eq!(
            (succeeded, exceeded),
            (10, 40),
            "in {:?}",
            started_at.elapsed()
        );
        assert_eq!(setup.server.requests_for("budgeted").len(), 10);
    } else {
        eprintln!("failures besides the budget's: {other_failures:?}");
        assert!(succeeded <= 10 && succeeded + exceeded == 50);
    }
    // Settlements go beside the recording of each outcome: all are in shortly after.
    let (spent, reservations): (String, i64) =
        system_tests::eventually(Duration::from_secs(10), || async {
            let (spent, reservations): (String, i64) = sqlx::query_as(
                "SELECT (SELECT spent_usd FROM budget_spend WHERE tenant = 'default')::text, \
                        (SELECT count(*) FROM budget_reservations)",
            )
            .fetch_one(&setup.system.pool)
            .await
            .unwrap();
            (reservations == 0).then_some((spent, reservations))
        })
        .await
        .expect("every reservation settled");
    assert!(usd(&spent) <= usd("0.01012"), "spent {spent}");
    if other_failures.is_empty() {
        assert_eq!(usd(&spent), usd("0.01012"));
    }
    assert_eq!(reservations, 0, "every reservation settled");
    let query = setup.system.query_service().await;
    let read = setup
        .system
        .get(&format!("{}/v1/budgets/default", query.url))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["monthly_limit_usd"], "0.01012");
    assert_eq!(usd(read.body["spent_usd"].as_str().unwrap()), usd(&spent));
    assert_eq!(read.body["reserved_usd"], "0");
    if other_failures.is_empty() {
        assert_eq!(read.body["calls"], json!(10));
    }
    let unlimited = setup
        .system
        .get(&format!("{}/v1/budgets/someone-else", query.url))
        .await;
    assert_eq!(unlimited.body["monthly_limit_usd"], Value::Null);
    query.stop().await;
    setup.stop().await;
}

/// `llmock` (PyPI, pinned in tests/clients/python/requirements.txt) serving both wire APIs.
struct Llmock {
    child: std::process::Child,
    url: String,
}

impl Llmock {
    async fn start() -> Self {
        let python = std::env::var("FLOWLINE_PYTHON")
            .expect("FLOWLINE_PYTHON: the test venv's python (scripts/test sets it)");
        let binary = std::path::Path::new(&python).with_file_name("llmock");
        let port = system_tests::free_port();
        let child = std::process::Command::new(binary)
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--response-style", "echo", "--log-level", "warning"])
            .spawn()
            .expect("llmock starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        system_tests::eventually(Duration::from_secs(30), || async {
            client
                .get(format!("{url}/v1/models"))
                .send()
                .await
                .ok()
                .map(drop)
        })
        .await
        .expect("llmock listens");
        Self { child, url }
    }
}

impl Drop for Llmock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn steps_run_against_llmock_a_mock_server_from_pypi_in_both_wire_formats() {
    let llmock = Llmock::start().await;
    let url = llmock.url.clone();
    let setup = started_with(|_| {
        format!(
            r#"
[[provider]]
name = "mock-openai"
api = "openai"
base_url = "{url}"
api_key_env = "MOCK_OPENAI_KEY"

[[provider]]
name = "mock-anthropic"
api = "anthropic"
base_url = "{url}/anthropic"
api_key_env = "MOCK_ANTHROPIC_KEY"
"#
        )
    })
    .await;
    let mut runs = Vec::new();
    for (provider, model) in [
        ("mock-openai", "gpt-4o-mini"),
        ("mock-anthropic", "claude-3-5-haiku"),
    ] {
        let run = setup
            .run(
                json!({"provider": provider, "model": model, "prompt": "hello there",
                        "max_tokens": 50, "retry": {"max_attempts": 1}}),
            )
            .await;
        runs.push((provider, run));
    }
    for (provider, run) in &runs {
        setup
            .system
            .wait_for_run(run, "succeeded", RUN_WITHIN)
            .await;
        let (output, calls) = successes(&setup.system.events(run).await).remove(0);
        assert_eq!(output["text"], "Hello! You said: hello there", "{provider}");
        assert_eq!(output["provider"], *provider);
        assert!(output["finish_reason"].is_string(), "{provider}: {output}");
        let usage = calls[0].usage;
        assert!(
            usage.input_tokens > 0 && usage.output_tokens > 0,
            "{provider}: {usage:?}"
        );
        assert!(calls[0].complete);
    }
    setup.stop().await;
    drop(llmock);
}
