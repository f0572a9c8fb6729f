//! Hostile reads: what one client can send to the query service to hold it, flood it or
//! make it work without end, each refused with its documented 4xx or WebSocket close
//! code, and each followed by a plain submit and read that must still work.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use system_tests::{Reply, Stack, TestSystem};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest error body a hostile parameter may produce.
const SMALL_BODY: usize = 2048;

fn workflow() -> Value {
    json!({
        "name": "hostile-reads",
        "steps": [{"id": "fetch", "kind": "http", "depends_on": []}]
    })
}

/// The three services of a test, with the query service configured by `limits`.
struct Services(Stack);

impl std::ops::Deref for Services {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

impl Services {
    async fn start(limits: query_service::ReadLimits, consistency_wait_ms: u64) -> Self {
        let system = TestSystem::new(2).await;
        let commands = system.command_service().await;
        let queries = system
            .query_service_from(system.query_config(
                consistency_wait_ms,
                query_service::GraphqlLimits::default(),
                limits,
            ))
            .await;
        Self(Stack::around(system, commands, queries).await)
    }

    /// Submits a run as `tenant`; its id and consistency token.
    async fn submit(&self, tenant: &str) -> (String, String) {
        let reply = self
            .system
            .send(
                self.system
                    .http
                    .post(format!("{}/v1/workflows", self.commands.url))
                    .header("x-tenant-id", tenant)
                    .json(&workflow()),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        (
            reply.body["workflow_id"].as_str().unwrap().to_owned(),
            reply.header("x-consistency-token").unwrap().to_owned(),
        )
    }

    async fn get(&self, path: &str) -> Reply {
        self.system
            .get(&format!("{}{path}", self.queries.url))
            .await
    }

    /// GETs `path` of the query service as `tenant`, with a consistency token if given.
    async fn read_as(&self, tenant: &str, path: &str, token: Option<&str>) -> Reply {
        let mut request = self
            .system
            .http
            .get(format!("{}{path}", self.queries.url))
            .header("x-tenant-id", tenant);
        if let Some(token) = token {
            request = request.header("x-consistency-token", token);
        }
        self.system.send(request).await
    }

    /// A plain submit, then a read of it with its token: the service still serves.
    async fn still_serves(&self) {
        let (id, token) = self.submit("default").await;
        let read = self
            .read_as("default", &format!("/v1/workflows/{id}"), Some(&token))
            .await;
        assert_eq!(read.status, 200, "{:?}", read.body);
        assert_eq!(read.body["id"], id.as_str());
    }

    fn ws_url(&self) -> String {
        format!("{}/graphql/ws", self.queries.url.replacen("http", "ws", 1))
    }

    /// A WebSocket speaking `graphql-transport-ws`, not initialised yet.
    async fn socket(&self) -> Socket {
        let mut request = self.ws_url().into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request).await.unwrap().0
    }

    /// A WebSocket initialised for `tenant` (acknowledged).
    async fn initialised(&self, tenant: &str) -> Socket {
        let mut socket = self.socket().await;
        send(
            &mut socket,
            json!({"type": "connection_init", "payload": {"tenant": tenant, "authorization": system_tests::auth::admin_bearer()}}),
        )
        .await;
        let ack = next_text(&mut socket).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        socket
    }

    /// The counter `name` of the query service's `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        self.system.metric(&self.queries.url, name).await
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// What comes next on `socket`: a JSON text message, or `{"close": code}`.
async fn next_message(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the server said nothing for 30 s");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return json!({"close": code, "reason": reason});
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return json!({"error": error.to_string()}),
            None => return json!({"ended": true}),
        }
    }
}

async fn next_text(socket: &mut Socket) -> Value {
    let message = next_message(socket).await;
    assert!(message.get("type").is_some(), "{message}");
    message
}

fn subscribe(id: &str, workflow_id: &str) -> Value {
    json!({
        "id": id,
        "type": "subscribe",
        "payload": {
            "query": "subscription ($id: UUID!) { workflowUpdated(id: $id) { id version } }",
            "variables": {"id": workflow_id},
        },
    })
}

fn assert_small_problem(reply: &Reply, status: u16, parameter: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["parameter"], parameter, "{:?}", reply.body);
    let size = reply.body.to_string().len();
    assert!(size <= SMALL_BODY, "an error body of {size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_page_sizes_are_refused_naming_limit() {
    let services = Services::start(Default::default(), 30_000).await;
    let (id, _) = services.submit("default").await;
    for path in [
        "/v1/workflows?limit=1000000".to_owned(),
        "/v1/workflows?limit=101".to_owned(),
        "/v1/workflows?limit=0".to_owned(),
        "/v1/workflows?limit=99999999999999999999999999".to_owned(),
        format!("/v1/workflows/{id}/events?limit=101"),
        format!("/v1/workflows/{id}/events?limit=-1"),
        format!("/v1/workflows/{id}/events?limit={}", "9".repeat(5000)),
    ] {
        let reply = services.get(&path).await;
        assert_small_problem(&reply, 400, "limit");
    }
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_are_refused_naming_cursor() {
    let services = Services::start(Default::default(), 30_000).await;
    let (id, _) = services.submit("default").await;
    let other_sort = services.get("/v1/workflows?limit=1&sort=name").await;
    assert_eq!(other_sort.status, 200, "{:?}", other_sort.body);
    let huge = "A".repeat(20_000);
    for path in [
        "/v1/workflows?cursor=%25%25%25".to_owned(),
        "/v1/workflows?cursor=eyJzb3J0IjoxfQ".to_owned(),
        format!("/v1/workflows?cursor={huge}"),
        format!(
            "/v1/workflows?sort=-name&cursor={}",
            other_sort.body["next_cursor"].as_str().unwrap_or("eA")
        ),
        format!("/v1/workflows/{id}/events?cursor=%25%25"),
        format!("/v1/workflows/{id}/events?cursor=eyJhZnRlcl92ZXJzaW9uIjotMX0"),
        format!("/v1/workflows/{id}/events?cursor={huge}"),
    ] {
        let reply = services.get(&path).await;
        assert_small_problem(&reply, 400, "cursor");
    }
    // A parameter's error quotes what was sent, cut short.
    let sort = services
        .get(&format!("/v1/workflows?sort={}", "x".repeat(20_000)))
        .await;
    assert_small_problem(&sort, 400, "sort");
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_read_page_by_page() {
    let services = Services::start(Default::default(), 30_000).await;
    let (id, _) = services.submit("default").await;
    let mut token = String::new();
    for i in 0..4 {
        let reply = services
            .system
            .post(
                &format!("{}/v1/workflows/{id}/signals/note", services.commands.url),
                &json!({"i": i}),
            )
            .await;
        assert!((200..300).contains(&reply.status), "{:?}", reply.body);
        token = reply.header("x-consistency-token").unwrap().to_owned();
    }
    let mut versions = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/workflows/{id}/events?limit=2");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = services.read_as("default", &path, Some(&token)).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let events = page.body["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        versions.extend(events.iter().map(|e| e["version"].as_i64().unwrap()));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    // Without `limit`, one page of at most 100.
    let all = services.get(&format!("/v1/workflows/{id}/events")).await;
    assert_eq!(all.body["events"].as_array().unwrap().len(), 5);
    assert!(all.body.get("next_cursor").is_none(), "{:?}", all.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holds_at_most_its_websocket_connections() {
    let limits = query_service::ReadLimits {
        ws_max_connections_per_tenant: 3,
        ..Default::default()
    };
    let services = Services::start(limits, 30_000).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(services.initialised("acme").await);
    }
    let mut one_more = services.socket().await;
    send(
        &mut one_more,
        json!({"type": "connection_init", "payload": {"tenant": "acme", "authorization": system_tests::auth::admin_bearer()}}),
    )
    .await;
    let refused = next_message(&mut one_more).await;
    assert_eq!(refused["close"], 1013, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("WS_MAX_CONNECTIONS_PER_TENANT"),
        "{refused}"
    );
    // Another tenant is not affected.
    let _other = services.initialised("globex").await;
    // A closed connection frees its place.
    let mut first = held.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let again = system_tests::eventually(Duration::from_secs(10), || async {
        let mut socket = services.socket().await;
        send(
            &mut socket,
            json!({"type": "connection_init", "payload": {"tenant": "acme", "authorization": system_tests::auth::admin_bearer()}}),
        )
        .await;
        (next_message(&mut socket).await["type"] == "connection_ack").then_some(socket)
    })
    .await;
    assert!(
        again.is_some(),
        "the closed connection's place was not freed"
    );
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_runs_at_most_its_subscriptions() {
    let limits = query_service::ReadLimits {
        ws_max_subscriptions_per_connection: 2,
        ..Default::default()
    };
    let services = Services::start(limits, 30_000).await;
    let (id, token) = services.submit("acme").await;
    let ready = services
        .read_as("acme", &format!("/v1/workflows/{id}"), Some(&token))
        .await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let mut socket = services.initialised("acme").await;
    for sub in ["1", "2"] {
        send(&mut socket, subscribe(sub, &id)).await;
        let first = next_text(&mut socket).await;
        assert_eq!(first["type"], "next", "{first}");
        assert_eq!(first["id"], sub);
    }
    send(&mut socket, subscribe("3", &id)).await;
    let refused = next_text(&mut socket).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "3");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "too-many-subscriptions"
    );
    // Completing one makes room; the connection stayed open throughout.
    send(&mut socket, json!({"id": "1", "type": "complete"})).await;
    send(&mut socket, subscribe("4", &id)).await;
    let mut admitted = false;
    for _ in 0..3 {
        let message = next_text(&mut socket).await;
        if message["type"] == "next" && message["id"] == "4" {
            admitted = true;
            break;
        }
    }
    assert!(
        admitted,
        "a subscription was refused after another completed"
    );
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_initialises_is_closed_with_4408() {
    let limits = query_service::ReadLimits {
        ws_init_timeout_ms: 500,
        ..Default::default()
    };
    let services = Services::start(limits, 30_000).await;
    let mut silent = services.socket().await;
    let closed = next_message(&mut silent).await;
    assert_eq!(closed["close"], 4408, "{closed}");
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009() {
    let limits = query_service::ReadLimits {
        ws_max_message_bytes: 4096,
        ..Default::default()
    };
    let services = Services::start(limits, 30_000).await;
    let mut socket = services.initialised("acme").await;
    let padding = "x".repeat(64 * 1024);
    let huge = json!({
        "id": "1",
        "type": "subscribe",
        "payload": {"query": format!("subscription {{ workflowEvents {{ type }} }} # {padding}")},
    });
    let _ = socket.send(Message::text(huge.to_string())).await;
    let closed = next_message(&mut socket).await;
    assert_eq!(closed["close"], 1009, "{closed}");
    // Binary frames are bounded the same way.
    let mut binary = services.initialised("acme").await;
    let _ = binary
        .send(Message::Binary(Bytes::from(vec![b' '; 64 * 1024])))
        .await;
    assert_eq!(next_message(&mut binary).await["close"], 1009);
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_subscription_id_closes_with_4409() {
    let services = Services::start(Default::default(), 30_000).await;
    let (id, _) = services.submit("acme").await;
    let mut socket = services.initialised("acme").await;
    send(&mut socket, subscribe("same", &id)).await;
    send(&mut socket, subscribe("same", &id)).await;
    let mut closed = next_message(&mut socket).await;
    while closed.get("close").is_none() {
        closed = next_message(&mut socket).await;
    }
    assert_eq!(closed["close"], 4409, "{closed}");
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consistency_token_waits_share_one_poll() {
    const WAITERS: usize = 200;
    let services = Services::start(Default::default(), 1_500).await;
    services.still_serves().await;
    let before = services
        .metric("flowline_query_consistency_polls_total")
        .await;
    // A position the read model will not reach: every request waits its whole bound.
    let unreachable = "0:999999999";
    let url = format!("{}/v1/workflows", services.queries.url);
    let waits = (0..WAITERS).map(|_| {
        let request = services
            .system
            .http
            .get(&url)
            .header("x-consistency-token", unreachable);
        services.system.send(request)
    });
    let replies = futures::future::join_all(waits).await;
    for reply in &replies {
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["type"], "/problems/not-yet-consistent");
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    let polls = services
        .metric("flowline_query_consistency_polls_total")
        .await
        - before;
    // Polling per request (5 ms doubling to 50 ms over 1.5 s) makes up to ~33 queries each
    // (874 in all when measured here, queued behind the pool's 8 connections); shared, the
    // waits cost about 33 whatever their number.
    println!("{WAITERS} concurrent token waits made {polls} checkpoint queries");
    assert!(
        polls < WAITERS as u64,
        "{polls} checkpoint queries for {WAITERS} waits: not shared"
    );
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_calls_in_a_loop_are_capped_not_piled_up() {
    let limits = query_service::ReadLimits {
        audit_max_concurrent_scans: 1,
        ..Default::default()
    };
    let services = Services::start(limits, 30_000).await;
    services.still_serves().await;
    let verify = format!("{}/v1/audit/verify", services.queries.url);
    let calls = (0..8).map(|_| {
        services.system.send(
            services
                .system
                .http
                .get(&verify)
                .bearer_auth(system_tests::admin_token()),
        )
    });
    let replies = futures::future::join_all(calls).await;
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 429),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(!busy.is_empty(), "8 scans at once were all let through");
    assert!(replies.iter().any(|r| r.status == 200));
    for reply in busy {
        assert_eq!(reply.body["type"], "/problems/audit-busy");
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    // One after the other, each is served.
    for _ in 0..5 {
        let reply = services
            .system
            .send(
                services
                    .system
                    .http
                    .get(format!("{}/v1/audit/events?limit=5", services.queries.url))
                    .bearer_auth(system_tests::admin_token()),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    services.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_wakes_only_the_subscriptions_it_concerns() {
    let services = Services::start(Default::default(), 30_000).await;
    let (watched, token) = services.submit("acme").await;
    let ready = services
        .read_as("acme", &format!("/v1/workflows/{watched}"), Some(&token))
        .await;
    assert_eq!(ready.status, 200);
    let mut socket = services.initialised("acme").await;
    send(&mut socket, subscribe("1", &watched)).await;
    assert_eq!(next_text(&mut socket).await["type"], "next");
    let before = services
        .metric("flowline_query_subscription_reads_total")
        .await;
    // Twenty changes of another tenant and of another run of this tenant.
    let mut last = String::new();
    for i in 0..10 {
        let tenant = if i % 2 == 0 { "globex" } else { "acme" };
        last = services.submit(tenant).await.1;
    }
    let projected = services
        .read_as("default", "/v1/workflows", Some(&last))
        .await;
    assert_eq!(projected.status, 200);
    // Give the feed time to deliver every notification.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = services
        .metric("flowline_query_subscription_reads_total")
        .await
        - before;
    assert_eq!(reads, 0, "changes of other runs made the subscription read");
    services.still_serves().await;
}
