//! Crypto-shredding end to end (issue 13, ADR 26): personal input and signal fields and
//! `submitted_by` are encrypted before they are stored, so neither the event store nor the
//! log holds their plaintext; the query service, the audit endpoints and the executor see
//! plaintext; `DELETE /v1/subjects/{id}` makes one subject's fields read as erased
//! everywhere, through the read cache, the graph, the audit tools and a rebuild, while the
//! other subject's data and the rest of every event stay readable and the hash chain still
//! verifies. GraphQL subscriptions go through the same opening.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::js_clients::JsSubscription;
use system_tests::{Reply, Running, TestSystem, bin_dir, eventually};

const WITHIN: Duration = Duration::from_secs(60);
const ERASED: &str = "[erased]";

struct Person {
    principal: &'static str,
    email: &'static str,
    name: &'static str,
    note: &'static str,
}

const ANA: Person = Person {
    principal: "ana-7f3e",
    email: "ana.kowalski@example.com",
    name: "Ana Kowalski",
    note: "called Ana at +48 600 100 200",
};
const BOB: Person = Person {
    principal: "bob-2c1a",
    email: "bob.brown@example.org",
    name: "Bob Brown",
    note: "Bob prefers mornings",
};

impl Person {
    fn secrets(&self) -> [&'static str; 4] {
        [self.principal, self.email, self.name, self.note]
    }
}

fn run_body(person: &Person) -> Value {
    json!({
        "name": "onboarding",
        "input": {"customer": {"email": person.email, "name": person.name, "tier": "gold"}},
        "steps": [
            {"id": "greet", "kind": "template",
             "config": {"template": "Dear {{ input.customer.name }} <{{ input.customer.email }}>"}},
            {"id": "approve", "kind": "wait", "depends_on": ["greet"], "config": {"signal": "approve"}}
        ]
    })
}

async fn submit_as(system: &TestSystem, commands: &Running, person: &Person) -> String {
    // The person's own token: the principal on the log is its subject.
    let person_client = system_tests::auth::client_with(&system_tests::auth::token_for(
        person.principal,
        system_tests::auth::PLATFORM_TENANT,
        flowline_access::Role::Submitter,
        chrono::Duration::hours(1),
    ));
    let reply = system
        .send(
            person_client
                .post(format!("{}/v1/workflows", commands.url))
                .json(&run_body(person)),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

async fn step_status(system: &TestSystem, queries: &Running, id: &str, step: &str) -> Value {
    system
        .get(&format!("{}/v1/workflows/{id}/steps/{step}", queries.url))
        .await
        .body
}

async fn run_view(system: &TestSystem, queries: &Running, id: &str) -> Value {
    let reply = system
        .get(&format!("{}/v1/workflows/{id}", queries.url))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

async fn graphql_view(system: &TestSystem, queries: &Running, id: &str) -> Value {
    let answer = system
        .graphql(
            &queries.url,
            &format!(
                "{{ workflow(id: \"{id}\") {{ name submittedBy input steps {{ id output }} }} }}"
            ),
        )
        .await;
    assert!(answer.get("errors").is_none(), "{answer}");
    answer["data"]["workflow"].clone()
}

/// The run's first event as a `workflowEvents` subscription (graphql-ws from npm) replays it.
async fn subscribed_submission(queries: &Running, id: &str) -> Value {
    let mut client = JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", queries.url.replacen("http://", "ws://", 1)),
        "query": "subscription ($filter: WorkflowEventFilter, $after: String) { workflowEvents(filter: $filter, after: $after) { workflowId version type data } }",
        "variables": {"filter": {"workflowId": id}, "after": ""},
        "connectionParams": {"tenant": "default"},
    }));
    let data = client.next_data().await;
    assert_eq!(
        data["workflowEvents"]["type"], "WorkflowSubmitted",
        "{data}"
    );
    data["workflowEvents"]["data"].clone()
}

async fn audit_events(system: &TestSystem, queries: &Running) -> Reply {
    let reply = system
        .send(
            system
                .http
                .get(format!(
                    "{}/v1/audit/events?tenant=default&limit=1000",
                    queries.url
                ))
                .header("authorization", system_tests::auth::admin_bearer()),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply
}

/// The audit lines of one run.
fn lines_of(events: &Reply, id: &str) -> Vec<Value> {
    events
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["stream_id"] == id)
        .cloned()
        .collect()
}

fn assert_plain(view: &Value, graphql: &Value, person: &Person) {
    assert_eq!(view["submitted_by"], person.principal);
    assert_eq!(
        view["input"]["customer"],
        json!({"email": person.email, "name": person.name, "tier": "gold"})
    );
    assert_eq!(graphql["submittedBy"], person.principal);
    assert_eq!(graphql["input"]["customer"]["email"], person.email);
    let greet = format!("Dear {} <{}>", person.name, person.email);
    assert_eq!(graphql["steps"][0]["output"], greet.as_str());
    assert_eq!(
        graphql["steps"][1]["output"],
        json!({"note": person.note, "ok": true})
    );
}

fn assert_erased(view: &Value, graphql: &Value) {
    assert_eq!(view["submitted_by"], ERASED);
    assert_eq!(view["name"], "onboarding", "the rest stays readable");
    assert_eq!(view["status"], "succeeded");
    assert_eq!(
        view["input"]["customer"],
        json!({"email": ERASED, "name": ERASED, "tier": "gold"})
    );
    assert_eq!(graphql["submittedBy"], ERASED);
    assert_eq!(graphql["input"]["customer"]["tier"], "gold");
    assert_eq!(graphql["input"]["customer"]["email"], ERASED);
    assert_eq!(graphql["steps"][0]["output"], ERASED);
    assert_eq!(
        graphql["steps"][1]["output"],
        json!({"note": ERASED, "ok": true})
    );
}

fn assert_no_plaintext(what: &str, bytes: &[u8], person: &Person) {
    let text = String::from_utf8_lossy(bytes);
    for secret in person.secrets() {
        assert!(
            !text.contains(secret),
            "{what} holds {secret:?} in plaintext"
        );
    }
}

async fn audit_cli(system: &TestSystem, args: &[&str]) -> (i32, Vec<Value>) {
    let binary = bin_dir().join("audit");
    assert!(
        binary.exists(),
        "build the binaries first (cargo build --bins)"
    );
    let kafka = system.kafka.clone();
    let database_url = system.database_url.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(binary)
            .args(&args)
            .env("KAFKA_BROKERS", &kafka.brokers)
            .env("KAFKA_TOPIC", &kafka.topic)
            .env("DATABASE_URL", &database_url)
            .output()
            .expect("audit runs");
        let lines = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        (output.status.code().unwrap_or(-1), lines)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn erasing_a_subject_shreds_its_personal_fields_everywhere_and_nothing_else() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let _executor = system.executor().await;

    let config =
        json!({"input": ["customer.email", "customer.name"], "signals": {"approve": ["note"]}});
    let set = system
        .send(
            system
                .http
                .put(format!("{}/v1/privacy", commands.url))
                .json(&config),
        )
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(
        system
            .get(&format!("{}/v1/privacy", queries.url))
            .await
            .body,
        config
    );
    let refused = system
        .send(
            system
                .http
                .put(format!("{}/v1/privacy", commands.url))
                .json(&json!({"input": ["a..b"]})),
        )
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.body["errors"][0]["field"], "input[0]");

    // A caller cannot hand in a look-alike envelope for the edge to open.
    let forged = system
        .post(
            &format!("{}/v1/workflows", commands.url),
            &json!({"name": "forged", "input": {"x": "flowline:pd:v1:0190:abc"},
                    "steps": [{"id": "a", "kind": "template"}]}),
        )
        .await;
    assert_eq!(forged.status, 422, "{:?}", forged.body);
    assert_eq!(forged.body["errors"][0]["field"], "input.x");

    let ana = submit_as(&system, &commands, &ANA).await;
    let bob = submit_as(&system, &commands, &BOB).await;

    // The executor rendered the template with the plaintext (the wait step then runs).
    for (id, person) in [(&ana, &ANA), (&bob, &BOB)] {
        let greeted = eventually(WITHIN, || async {
            let step = step_status(&system, &queries, id, "greet").await;
            (step["status"] == "succeeded").then_some(step)
        })
        .await
        .expect("greet succeeds");
        assert_eq!(
            greeted["output"],
            format!("Dear {} <{}>", person.name, person.email)
        );
        eventually(WITHIN, || async {
            let step = step_status(&system, &queries, id, "approve").await;
            (step["status"] == "running").then_some(())
        })
        .await
        .expect("approve waits");
        let signalled = system
            .post(
                &format!("{}/v1/workflows/{id}/signals/approve", commands.url),
                &json!({"note": person.note, "ok": true}),
            )
            .await;
        assert_eq!(signalled.status, 200, "{:?}", signalled.body);
        system.wait_for_run(id, "succeeded", WITHIN).await;
    }
    let ana_view = eventually(WITHIN, || async {
        let view = run_view(&system, &queries, &ana).await;
        (view["status"] == "succeeded").then_some(view)
    })
    .await
    .expect("projected");
    assert_plain(
        &ana_view,
        &graphql_view(&system, &queries, &ana).await,
        &ANA,
    );

    // Only ciphertext in the event store, the snapshots, the read model and on the log.
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM event_store")
        .fetch_all(&system.pool)
        .await
        .unwrap();
    let stored = payloads.concat();
    assert!(String::from_utf8_lossy(&stored).contains("gold"));
    let read_model: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(w)::text FROM workflows w \
         UNION ALL SELECT row_to_json(s)::text FROM workflow_steps s \
         UNION ALL SELECT row_to_json(e)::text FROM workflow_events e \
         UNION ALL SELECT row_to_json(n)::text FROM snapshots n \
         UNION ALL SELECT row_to_json(g)::text FROM graph_nodes g \
         UNION ALL SELECT row_to_json(p)::text FROM step_payloads p",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    let log: Vec<u8> = system
        .read_log()
        .await
        .into_iter()
        .flat_map(|record| record.payload)
        .collect();
    for person in [&ANA, &BOB] {
        assert_no_plaintext("the event store", &stored, person);
        assert_no_plaintext("the read model", read_model.concat().as_bytes(), person);
        assert_no_plaintext("the log", &log, person);
    }

    let submitted = subscribed_submission(&queries, &ana).await;
    assert_eq!(
        submitted["input"]["customer"]["email"], ANA.email,
        "{submitted}"
    );

    // Operators' audit reads show plaintext before the erasure.
    let before = audit_events(&system, &queries).await;
    assert!(
        Value::Array(lines_of(&before, &ana))
            .to_string()
            .contains(ANA.email)
    );

    let erase = |subject: &'static str| {
        let request = system
            .http
            .delete(format!("{}/v1/subjects/{subject}", commands.url));
        system.send(request)
    };
    assert_eq!(erase(ANA.principal).await.status, 204);
    assert_eq!(erase(ANA.principal).await.status, 204, "idempotent");
    assert_eq!(
        erase("nobody-ever").await.status,
        204,
        "unknown subjects too"
    );

    // Erased at once, also for the answer the read cache holds from before.
    let ana_view = run_view(&system, &queries, &ana).await;
    assert_erased(&ana_view, &graphql_view(&system, &queries, &ana).await);
    let bob_view = run_view(&system, &queries, &bob).await;
    assert_plain(
        &bob_view,
        &graphql_view(&system, &queries, &bob).await,
        &BOB,
    );
    let greet = step_status(&system, &queries, &ana, "greet").await;
    assert_eq!(greet["output"], ERASED);
    assert_eq!(greet["status"], "succeeded");
    let state = system
        .get(&format!("{}/v1/workflows/{ana}/state", queries.url))
        .await;
    assert_eq!(
        state.body["state"]["submitted_by"], ERASED,
        "{:?}",
        state.body
    );
    assert_eq!(state.body["state"]["input"]["customer"]["email"], ERASED);

    let submitted = subscribed_submission(&queries, &ana).await;
    assert_eq!(
        submitted["input"]["customer"]["email"], ERASED,
        "{submitted}"
    );
    assert_eq!(submitted["input"]["customer"]["tier"], "gold");
    let submitted = subscribed_submission(&queries, &bob).await;
    assert_eq!(submitted["input"]["customer"]["email"], BOB.email);

    // The graph names the principal by its key; its name reads as erased.
    let lineage = system
        .get(&format!(
            "{}/v1/workflows/{ana}/steps/approve/lineage",
            queries.url
        ))
        .await;
    assert_eq!(
        lineage.body["result"]["submitted_by"], ERASED,
        "{:?}",
        lineage.body
    );
    let lineage = system
        .get(&format!(
            "{}/v1/workflows/{bob}/steps/approve/lineage",
            queries.url
        ))
        .await;
    assert_eq!(
        lineage.body["result"]["submitted_by"], BOB.principal,
        "{:?}",
        lineage.body
    );

    // The audit tools: erased for ana, readable for bob, and the chain still verifies.
    let after = audit_events(&system, &queries).await;
    let ana_lines = Value::Array(lines_of(&after, &ana)).to_string();
    assert_no_plaintext("ana's audit lines", ana_lines.as_bytes(), &ANA);
    assert!(ana_lines.contains(ERASED) && ana_lines.contains("gold"));
    assert_eq!(lines_of(&after, &ana).len(), lines_of(&before, &ana).len());
    let bob_lines = Value::Array(lines_of(&after, &bob)).to_string();
    assert!(bob_lines.contains(BOB.email) && bob_lines.contains(BOB.note));
    let verify = system
        .send(
            system
                .http
                .get(format!("{}/v1/audit/verify", queries.url))
                .header("authorization", system_tests::auth::admin_bearer()),
        )
        .await;
    assert_eq!(verify.status, 200, "{:?}", verify.body);
    assert_eq!(verify.body["summary"]["ok"], true, "{:?}", verify.body);
    let (code, lines) = audit_cli(&system, &["verify"]).await;
    assert_eq!(code, 0, "{lines:?}");
    let (code, lines) = audit_cli(&system, &["query", "--stream", &ana]).await;
    assert_eq!(code, 0);
    let printed = Value::Array(lines).to_string();
    assert_no_plaintext("audit query", printed.as_bytes(), &ANA);
    assert!(printed.contains(ERASED));
    let (_, lines) = audit_cli(&system, &["query", "--stream", &bob]).await;
    assert!(Value::Array(lines).to_string().contains(BOB.email));

    // A rebuild replays the same ciphertext: still erased, bob still readable.
    let rebuilt = system
        .rebuild_through_admin(&projectors.url, "workflow_read_model.v1")
        .await;
    assert_eq!(rebuilt["status"], "swapped", "{rebuilt}");
    let ana_view = run_view(&system, &queries, &ana).await;
    assert_erased(&ana_view, &graphql_view(&system, &queries, &ana).await);
    let bob_view = run_view(&system, &queries, &bob).await;
    assert_plain(
        &bob_view,
        &graphql_view(&system, &queries, &bob).await,
        &BOB,
    );

    // A later run about the same subject gets a new key: readable, the old one stays erased.
    let again = submit_as(&system, &commands, &ANA).await;
    let view = eventually(WITHIN, || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{again}", queries.url))
            .await;
        (reply.status == 200).then_some(reply.body)
    })
    .await
    .expect("projected");
    assert_eq!(view["input"]["customer"]["email"], ANA.email);
    assert_erased(
        &run_view(&system, &queries, &ana).await,
        &graphql_view(&system, &queries, &ana).await,
    );
}
