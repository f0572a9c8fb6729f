//! Rate limits per credential and per tenant, in Redis: a burst up to the quota, then 429
//! with `Retry-After` and the `RateLimit`/`RateLimit-Policy` headers; refill over the
//! window; one credential's exhaustion leaves the tenant's others alone until the tenant's
//! own quota is spent; and when Redis is down the documented choice holds (`admit`: served
//! without limits and counted; `refuse`: 503), with the limits back once Redis is.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flowline_access::Role;
use flowline_access::rate_limit::WhenRedisDown;
use system_tests::auth::{client_as, client_with, token_for};
use system_tests::{Reply, Running, TestSystem, free_port};

/// A query service whose readers may send `reader` and whose tenants `tenant`, with its
/// Redis at `redis_url` (the test's own when `None`).
async fn limited(
    system: &TestSystem,
    reader: &str,
    tenant: &str,
    redis_url: Option<String>,
    when_down: WhenRedisDown,
) -> Running {
    let mut config = system.query_config(5_000, Default::default(), Default::default());
    config.access.rate_limit_reader = reader.parse().unwrap();
    config.access.rate_limit_tenant = tenant.parse().unwrap();
    config.access.when_redis_down = when_down;
    if let Some(url) = redis_url {
        config.cache.redis.redis_url = url;
    }
    system.query_service_from(config).await
}

async fn list(system: &TestSystem, client: &reqwest::Client, queries: &Running) -> Reply {
    system
        .send(client.get(format!("{}/v1/workflows", queries.url)))
        .await
}

fn reader(subject: &str, tenant: &str) -> reqwest::Client {
    client_with(&token_for(
        subject,
        tenant,
        Role::Reader,
        chrono::Duration::hours(1),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_up_to_the_quota_passes_then_429_until_it_refills() {
    let system = TestSystem::new(1).await;
    let queries = limited(&system, "5/3s", "1000/1m", None, WhenRedisDown::Admit).await;
    let ana = reader("ana", "acme");
    for remaining in (0..5).rev() {
        let reply = list(&system, &ana, &queries).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let limit = reply.header("ratelimit").unwrap();
        assert!(
            limit.contains(&format!("\"credential\";r={remaining};")),
            "{limit}"
        );
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"credential\";q=5;w=3, \"tenant\";q=1000;w=60")
        );
    }
    let refused = list(&system, &ana, &queries).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(refused.body["type"], "/problems/rate-limited");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
    assert!(
        refused
            .header("ratelimit")
            .unwrap()
            .contains("\"credential\";r=0;")
    );
    // Another credential of the same tenant is not held back by ana's burst.
    assert_eq!(
        list(&system, &reader("bob", "acme"), &queries).await.status,
        200
    );
    // After Retry-After, one request's worth has refilled.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(list(&system, &ana, &queries).await.status, 200);
    queries.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_credentials_share_its_quota_and_other_tenants_are_unaffected() {
    let system = TestSystem::new(1).await;
    let queries = limited(&system, "4/1m", "6/1m", None, WhenRedisDown::Admit).await;
    let (ana, bob) = (reader("ana", "acme"), reader("bob", "acme"));
    for _ in 0..4 {
        assert_eq!(list(&system, &ana, &queries).await.status, 200);
    }
    // Ana's own quota is spent.
    let refused = list(&system, &ana, &queries).await;
    assert_eq!(refused.status, 429);
    assert!(
        refused
            .header("ratelimit")
            .unwrap()
            .contains("\"credential\";r=0;")
    );
    // Bob has his own, but the tenant's 6 run out after two more.
    for _ in 0..2 {
        assert_eq!(list(&system, &bob, &queries).await.status, 200);
    }
    let refused = list(&system, &bob, &queries).await;
    assert_eq!(refused.status, 429);
    let limit = refused.header("ratelimit").unwrap();
    assert!(limit.contains("\"tenant\";r=0;"), "{limit}");
    assert!(!limit.contains("\"credential\";r=0;"), "{limit}");
    // Another tenant is not touched.
    assert_eq!(
        list(&system, &client_as("globex", Role::Reader), &queries)
            .await
            .status,
        200
    );
    queries.stop().await;
}

/// A Redis server of the test's own, to kill.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        // Owned from here on: dropping it kills and reaps the process.
        let redis = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_requests_are_admitted_or_refused_as_configured() {
    let system = TestSystem::new(1).await;
    let mut redis = OwnRedis::start(free_port());
    let queries = limited(
        &system,
        "3/1m",
        "1000/1m",
        Some(redis.url()),
        WhenRedisDown::Admit,
    )
    .await;
    let ana = reader("ana", "acme");
    for _ in 0..3 {
        assert_eq!(list(&system, &ana, &queries).await.status, 200);
    }
    assert_eq!(list(&system, &ana, &queries).await.status, 429);

    // Redis goes away: `admit` serves, without limit headers, and counts it.
    redis.kill();
    for _ in 0..5 {
        let reply = list(&system, &ana, &queries).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("ratelimit"), None);
    }
    assert!(
        system
            .metric(&queries.url, "flowline_rate_limit_unavailable_total")
            .await
            >= 5
    );

    // Redis is back (empty): the limits apply again.
    let _redis = OwnRedis::start(redis.port);
    let back = system_tests::eventually(Duration::from_secs(20), || async {
        list(&system, &ana, &queries)
            .await
            .header("ratelimit")
            .map(str::to_owned)
    })
    .await;
    assert!(back.is_some(), "the limits never came back with Redis");
    for _ in 0..3 {
        list(&system, &ana, &queries).await;
    }
    assert_eq!(list(&system, &ana, &queries).await.status, 429);
    queries.stop().await;

    // `refuse`: 503 with Retry-After while Redis is down.
    let nothing_listens = format!("redis://127.0.0.1:{}", free_port());
    let strict = limited(
        &system,
        "3/1m",
        "1000/1m",
        Some(nothing_listens),
        WhenRedisDown::Refuse,
    )
    .await;
    let refused = list(&system, &ana, &strict).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["type"], "/problems/rate-limits-unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    strict.stop().await;
}
