//! The Redis read cache (ADR 13) as a client sees it: a cached run is answered while the
//! read model cannot be read (a stalled projector holding its tables), a consistency token
//! is answered from the cache only when the entry already reflects it, and an invalidation
//! Redis did not take never lets the cache serve an older run afterwards.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{Reply, Running, TestSystem, eventually};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn workflow() -> Value {
    json!({
        "name": "cached",
        "steps": [{"id": "draft", "kind": "llm", "depends_on": [], "config": {"model": "gpt-x"}}]
    })
}

async fn submit(system: &TestSystem, commands: &Running) -> (String, String) {
    let reply = system
        .post(&format!("{}/v1/workflows", commands.url), &workflow())
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    (
        reply.body["workflow_id"].as_str().unwrap().to_owned(),
        reply.header("x-consistency-token").unwrap().to_owned(),
    )
}

async fn signal(system: &TestSystem, commands: &Running, id: &str) -> String {
    let reply = system
        .post(
            &format!("{}/v1/workflows/{id}/signals/approve", commands.url),
            &json!({"by": "ana"}),
        )
        .await;
    assert!((200..300).contains(&reply.status), "{:?}", reply.body);
    reply.header("x-consistency-token").unwrap().to_owned()
}

async fn read(system: &TestSystem, url: &str, token: Option<&str>) -> Reply {
    let mut request = system.http.get(url);
    if let Some(token) = token {
        request = request.header("x-consistency-token", token);
    }
    system.send(request).await
}

/// Holds the read model's tables as a stalled projector (or a long migration) would: every
/// read of them waits until the returned transaction ends.
async fn lock_read_model(system: &TestSystem) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut locked = system.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE workflows, workflow_steps IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locked)
        .await
        .unwrap();
    locked
}

/// Whether a read of `url` is still waiting after three seconds.
async fn blocks(url: &str) -> bool {
    system_tests::client()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .is_err_and(|error| error.is_timeout())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_run_is_answered_while_the_read_model_is_stalled() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service_waiting(30_000).await;
    let projectors = system.projectors().await;
    let (cached, token) = submit(&system, &commands).await;
    let (uncached, uncached_token) = submit(&system, &commands).await;
    let cached_url = format!("{}/v1/workflows/{cached}", queries.url);
    let first = read(&system, &cached_url, Some(&token)).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["version"], 1);
    // Projected, not read (so not cached).
    let listed = read(
        &system,
        &format!("{}/v1/workflows", queries.url),
        Some(&uncached_token),
    )
    .await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);

    projectors.stop().await;
    let locked = lock_read_model(&system).await;
    // The read model cannot answer now...
    assert!(
        blocks(&format!("{}/v1/workflows/{uncached}", queries.url)).await,
        "a read of the locked read model answered"
    );
    // ...but the cache does, with and without the token of the cached write.
    let from_cache = system
        .send(
            system
                .http
                .get(&cached_url)
                .timeout(Duration::from_secs(10)),
        )
        .await;
    assert_eq!(from_cache.status, 200, "{:?}", from_cache.body);
    assert_eq!(from_cache.body["version"], 1);
    let with_token = read(&system, &cached_url, Some(&token)).await;
    assert_eq!(with_token.status, 200, "{:?}", with_token.body);
    assert_eq!(with_token.body["id"], cached.as_str());
    locked.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_the_cached_entry_is_never_answered_from_it() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service_waiting(1_000).await;
    let projectors = system.projectors().await;
    let (id, token) = submit(&system, &commands).await;
    let url = format!("{}/v1/workflows/{id}", queries.url);
    let cached = eventually(Duration::from_secs(30), || async {
        let reply = read(&system, &url, Some(&token)).await;
        (reply.status == 200).then_some(reply)
    })
    .await
    .expect("version 1 read");
    assert_eq!(cached.body["version"], 1);

    projectors.stop().await;
    let newer = signal(&system, &commands, &id).await;
    // The stalled projection has not reached the signal: the cached version 1 is older
    // than the token, so the answer is a retryable 503, not version 1.
    let waiting = read(&system, &url, Some(&newer)).await;
    assert_eq!(waiting.status, 503, "{:?}", waiting.body);
    assert_eq!(waiting.body["type"], "/problems/not-yet-consistent");
    // Without a token the cached version 1 is the answer (no write of this client).
    let plain = read(&system, &url, None).await;
    assert_eq!(plain.body["version"], 1);

    let _projectors = system.projectors().await;
    let caught_up = eventually(Duration::from_secs(60), || async {
        let reply = read(&system, &url, Some(&newer)).await;
        (reply.status == 200).then_some(reply)
    })
    .await
    .expect("answers once projected");
    assert_eq!(caught_up.body["version"], 2);
    let plain = read(&system, &url, None).await;
    assert_eq!(plain.body["version"], 2, "the cache kept version 1");
}

/// A TCP proxy to the test Redis that can be cut (connections dropped, new ones closed
/// at once) and restored, to make Redis unreachable for one query service only.
struct RedisProxy {
    url: String,
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl RedisProxy {
    async fn start() -> Self {
        let upstream = system_tests::redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let open = Arc::new(watch::Sender::new(true));
        let task = tokio::spawn({
            let open = open.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if !*open.borrow() {
                        continue;
                    }
                    let mut cut = open.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Self { url, open, task }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_never_lets_an_older_run_be_served() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let proxy = RedisProxy::start().await;
    let mut config = system.query_config(
        30_000,
        query_service::GraphqlLimits::default(),
        Default::default(),
    );
    config.cache.redis.redis_url = proxy.url.clone();
    let queries = system.query_service_from(config).await;
    let _projectors = system.projectors().await;
    let (id, token) = submit(&system, &commands).await;
    let url = format!("{}/v1/workflows/{id}", queries.url);
    let first = read(&system, &url, Some(&token)).await;
    assert_eq!(first.body["version"], 1, "{:?}", first.body);
    let mut redis = redis::Client::open(system_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entry_key = format!("{}:read:workflow:v3:default:{id}", system.redis_prefix());
    let cached: bool = redis::cmd("EXISTS")
        .arg(&entry_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(cached, "version 1 was not cached");

    // Redis becomes unreachable for this query service; version 2 is projected and its
    // invalidation fails.
    proxy.cut();
    let newer = signal(&system, &commands, &id).await;
    let failed = eventually(Duration::from_secs(30), || async {
        let failures = system
            .metric(
                &queries.url,
                "flowline_query_cache_invalidation_failures_total",
            )
            .await;
        (failures > 0).then_some(())
    })
    .await;
    assert!(failed.is_some(), "the invalidation did not fail");
    // Meanwhile reads go to PostgreSQL.
    let during = read(&system, &url, Some(&newer)).await;
    assert_eq!(during.body["version"], 2, "{:?}", during.body);
    let during = read(&system, &url, None).await;
    assert_eq!(during.body["version"], 2, "{:?}", during.body);

    // Redis is back, still holding version 1 with nothing telling it is old: it must never
    // be served again.
    proxy.restore();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let reply = read(&system, &url, None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(
            reply.body["version"], 2,
            "the stale cached version came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
