//! Everything the command service accepts comes back identical (ADR 0017): generated
//! inputs, step configs and signal payloads of the accepted language, awkward on purpose
//! (nesting at the limit, keys at the limit, every kind of Unicode and escape, numbers at
//! the edges), submitted through HTTP and read back from the event store, the log, the
//! REST run read, GraphQL, `/events` and `/state`. PostgreSQL `jsonb` holds them on the
//! way (the read model), which the unit-level property in `schemas` cannot show.

use std::time::Duration;

use flowline_domain::accepted::strategies::{accepted_object, accepted_value};
use flowline_domain::{SubmitWorkflow, WorkflowEvent};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use system_tests::{TestSystem, eventually};

/// How many runs; each carries an input, a step config and two signal payloads.
const CASES: usize = 12;

/// JSON equality as JSON means it: numbers by value (`jsonb` keeps a number's value, not
/// its spelling: `1e19` comes back as `10000000000000000000`).
fn same_json(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(l), Value::Number(r)) => match (l.as_i128(), r.as_i128()) {
            (Some(l), Some(r)) => l == r,
            _ => l.as_f64() == r.as_f64(),
        },
        (Value::Array(l), Value::Array(r)) => {
            l.len() == r.len() && l.iter().zip(r).all(|(l, r)| same_json(l, r))
        }
        (Value::Object(l), Value::Object(r)) => {
            l.len() == r.len()
                && l.iter()
                    .all(|(key, value)| r.get(key).is_some_and(|other| same_json(value, other)))
        }
        _ => left == right,
    }
}

#[track_caller]
fn assert_same(what: &str, got: &Value, sent: &Value) {
    assert!(
        same_json(got, sent),
        "{what} differs:\n got  {got}\n sent {sent}"
    );
}

struct Case {
    input: Value,
    config: Value,
    payloads: [Value; 2],
}

fn generate() -> Vec<Case> {
    let mut runner = TestRunner::deterministic();
    let mut sample = |strategy: &dyn Fn() -> proptest::strategy::BoxedStrategy<Value>| {
        strategy().new_tree(&mut runner).expect("a value").current()
    };
    let mut cases = Vec::new();
    while cases.len() < CASES {
        let case = Case {
            input: sample(&|| accepted_object().boxed()),
            config: sample(&|| accepted_object().boxed()),
            payloads: [
                sample(&|| accepted_value().boxed()),
                sample(&|| accepted_value().boxed()),
            ],
        };
        // Policy members (`retry`, `timeout`…) are checked on their own.
        let submit = SubmitWorkflow {
            name: "n".into(),
            input: Some(case.input.clone()),
            steps: vec![flowline_domain::StepSpec {
                id: "only".into(),
                kind: "template".into(),
                depends_on: vec![],
                config: Some(case.config.clone()),
            }],
            timeout: None,
            subject: None,
            submitted_by: None,
        };
        if submit.validate().is_ok() {
            cases.push(case);
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_value_reads_back_identical_everywhere() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let cases = generate();

    let mut runs = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let body = json!({
            "name": format!("awkward {index} \u{1f600} \"q\" \\ é"),
            "input": case.input,
            "steps": [{"id": "only", "kind": "template", "config": case.config}],
        });
        let id = system.submit(&commands.url, &body).await;
        for (n, payload) in case.payloads.iter().enumerate() {
            let reply = system
                .post(
                    &format!("{}/v1/workflows/{id}/signals/s{n}", commands.url),
                    payload,
                )
                .await;
            assert_eq!(reply.status, 200, "case {index}: {}", reply.body);
        }
        runs.push(id);
    }

    // The event store and the log.
    let records = system.read_log().await;
    let codec = flowline_schemas::EventCodec::default();
    for (case, id) in cases.iter().zip(&runs) {
        let stored = system.events(id).await;
        let on_log: Vec<_> = records
            .iter()
            .filter(|record| &record.key == id)
            .map(|record| codec.decode(&record.payload).expect("the record decodes"))
            .collect();
        assert_eq!(on_log, stored, "the log has what the store has");
        let WorkflowEvent::Submitted(submitted) = &stored[0].event else {
            panic!("first event {:?}", stored[0].event);
        };
        assert_same("stored input", &submitted.input, &case.input);
        assert_same("stored config", &submitted.steps[0].config, &case.config);
        for (n, payload) in case.payloads.iter().enumerate() {
            let WorkflowEvent::SignalReceived(signal) = &stored[1 + n].event else {
                panic!("event {} {:?}", 2 + n, stored[1 + n].event);
            };
            assert_same("stored payload", &signal.payload, payload);
        }
    }

    // The projections and every read.
    for (case, id) in cases.iter().zip(&runs) {
        let events = eventually(Duration::from_secs(30), || async {
            let reply = system
                .get(&format!("{}/v1/workflows/{id}/events", queries.url))
                .await;
            let events = reply.body["events"]
                .as_array()
                .or(reply.body["items"].as_array())
                .cloned()?;
            (events.len() == 3).then_some(events)
        })
        .await
        .unwrap_or_else(|| panic!("run {id}: three events readable"));
        assert_same("/events input", &events[0]["data"]["input"], &case.input);
        for (n, payload) in case.payloads.iter().enumerate() {
            assert_same(
                "/events payload",
                &events[1 + n]["data"]["payload"],
                payload,
            );
        }

        let run = system
            .get(&format!("{}/v1/workflows/{id}", queries.url))
            .await;
        assert_eq!(run.status, 200, "{}", run.body);
        assert_same("REST input", &run.body["input"], &case.input);
        assert_same("REST config", &run.body["steps"][0]["config"], &case.config);

        let state = system
            .get(&format!("{}/v1/workflows/{id}/state", queries.url))
            .await;
        assert_eq!(state.status, 200, "{}", state.body);
        assert_same("/state input", &state.body["state"]["input"], &case.input);
        assert_same(
            "/state config",
            &state.body["state"]["steps"][0]["config"],
            &case.config,
        );
        for (n, payload) in case.payloads.iter().enumerate() {
            assert_same(
                "/state payload",
                &state.body["state"]["signals"][n]["payload"],
                payload,
            );
        }

        let graphql = system
            .graphql(
                &queries.url,
                &format!(
                    "{{ workflow(id: \"{id}\") {{ input steps {{ config }} events {{ data }} }} }}"
                ),
            )
            .await;
        assert!(graphql["errors"].is_null(), "{}", graphql["errors"]);
        let workflow = &graphql["data"]["workflow"];
        assert_same("GraphQL input", &workflow["input"], &case.input);
        assert_same(
            "GraphQL config",
            &workflow["steps"][0]["config"],
            &case.config,
        );
        for (n, payload) in case.payloads.iter().enumerate() {
            assert_same(
                "GraphQL payload",
                &workflow["events"][1 + n]["data"]["payload"],
                payload,
            );
        }
    }
}
