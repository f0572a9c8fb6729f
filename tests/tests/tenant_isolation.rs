//! Tenant isolation, proven: tenant A, holding valid admin credentials of its own tenant,
//! goes after tenant B's runs through every API — REST reads, lists, counts, filters,
//! pages, time travel, GraphQL (federation included), subscriptions to updates, events
//! and step output, run commands, the audit log, the graph, usage, budgets and API keys —
//! and sees nothing and changes nothing. Every answer about B's run is the answer about a
//! run that does not exist (same status, same body but for the id), so it does not even
//! tell that B's run exists. Each check has its counterpart from B's side, so a leak
//! would not pass for an empty system.

use std::time::Duration;

use flowline_access::Role;
use serde_json::{Value, json};
use system_tests::auth::client_as;
use system_tests::js_clients::JsSubscription;
use system_tests::{Reply, TestSystem, eventually};
use uuid::Uuid;

const A: &str = "acme";
const B: &str = "globex";

struct Tenants {
    system: TestSystem,
    commands: system_tests::Running,
    queries: system_tests::Running,
    _projectors: system_tests::Running,
    _executor: system_tests::Running,
    a: reqwest::Client,
    b: reqwest::Client,
}

impl Tenants {
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.system.send(request).await
    }

    /// `path` on the query service as `client`.
    async fn read(&self, client: &reqwest::Client, path: &str) -> Reply {
        self.send(client.get(format!("{}{path}", self.queries.url)))
            .await
    }

    async fn graphql(&self, client: &reqwest::Client, query: &str) -> Value {
        let reply = self
            .send(
                client
                    .post(format!("{}/graphql", self.queries.url))
                    .json(&json!({"query": query})),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }

    async fn stored_events(&self, id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_store WHERE stream_id = $1::uuid")
            .bind(id)
            .fetch_one(&self.system.pool)
            .await
            .unwrap()
    }
}

/// The answer about B's `id` is the answer about `ghost`, a run nobody has.
fn same_as_nothing(about_b: &Reply, about_ghost: &Reply, id: &str, ghost: &str, what: &str) {
    assert_eq!(
        about_b.status, about_ghost.status,
        "{what}: {}",
        about_b.body
    );
    assert!(
        about_b.status == 404 || about_b.status == 200,
        "{what}: {} {}",
        about_b.status,
        about_b.body
    );
    let b = about_b.body.to_string().replace(id, "<id>");
    let nothing = about_ghost.body.to_string().replace(ghost, "<id>");
    assert_eq!(
        b, nothing,
        "{what}: the answer differs from one about no run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_sees_and_changes_nothing_of_another_tenants_runs() {
    let system = TestSystem::new(2).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let executor = system.executor().await;
    let t = Tenants {
        a: client_as(A, Role::Admin),
        b: client_as(B, Role::Admin),
        system,
        commands,
        queries,
        _projectors: projectors,
        _executor: executor,
    };
    let t = &t;
    let submit = |client: &reqwest::Client, body: Value| {
        let request = client
            .post(format!("{}/v1/workflows", t.commands.url))
            .json(&body);
        async move {
            let reply = t.send(request).await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.body["workflow_id"].as_str().unwrap().to_owned()
        }
    };
    // B: a live run (waiting for a signal, a tool step behind it) and a failed one.
    let b_run = submit(
        &t.b,
        json!({"name": "b-secret-research", "input": {"customer": "initech"}, "steps": [
            {"id": "wait", "kind": "wait", "config": {"signal": "approve"}},
            {"id": "search", "kind": "mcp_tool", "depends_on": ["wait"],
             "config": {"server": "b-web", "tool": "b-search"}}]}),
    )
    .await;
    let b_failed = submit(
        &t.b,
        json!({"name": "b-failing", "steps": [{"id": "call", "kind": "http",
               "config": {"url": "http://127.0.0.1:9/", "retry": {"max_attempts": 1}}}]}),
    )
    .await;
    let a_run = submit(
        &t.a,
        json!({"name": "a-own", "steps": [{"id": "only", "kind": "template", "config": {"template": "done"}}]}),
    )
    .await;
    t.system
        .wait_for_run(&b_failed, "failed", Duration::from_secs(60))
        .await;
    t.system
        .wait_for_run(&a_run, "succeeded", Duration::from_secs(60))
        .await;
    // B sees its runs (and fills the read cache with them first).
    let seen = eventually(Duration::from_secs(30), || async {
        let live = t.read(&t.b, &format!("/v1/workflows/{b_run}")).await;
        let failed = t.read(&t.b, &format!("/v1/workflows/{b_failed}")).await;
        let own = t.read(&t.a, &format!("/v1/workflows/{a_run}")).await;
        (live.body["status"] == "running" && failed.body["status"] == "failed" && own.status == 200)
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "the runs were never projected");
    let ghost = Uuid::new_v4().to_string();
    // `as_of` has whole seconds here: let one pass since the submissions.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // REST reads of one run, time travel included.
    for path in [
        "/v1/workflows/{id}",
        "/v1/workflows/{id}/events",
        "/v1/workflows/{id}/state?version=1",
        &format!(
            "/v1/workflows/{{id}}/state?as_of={}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        "/v1/workflows/{id}/steps/wait",
        "/v1/workflows/{id}/steps/wait/dependencies",
        "/v1/workflows/{id}/steps/wait/dependents",
        "/v1/workflows/{id}/steps/search/lineage",
    ] {
        let about_b = t.read(&t.a, &path.replace("{id}", &b_run)).await;
        let about_ghost = t.read(&t.a, &path.replace("{id}", &ghost)).await;
        same_as_nothing(&about_b, &about_ghost, &b_run, &ghost, path);
        assert_eq!(about_b.status, 404, "{path}");
        assert_eq!(
            t.read(&t.b, &path.replace("{id}", &b_run)).await.status,
            200,
            "B reads {path}"
        );
    }

    // Lists, filters, pages: A's run only.
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                item["workflow_id"]
                    .as_str()
                    .or(item["id"].as_str())
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        ids(&t.read(&t.a, "/v1/workflows").await),
        vec![a_run.clone()]
    );
    assert!(ids(&t.read(&t.a, "/v1/workflows?name=b-secret").await).is_empty());
    assert!(ids(&t.read(&t.a, "/v1/workflows?status=failed").await).is_empty());
    assert_eq!(
        ids(&t.read(&t.b, "/v1/workflows?name=b-secret").await),
        vec![b_run.clone()]
    );
    let first_page = t.read(&t.b, "/v1/workflows?limit=1").await;
    if let Some(cursor) = first_page.body["next_cursor"].as_str() {
        // B's own cursor, in A's hands, pages A's runs only.
        let page = t
            .read(&t.a, &format!("/v1/workflows?limit=1&cursor={cursor}"))
            .await;
        assert!(
            page.status == 400 || ids(&page).iter().all(|id| *id == a_run),
            "{}",
            page.body
        );
    }
    let b_graph = eventually(Duration::from_secs(30), || async {
        let reply = t.read(&t.b, "/v1/graph/runs?tool=b-web/b-search").await;
        (reply.body["runs"] != json!([])).then_some(reply)
    })
    .await;
    assert!(b_graph.is_some(), "B's graph never showed its tool");
    assert_eq!(
        t.read(&t.a, "/v1/graph/runs?tool=b-web/b-search")
            .await
            .body["runs"],
        json!([])
    );

    // GraphQL: one run, asOf, lists, counts, federation.
    for query in [
        "{ workflow(id: \"{id}\") { id name } }".to_owned(),
        format!(
            "{{ workflow(id: \"{{id}}\", asOf: \"{}\") {{ id name }} }}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        "{ _entities(representations: [{__typename: \"Workflow\", id: \"{id}\"}]) { ... on Workflow { id name } } }".to_owned(),
    ] {
        let about_b = t.graphql(&t.a, &query.replace("{id}", &b_run)).await;
        let about_ghost = t.graphql(&t.a, &query.replace("{id}", &ghost)).await;
        assert_eq!(
            about_b.to_string().replace(&b_run, "<id>"),
            about_ghost.to_string().replace(&ghost, "<id>"),
            "{query}"
        );
        assert!(
            about_b.to_string().contains("null"),
            "{query}: {about_b}"
        );
        let by_b = t.graphql(&t.b, &query.replace("{id}", &b_run)).await;
        assert!(by_b.to_string().contains("b-secret-research"), "B reads {query}: {by_b}");
    }
    let listed = t
        .graphql(
            &t.a,
            "{ workflows(first: 50) { edges { node { id } } } workflowCounts { total } }",
        )
        .await;
    assert_eq!(listed["data"]["workflowCounts"]["total"], 1, "{listed}");
    assert_eq!(
        listed["data"]["workflows"]["edges"][0]["node"]["id"],
        a_run.as_str(),
        "{listed}"
    );
    let counted_by_b = t.graphql(&t.b, "{ workflowCounts { total } }").await;
    assert_eq!(counted_by_b["data"]["workflowCounts"]["total"], 2);

    // Usage, budgets, API keys.
    let usage = t.read(&t.a, "/v1/usage?group_by=tenant").await;
    assert!(!usage.body.to_string().contains(B), "{}", usage.body);
    assert_eq!(t.read(&t.a, &format!("/v1/budgets/{B}")).await.status, 403);
    let budget = t
        .send(
            t.a.put(format!("{}/v1/budgets/{B}", t.commands.url))
                .json(&json!({"monthly_limit_usd": "1"})),
        )
        .await;
    assert_eq!(budget.status, 403);
    let b_key = t
        .send(
            t.b.post(format!("{}/v1/api-keys", t.commands.url))
                .json(&json!({"name": "b's key", "role": "reader"})),
        )
        .await;
    assert_eq!(b_key.status, 201);
    let b_key_id = b_key.body["id"].as_str().unwrap();
    let a_keys = t
        .send(t.a.get(format!("{}/v1/api-keys", t.commands.url)))
        .await;
    assert_eq!(a_keys.body, json!([]), "A lists B's keys");
    let revoke = t
        .send(t.a.delete(format!("{}/v1/api-keys/{b_key_id}", t.commands.url)))
        .await;
    assert_eq!(revoke.status, 404);
    // Naming B as the tenant to act in is refused outright.
    let acting = t
        .send(
            t.a.get(format!("{}/v1/workflows/{b_run}", t.queries.url))
                .header("x-tenant-id", B),
        )
        .await;
    assert_eq!(acting.status, 403);

    // The audit log: A's operators read A's events only.
    let audit = t.read(&t.a, "/v1/audit/events?limit=1000").await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    let tenants: Vec<&str> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["tenant"].as_str().unwrap())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|tenant| *tenant == A),
        "{tenants:?}"
    );
    assert_eq!(
        t.read(&t.a, &format!("/v1/audit/events?tenant={B}"))
            .await
            .status,
        403
    );
    let verified = t.read(&t.a, "/v1/audit/verify").await;
    assert_eq!(verified.body["summary"]["streams"], 1, "{}", verified.body);

    // Subscriptions: B's step output is not-found as a ghost's; B's events never reach A.
    let ws = format!("{}/graphql/ws", t.queries.url.replacen("http", "ws", 1));
    let a_bearer = format!("Bearer {}", system_tests::auth::token(A, Role::Admin));
    let step_output = |id: &str| {
        json!({
            "url": ws,
            "query": format!("subscription {{ stepOutput(workflowId: \"{id}\", stepId: \"wait\") {{ kind }} }}"),
            "connectionParams": {"authorization": a_bearer},
            "headers": {"authorization": null},
        })
    };
    // A step-output subscription waits for its run to appear (it may be subscribed before
    // the submit is projected): for B's run exactly as for a ghost's, and nothing comes.
    let mut output_of_b = JsSubscription::start(&step_output(&b_run));
    let mut output_of_ghost = JsSubscription::start(&step_output(&ghost));
    assert!(output_of_b.line().await.get("connected").is_some());
    assert!(output_of_ghost.line().await.get("connected").is_some());
    let mut a_events = JsSubscription::start(&json!({
        "url": ws,
        "query": "subscription { workflowEvents { workflowId version type } }",
        "connectionParams": {"authorization": a_bearer},
        "headers": {"authorization": null},
    }));
    assert!(a_events.line().await.get("connected").is_some());

    // Run commands on B's runs: refused as for a ghost, and nothing is appended.
    let before_live = t.stored_events(&b_run).await;
    let before_failed = t.stored_events(&b_failed).await;
    for (path, id) in [
        ("/v1/workflows/{id}/signals/approve", &b_run),
        ("/v1/workflows/{id}/pause", &b_run),
        ("/v1/workflows/{id}/resume", &b_run),
        ("/v1/workflows/{id}/cancel", &b_run),
        ("/v1/workflows/{id}/steps/call/retry", &b_failed),
    ] {
        let post = |id: &str| {
            t.a.post(format!("{}{}", t.commands.url, path.replace("{id}", id)))
                .json(&json!({}))
        };
        let about_b = t.send(post(id)).await;
        let about_ghost = t.send(post(&ghost)).await;
        same_as_nothing(&about_b, &about_ghost, id, &ghost, path);
        assert_eq!(about_b.status, 404, "{path}");
    }
    assert_eq!(
        t.stored_events(&b_run).await,
        before_live,
        "B's live run changed"
    );
    assert_eq!(
        t.stored_events(&b_failed).await,
        before_failed,
        "B's failed run changed"
    );

    // B's run moves on; A's feed shows A's next event and nothing of B's before it.
    let signalled = t
        .send(
            t.b.post(format!(
                "{}/v1/workflows/{b_run}/signals/approve",
                t.commands.url
            ))
            .json(&json!({"ok": true})),
        )
        .await;
    assert_eq!(signalled.status, 200, "{}", signalled.body);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let marker = submit(&t.a, json!({"name": "a-marker", "steps": [{"id": "only", "kind": "template", "config": {"template": "done"}}]})).await;
    loop {
        let event = a_events.next_data().await;
        let id = event["workflowEvents"]["workflowId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            id != b_run && id != b_failed,
            "A received B's event: {event}"
        );
        if id == marker {
            break;
        }
    }
    // B's wait step finished meanwhile; A's subscription to its output got nothing.
    assert_eq!(output_of_b.line_within(Duration::from_secs(2)).await, None);
    assert_eq!(
        output_of_ghost
            .line_within(Duration::from_millis(100))
            .await,
        None
    );
}
