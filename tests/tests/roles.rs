//! The role matrix: every role of a tenant (reader < submitter < operator < admin), and of
//! the platform tenant, against every endpoint of every service and the GraphQL endpoint.
//! Each answer is exactly the documented one: the endpoint's success status when the role
//! is enough, 403 (a problem) when it is not. Endpoints that act on every tenant (the
//! projectors' and the executor's admin, `/metrics`) are the platform tenant's operators'
//! only: a tenant's own admin gets 403 there.

use std::time::Duration;

use flowline_access::Role;
use serde_json::{Value, json};
use system_tests::auth::{PLATFORM_TENANT, client_as};
use system_tests::{Reply, TestSystem};

const TENANT: &str = "acme";

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug)]
enum Needs {
    /// At least this role, in the tenant.
    Tenant(Role),
    /// At least this role, in the platform tenant.
    Platform(Role),
}

/// What an allowed call answers.
#[derive(Clone, Copy, Debug)]
enum Answers {
    Status(u16),
    /// By-id endpoints without an object to show: past the role check, a 404.
    NotFound,
}

/// What a call needs prepared: most read a fixed run; commands that change a run get a
/// fresh one in the state they need.
#[derive(Clone, Copy, Debug)]
enum Target {
    Fixed,
    Pending,
    Paused,
    Failed,
    ApiKey,
}

struct Case {
    method: &'static str,
    /// The path, with `{run}` and `{key}` replaced by the target's.
    path: &'static str,
    service: Service,
    body: Option<Value>,
    needs: Needs,
    answers: Answers,
    target: Target,
}

#[derive(Clone, Copy, Debug)]
enum Service {
    Commands,
    Queries,
    Projectors,
    Executor,
}

fn cases() -> Vec<Case> {
    use Answers::*;
    use Needs::*;
    use Service::*;
    use Target::*;
    let case = |method, path, service, body, needs, answers, target| Case {
        method,
        path,
        service,
        body,
        needs,
        answers,
        target,
    };
    let workflow = json!({"name": "matrix", "steps": [{"id": "a", "kind": "template", "config": {"template": "done"}}]});
    vec![
        // The command service: run commands for submitters, budgets and keys for admins.
        case(
            "POST",
            "/v1/workflows",
            Commands,
            Some(workflow),
            Tenant(Role::Submitter),
            Status(201),
            Fixed,
        ),
        case(
            "POST",
            "/v1/workflows/{run}/cancel",
            Commands,
            None,
            Tenant(Role::Submitter),
            Status(200),
            Pending,
        ),
        case(
            "POST",
            "/v1/workflows/{run}/signals/go",
            Commands,
            Some(json!({})),
            Tenant(Role::Submitter),
            Status(200),
            Pending,
        ),
        case(
            "POST",
            "/v1/workflows/{run}/pause",
            Commands,
            None,
            Tenant(Role::Submitter),
            Status(200),
            Pending,
        ),
        case(
            "POST",
            "/v1/workflows/{run}/resume",
            Commands,
            None,
            Tenant(Role::Submitter),
            Status(200),
            Paused,
        ),
        case(
            "POST",
            "/v1/workflows/{run}/steps/call/retry",
            Commands,
            None,
            Tenant(Role::Submitter),
            Status(200),
            Failed,
        ),
        case(
            "PUT",
            "/v1/budgets/acme",
            Commands,
            Some(json!({"monthly_limit_usd": "10"})),
            Tenant(Role::Admin),
            Status(200),
            Fixed,
        ),
        case(
            "POST",
            "/v1/api-keys",
            Commands,
            Some(json!({"name": "ci", "role": "reader"})),
            Tenant(Role::Admin),
            Status(201),
            Fixed,
        ),
        case(
            "GET",
            "/v1/api-keys",
            Commands,
            None,
            Tenant(Role::Admin),
            Status(200),
            Fixed,
        ),
        case(
            "DELETE",
            "/v1/api-keys/{key}",
            Commands,
            None,
            Tenant(Role::Admin),
            Status(204),
            ApiKey,
        ),
        case(
            "GET",
            "/metrics",
            Commands,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        // The query service: reads for readers, the audit log for operators.
        case(
            "GET",
            "/v1/workflows",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/events",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/state?version=1",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/steps/call",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/steps/call/dependencies",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/steps/call/dependents",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/workflows/{run}/steps/call/lineage",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/graph/runs?model=gpt-x",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/usage",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/budgets/acme",
            Queries,
            None,
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "POST",
            "/graphql",
            Queries,
            Some(json!({"query": "{ workflows(first: 1) { edges { node { id } } } }"})),
            Tenant(Role::Reader),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/audit/events?limit=5",
            Queries,
            None,
            Tenant(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/v1/audit/verify",
            Queries,
            None,
            Tenant(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/metrics",
            Queries,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        // The projectors and the executor act on every tenant.
        case(
            "GET",
            "/admin/lag",
            Projectors,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/metrics",
            Projectors,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/admin/dead-letters",
            Projectors,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/admin/dead-letters/999999",
            Projectors,
            None,
            Platform(Role::Operator),
            NotFound,
            Fixed,
        ),
        case(
            "POST",
            "/admin/dead-letters/999999/redrive",
            Projectors,
            None,
            Platform(Role::Operator),
            NotFound,
            Fixed,
        ),
        case(
            "POST",
            "/admin/dead-letters/redrive",
            Projectors,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "POST",
            "/admin/rebuilds",
            Projectors,
            Some(json!({"projection": "usage"})),
            Platform(Role::Operator),
            Status(202),
            Fixed,
        ),
        case(
            "GET",
            "/admin/rebuilds/00000000-0000-0000-0000-000000000000",
            Projectors,
            None,
            Platform(Role::Operator),
            NotFound,
            Fixed,
        ),
        case(
            "GET",
            "/admin/runs",
            Executor,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
        case(
            "GET",
            "/metrics",
            Executor,
            None,
            Platform(Role::Operator),
            Status(200),
            Fixed,
        ),
    ]
}

struct Services {
    system: TestSystem,
    commands: system_tests::Running,
    queries: system_tests::Running,
    projectors: system_tests::Running,
    executor: system_tests::Running,
    /// The run every read reads: succeeded, one step `call`.
    fixed_run: String,
}

impl Services {
    fn url(&self, service: Service) -> &str {
        match service {
            Service::Commands => &self.commands.url,
            Service::Queries => &self.queries.url,
            Service::Projectors => &self.projectors.url,
            Service::Executor => &self.executor.url,
        }
    }

    /// Submits a run in the tenant as the harness (a platform admin acting there).
    async fn submit(&self, steps: Value) -> String {
        self.system
            .submit_in(
                &self.commands.url,
                TENANT,
                &json!({"name": "matrix", "steps": steps}),
            )
            .await
    }

    async fn target(&self, target: Target) -> String {
        let admin = |request: reqwest::RequestBuilder| request.header("x-tenant-id", TENANT);
        match target {
            Target::Fixed => self.fixed_run.clone(),
            // A run waiting for a signal stays live as long as the test needs.
            Target::Pending => {
                self.submit(json!([{"id": "call", "kind": "wait", "config": {"signal": "never"}}]))
                    .await
            }
            Target::Paused => {
                let id = self
                    .submit(json!([{"id": "call", "kind": "wait", "config": {"signal": "never"}}]))
                    .await;
                let paused = self
                    .system
                    .send(admin(self.system.http.post(format!(
                        "{}/v1/workflows/{id}/pause",
                        self.commands.url
                    ))))
                    .await;
                assert_eq!(paused.status, 200, "{}", paused.body);
                id
            }
            Target::Failed => {
                let id = self.submit(failing_step()).await;
                self.system
                    .wait_for_run(&id, "failed", Duration::from_secs(60))
                    .await;
                id
            }
            Target::ApiKey => {
                let created = self
                    .system
                    .send(
                        admin(
                            self.system
                                .http
                                .post(format!("{}/v1/api-keys", self.commands.url)),
                        )
                        .json(&json!({"name": "to revoke", "role": "reader"})),
                    )
                    .await;
                assert_eq!(created.status, 201, "{}", created.body);
                created.body["id"].as_str().unwrap().to_owned()
            }
        }
    }

    async fn call(&self, client: &reqwest::Client, case: &Case) -> (String, Reply) {
        let target = self.target(case.target).await;
        let path = case
            .path
            .replace("{run}", &target)
            .replace("{key}", &target);
        let url = format!("{}{path}", self.url(case.service));
        let request = match case.method {
            "GET" => client.get(&url),
            "POST" => client.post(&url),
            "PUT" => client.put(&url),
            "DELETE" => client.delete(&url),
            other => unreachable!("{other}"),
        };
        let request = match &case.body {
            Some(body) => request.json(body),
            None => request,
        };
        (
            format!("{} {path}", case.method),
            self.system.send(request).await,
        )
    }
}

/// A step that fails for good at its first attempt (nothing listens on port 9).
fn failing_step() -> Value {
    json!([{"id": "call", "kind": "http",
            "config": {"url": "http://127.0.0.1:9/", "retry": {"max_attempts": 1}}}])
}

fn expect(case: &Case, allowed: bool, call: &str, role: &str, reply: &Reply) {
    if !allowed {
        assert_eq!(reply.status, 403, "{role}: {call}: {}", reply.body);
        assert_eq!(reply.body["type"], "/problems/forbidden", "{role}: {call}");
        return;
    }
    match case.answers {
        Answers::Status(status) => {
            assert_eq!(reply.status, status, "{role}: {call}: {}", reply.body)
        }
        Answers::NotFound => assert_eq!(reply.status, 404, "{role}: {call}: {}", reply.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_gets_exactly_what_it_may_on_every_endpoint() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let executor = system.executor().await;
    let fixed_run = system
        .submit_in(
            &commands.url,
            TENANT,
            &json!({"name": "matrix", "steps": [{"id": "call", "kind": "template", "config": {"template": "done"}}]}),
        )
        .await;
    system
        .wait_for_run(&fixed_run, "succeeded", Duration::from_secs(60))
        .await;
    let services = Services {
        system,
        commands,
        queries,
        projectors,
        executor,
        fixed_run: fixed_run.clone(),
    };
    // Reads wait until the run is projected.
    let projected = system_tests::eventually(Duration::from_secs(30), || async {
        let reply = services
            .system
            .send(
                client_as(TENANT, Role::Reader)
                    .get(format!("{}/v1/workflows/{fixed_run}", services.queries.url)),
            )
            .await;
        (reply.status == 200 && reply.body["status"] == "succeeded").then_some(())
    })
    .await;
    assert!(projected.is_some(), "the run was never projected");

    let cases = cases();
    let mut checked = 0;
    for role in Role::ALL {
        let tenant_client = client_as(TENANT, role);
        let platform_client = client_as(PLATFORM_TENANT, role);
        for case in &cases {
            let (allowed, client, who) = match case.needs {
                Needs::Tenant(needed) => (
                    role >= needed,
                    &tenant_client,
                    format!("{role} of {TENANT}"),
                ),
                // A tenant's own credentials never reach what acts on every tenant ...
                Needs::Platform(_) => (false, &tenant_client, format!("{role} of {TENANT}")),
            };
            let (call, reply) = services.call(client, case).await;
            expect(case, allowed, &call, &who, &reply);
            checked += 1;
            // ... the platform tenant's do, from the role named.
            if let Needs::Platform(needed) = case.needs {
                let (call, reply) = services.call(&platform_client, case).await;
                expect(
                    case,
                    role >= needed,
                    &call,
                    &format!("{role} of the platform"),
                    &reply,
                );
                checked += 1;
            }
        }
    }
    let platform = cases
        .iter()
        .filter(|case| matches!(case.needs, Needs::Platform(_)))
        .count();
    assert_eq!(
        checked,
        4 * (cases.len() + platform),
        "every role met every endpoint"
    );

    // Subscriptions are reads: a reader's connection is acknowledged.
    let ws = format!(
        "{}/graphql/ws",
        services.queries.url.replacen("http", "ws", 1)
    );
    let acknowledged = system_tests::js_clients::JsSubscription::start(&json!({
        "url": ws,
        "query": "subscription { workflowEvents { workflowId version } }",
        "connectionParams": {"authorization": format!("Bearer {}", system_tests::auth::token(TENANT, Role::Reader))},
        "headers": {"authorization": null},
    }))
    .line()
    .await;
    assert!(acknowledged.get("connected").is_some(), "{acknowledged}");
}
