//! Poison events: a record that is not valid Avro and one whose handler fails are
//! dead-lettered with reason, offset and payload; the projection goes on; re-drive works
//! after a fix.

use std::time::Duration;

use flowline_event_log::{LogProducer, OutgoingRecord};
use serde_json::{Value, json};
use system_tests::{TestSystem, bin_dir, eventually};

async fn submit(system: &TestSystem, url: &str, name: &str) -> String {
    let reply = system
        .post(
            &format!("{url}/v1/workflows"),
            &json!({"name": name, "steps": [{"id": "a", "kind": "llm"}]}),
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    reply.body["workflow_id"].as_str().unwrap().to_owned()
}

/// `projectors dlq <args>` against this test's database.
fn dlq_cli(system: &TestSystem, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("projectors"))
        .arg("dlq")
        .args(args)
        .env("DATABASE_URL", &system.database_url)
        .output()
        .expect("projectors dlq runs")
}

async fn visible(system: &TestSystem, query_url: &str, id: &str, version: u64) {
    let seen = eventually(Duration::from_secs(30), || async {
        let reply = system.get(&format!("{query_url}/v1/workflows/{id}")).await;
        (reply.body["version"] == version).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "workflow {id} not projected at version {version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_redriven_after_a_fix() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;

    // Not Avro at all.
    LogProducer::new(&system.kafka)
        .unwrap()
        .publish(&[OutgoingRecord {
            key: b"garbage".to_vec(),
            partition: 0,
            payload: b"{\"not\": \"avro\"}".to_vec(),
            headers: vec![("event-type".into(), b"Mystery".to_vec())],
        }])
        .await
        .unwrap();
    let first = submit(&system, &commands.url, "first").await;
    visible(&system, &queries.url, &first, 1).await;

    // A read model that refuses a row (say, a constraint added by a bad migration): its
    // handler fails, and so does the next event of the same stream, which no longer follows.
    sqlx::query("ALTER TABLE workflows ADD CONSTRAINT no_forbidden CHECK (name <> 'forbidden')")
        .execute(&system.pool)
        .await
        .unwrap();
    let forbidden = submit(&system, &commands.url, "forbidden").await;
    let signal = system
        .post(
            &format!("{}/v1/workflows/{forbidden}/signals/go", commands.url),
            &json!({}),
        )
        .await;
    assert_eq!(signal.status, 200);
    let after = submit(&system, &commands.url, "after").await;
    visible(&system, &queries.url, &after, 1).await;

    let admin = |path: &str| format!("{}{path}", projectors.url);
    let unauthorized = system
        .send(reqwest::Client::new().get(admin("/admin/dead-letters")))
        .await;
    assert_eq!(unauthorized.status, 401);
    let authorized =
        |request: reqwest::RequestBuilder| request.bearer_auth(system_tests::admin_token());
    let letters = system
        .send(authorized(system.http.get(admin(
            "/admin/dead-letters?projection=workflow_read_model.v1",
        ))))
        .await;
    assert_eq!(letters.status, 200);
    let letters = letters.body.as_array().unwrap().clone();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("undecodable"),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[0]["log_offset"], 0);
    assert_eq!(
        letters[0]["payload"], "eyJub3QiOiAiYXZybyJ9",
        "the payload, base64"
    );
    assert_eq!(letters[0]["headers"]["event-type"], "Mystery");
    assert!(
        letters[1]["reason"]
            .as_str()
            .unwrap()
            .contains("no_forbidden"),
        "{:?}",
        letters[1]
    );
    assert_eq!(
        letters[1]["attempts"], 3,
        "bounded retries before dead-lettering"
    );
    assert!(
        letters[2]["reason"]
            .as_str()
            .unwrap()
            .contains("does not follow"),
        "{:?}",
        letters[2]
    );

    // The graph projection had its own trouble with the garbage only. It runs apart from
    // the read model: wait until it has read past the last record too.
    // One partition, read in order: its three runs in the graph mean the garbage before
    // them has been read too.
    system
        .wait_for_count("SELECT count(*) FROM graph_nodes WHERE kind = 'run'", 3)
        .await;
    let graph_letters = system
        .send(authorized(system.http.get(admin(
            "/admin/dead-letters?projection=workflow_graph.v1",
        ))))
        .await;
    assert_eq!(
        graph_letters.body.as_array().unwrap().len(),
        1,
        "{:?}",
        graph_letters.body
    );

    // Copies on the dead-letter topic, for consumers outside the database (produced once
    // the batch that dead-lettered them committed): the read model's three, the graph's and
    // the usage projection's garbage (it decodes every record too).
    let dead_letter_topic = eventually(Duration::from_secs(30), || async {
        let records = system_tests::LogRecords::of(
            &system.kafka.brokers,
            &format!("{}.dlq", system.kafka.topic),
        )
        .await;
        (records.len() == 5).then_some(records)
    })
    .await
    .expect("five copies on the dead-letter topic");
    assert!(
        dead_letter_topic
            .iter()
            .all(|r| r.headers.contains_key("dlq-reason"))
    );

    // The fix, then the re-drive (in log order).
    sqlx::query("ALTER TABLE workflows DROP CONSTRAINT no_forbidden")
        .execute(&system.pool)
        .await
        .unwrap();
    let redriven = system
        .send(authorized(
            system.http.post(admin("/admin/dead-letters/redrive")),
        ))
        .await;
    assert_eq!(redriven.status, 200, "{:?}", redriven.body);
    let outcomes: Vec<&str> = redriven
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec!["failed", "applied", "applied", "failed", "failed"],
        "read model's, then the graph's, then the usage projection's"
    );
    visible(&system, &queries.url, &forbidden, 2).await;

    // The CLI sees the one still pending.
    let output = dlq_cli(&system, &["list"]);
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        listing.contains("3 dead letter(s)") && listing.contains("undecodable"),
        "{listing}"
    );
    let shown = dlq_cli(&system, &["show", &letters[0]["id"].to_string()]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["log_offset"], 0);

    // A rebuild meets the same trouble again (the bad constraint is back, and the shadow
    // tables are built like the live ones). Its dead letters are the live projection's
    // after the swap, re-drivable into the tables now live; the letters of the replaced
    // tables are superseded, no longer pending. (NOT VALID: the live table holds the row.)
    sqlx::query(
        "ALTER TABLE workflows ADD CONSTRAINT no_forbidden CHECK (name <> 'forbidden') NOT VALID",
    )
    .execute(&system.pool)
    .await
    .unwrap();
    system
        .rebuild_through_admin(&projectors.url, "workflow_read_model")
        .await;
    let pending = system
        .send(authorized(system.http.get(admin(
            "/admin/dead-letters?projection=workflow_read_model.v1",
        ))))
        .await;
    let pending = pending.body.as_array().unwrap().clone();
    let offsets: Vec<&Value> = pending.iter().map(|l| &l["log_offset"]).collect();
    let before: Vec<&Value> = letters.iter().map(|l| &l["log_offset"]).collect();
    assert_eq!(
        offsets, before,
        "the rebuild dead-lettered the same records"
    );
    assert!(
        pending
            .iter()
            .all(|l| letters.iter().all(|old| old["id"] != l["id"])),
        "the pending letters are the rebuild's own: {pending:?}"
    );
    // It was read (and cached) at version 2 before; the swap tells readers to drop that.
    let gone = eventually(Duration::from_secs(10), || async {
        let reply = system
            .get(&format!("{}/v1/workflows/{forbidden}", queries.url))
            .await;
        (reply.status == 404).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the rebuilt tables lack it, and so do reads"
    );
    sqlx::query("ALTER TABLE workflows DROP CONSTRAINT no_forbidden")
        .execute(&system.pool)
        .await
        .unwrap();
    // Re-driven from the command line this time: the submission by its id, then the rest.
    let dlq = |args: &[&str]| {
        let output = dlq_cli(&system, args);
        let outcomes: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let outcome: Value = serde_json::from_str(line).expect("one JSON outcome a line");
                outcome["outcome"].as_str().unwrap().to_owned()
            })
            .collect();
        (output.status.success(), outcomes)
    };
    let submission = pending[1]["id"].to_string();
    assert_eq!(
        dlq(&["redrive", &submission]),
        (true, vec!["applied".to_owned()])
    );
    assert_eq!(
        dlq(&["redrive", "--all"]),
        (
            false,
            ["failed", "applied", "failed", "failed"]
                .map(str::to_owned)
                .to_vec()
        ),
        "the garbage still fails, for every projection; the signal applies"
    );
    visible(&system, &queries.url, &forbidden, 2).await;
}
