//! Harness for the system tests: every test gets its own database and topic and runs the
//! real services in-process on free ports, against the real broker and PostgreSQL named by
//! `KAFKA_BROKERS` and `TEST_DATABASE_URL` (the test command starts both).

use std::time::{Duration, Instant};

use command_service::Config as CommandConfig;
use flowline_event_log::KafkaSettings;
use flowline_service_kit::db::{DatabaseSettings, with_database};
use projectors::Config as ProjectorConfig;
use query_service::Config as QueryConfig;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub mod auth;
pub mod fake_dgraph;
pub mod js_clients;
pub mod llm;
pub mod mcp_servers;
pub mod model_server;
pub mod step_server;
pub mod workloads;

pub use auth::{admin_token, client, client_as};

/// Broker of the tests.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Redis of the tests.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Any database URL on the test server; tests replace the database name.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A running service, stoppable by the test.
pub struct Running {
    /// Its HTTP base URL.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops it gracefully and waits until it is down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn spawn_server<F, E>(port: u16, run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug,
{
    let (stop, stopped) = oneshot::channel();
    let future = run(stopped);
    let task = tokio::spawn(async move {
        future.await.expect("service failed");
    });
    Running {
        url: format!("http://127.0.0.1:{port}"),
        stop: Some(stop),
        task,
    }
}

async fn stopped(receiver: oneshot::Receiver<()>) {
    let _ = receiver.await;
}

/// One test's isolated system: a fresh database, a fresh topic.
pub struct TestSystem {
    /// URL of the test's database.
    pub database_url: String,
    /// The test's Kafka settings (unique topic).
    pub kafka: KafkaSettings,
    /// HTTP client.
    pub http: reqwest::Client,
    /// A pool on the test database, for assertions.
    pub pool: sqlx::PgPool,
}

impl TestSystem {
    /// A new database (migrated) and a new topic with `partitions` partitions.
    pub async fn new(partitions: i32) -> Self {
        Self::with_brokers(brokers(), partitions).await
    }

    /// Like [`TestSystem::new`], on the given brokers.
    pub async fn with_brokers(brokers: String, partitions: i32) -> Self {
        flowline_service_kit::telemetry::init("system-tests");
        let name = format!("test_{}", Uuid::new_v4().simple());
        let database_url = with_database(&server_url(), &name).expect("valid TEST_DATABASE_URL");
        let pool = flowline_service_kit::db::prepare(&database_url, 4)
            .await
            .expect("test database");
        let kafka = KafkaSettings {
            brokers,
            topic: format!("test-{}", Uuid::new_v4().simple()),
            partitions,
        };
        flowline_event_log::ensure_topic(&kafka)
            .await
            .expect("test topic");
        Self {
            database_url,
            kafka,
            // A platform admin's client; a hung request fails its test in a minute instead
            // of at nextest's limit.
            http: auth::client(),
            pool,
        }
    }

    fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: 8,
        }
    }

    /// Starts a command service; `max_body_bytes` as configured by an operator.
    pub async fn command_service_with(&self, max_body_bytes: usize) -> Running {
        self.command_service_adjusted(|config| config.max_body_bytes = max_body_bytes)
            .await
    }

    /// Starts a command service with the default body limit.
    pub async fn command_service(&self) -> Running {
        self.command_service_with(1024 * 1024).await
    }

    /// Starts a query service.
    pub async fn query_service(&self) -> Running {
        self.query_service_configured(
            5_000,
            query_service::GraphqlLimits::default(),
            Default::default(),
        )
        .await
    }

    /// Starts a query service with the given GraphQL limits.
    pub async fn query_service_with(&self, graphql: query_service::GraphqlLimits) -> Running {
        self.query_service_configured(5_000, graphql, Default::default())
            .await
    }

    /// Starts a query service that waits at most `consistency_wait_ms` for a token.
    pub async fn query_service_waiting(&self, consistency_wait_ms: u64) -> Running {
        self.query_service_configured(
            consistency_wait_ms,
            query_service::GraphqlLimits::default(),
            Default::default(),
        )
        .await
    }

    async fn query_service_configured(
        &self,
        consistency_wait_ms: u64,
        graphql: query_service::GraphqlLimits,
        limits: query_service::ReadLimits,
    ) -> Running {
        self.query_service_from(self.query_config(consistency_wait_ms, graphql, limits))
            .await
    }

    /// The query service's settings in this test system.
    pub fn query_config(
        &self,
        consistency_wait_ms: u64,
        graphql: query_service::GraphqlLimits,
        limits: query_service::ReadLimits,
    ) -> QueryConfig {
        QueryConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: self.database(),
            kafka: self.kafka.clone(),
            access: auth::access_settings(),
            graph: flowline_graph::GraphSettings { dgraph_url: None },
            consistency: query_service::consistency::ConsistencySettings {
                consistency_wait_ms,
                read_model_projection: "workflow_read_model.v1".into(),
            },
            cache: query_service::cache::CacheSettings {
                redis: self.redis_settings(),
                read_cache_ttl_seconds: 300,
            },
            graphql,
            limits,
            statements: Default::default(),
        }
    }

    /// Starts a query service with `config`.
    pub async fn query_service_from(&self, config: QueryConfig) -> Running {
        let app = query_service::Application::build(config)
            .await
            .expect("query service builds");
        spawn_server(app.port(), |stop| app.run_until(stopped(stop)))
    }

    /// This test's Redis key prefix.
    pub fn redis_prefix(&self) -> String {
        format!("test:{}", self.kafka.topic)
    }

    /// The test's Redis, under its own key prefix.
    pub fn redis_settings(&self) -> flowline_service_kit::redis_settings::RedisSettings {
        flowline_service_kit::redis_settings::RedisSettings {
            redis_url: redis_url(),
            redis_key_prefix: self.redis_prefix(),
        }
    }

    /// The consumer group prefix of this test's projectors.
    pub fn group_prefix(&self) -> String {
        format!("group-{}", self.kafka.topic)
    }

    /// Starts the projectors.
    pub async fn projectors(&self) -> Running {
        self.projectors_into(&self.database_url, &self.group_prefix())
            .await
    }

    /// POSTs JSON and returns status, headers and the JSON body (`Null` when none).
    pub async fn post(&self, url: &str, body: &Value) -> Reply {
        self.send(self.http.post(url).json(body)).await
    }

    /// Rebuilds `projection` through the projectors' admin API at `projectors_url` and
    /// waits until it swapped in; returns the rebuild's final status.
    pub async fn rebuild_through_admin(&self, projectors_url: &str, projection: &str) -> Value {
        let id = self
            .start_rebuild(
                projectors_url,
                serde_json::json!({"projection": projection}),
            )
            .await;
        self.rebuild_reaches(projectors_url, &id, "swapped").await
    }

    /// Starts (or resumes) a rebuild through the admin API with `body`; its id.
    pub async fn start_rebuild(&self, projectors_url: &str, body: Value) -> String {
        let started = self
            .send(
                self.http
                    .post(format!("{projectors_url}/admin/rebuilds"))
                    .json(&body),
            )
            .await;
        assert_eq!(started.status, 202, "{:?}", started.body);
        started.body["id"].as_str().expect("rebuild id").to_owned()
    }

    /// Waits until rebuild `id` has `status`; returns its record.
    pub async fn rebuild_reaches(&self, projectors_url: &str, id: &str, status: &str) -> Value {
        let url = format!("{projectors_url}/admin/rebuilds/{id}");
        eventually(Duration::from_secs(60), || async {
            let record = self.send(self.http.get(&url)).await.body;
            (record["status"] == status).then_some(record)
        })
        .await
        .unwrap_or_else(|| panic!("rebuild {id} never {status}"))
    }

    /// Sends a request and reads the reply.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GETs and reads the reply.
    pub async fn get(&self, url: &str) -> Reply {
        self.send(self.http.get(url)).await
    }

    /// Runs a GraphQL query and returns its whole response body.
    pub async fn graphql(&self, query_url: &str, query: &str) -> Value {
        let reply = self
            .post(
                &format!("{query_url}/graphql"),
                &serde_json::json!({ "query": query }),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body
    }

    /// The single number a query on the test database returns.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Waits (up to a minute) until `sql` returns `expected`.
    pub async fn wait_for_count(&self, sql: &'static str, expected: i64) {
        let reached = eventually(Duration::from_secs(60), || async {
            (self.count(sql).await == expected).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "{sql}: expected {expected}, got {}",
            self.count(sql).await
        );
    }

    /// Rows in the event store (what the write side accepted).
    pub async fn stored_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_store")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Records on the test's topic, all partitions.
    pub async fn records_on_log(&self) -> i64 {
        let brokers = self.kafka.brokers.clone();
        let topic = self.kafka.topic.clone();
        tokio::task::spawn_blocking(move || {
            flowline_event_log::high_watermarks(&brokers, &topic)
                .unwrap()
                .into_iter()
                .map(|(_, high)| high)
                .sum()
        })
        .await
        .unwrap()
    }
}

/// Where the workspace's binaries are (`scripts/test` builds them before the suite).
pub fn bin_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("FLOWLINE_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// A free port on 127.0.0.1 (free when asked; the caller binds it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A service running as its own OS process, so a test can `kill -9` it.
pub struct ServiceProcess {
    /// Its HTTP base URL.
    pub url: String,
    command: std::process::Command,
    child: Option<std::process::Child>,
}

impl ServiceProcess {
    /// Starts `binary` with `env` and waits until `/health` answers.
    pub async fn start(binary: &str, port: u16, env: Vec<(String, String)>) -> Self {
        let path = bin_dir().join(binary);
        assert!(
            path.exists(),
            "{} is missing: build the binaries first (scripts/test does: cargo build --bins)",
            path.display()
        );
        let mut command = std::process::Command::new(path);
        command
            .env(
                "RUST_LOG",
                std::env::var("SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env);
        let mut process = Self {
            url: format!("http://127.0.0.1:{port}"),
            command,
            child: None,
        };
        process.restart().await;
        process
    }

    /// Starts it again (after a kill) and waits until it answers.
    pub async fn restart(&mut self) {
        let mut child = self.command.spawn().expect("service process starts");
        let http = reqwest::Client::new();
        let health = format!("{}/health", self.url);
        // A child that exited (its port taken meanwhile, say) must not pass for healthy
        // because something else answers on that port.
        let up = eventually(Duration::from_secs(30), || {
            let exited = child.try_wait().ok().flatten();
            let http = &http;
            let health = &health;
            async move {
                if let Some(status) = exited {
                    panic!("service process exited before it was healthy: {status}");
                }
                http.get(health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        self.child = Some(child);
        assert!(up.is_some(), "{} did not become healthy", self.url);
    }

    /// `kill -9`: no shutdown hook runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestSystem {
    /// Environment of a service process of this system.
    pub fn process_env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("KAFKA_BROKERS", self.kafka.brokers.clone()),
            ("KAFKA_TOPIC", self.kafka.topic.clone()),
            ("KAFKA_PARTITIONS", self.kafka.partitions.to_string()),
            ("REDIS_URL", redis_url()),
            ("REDIS_KEY_PREFIX", self.redis_prefix()),
            ("PROJECTOR_GROUP_PREFIX", self.group_prefix()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(auth::access_env())
        .collect()
    }

    /// Projectors as their own process.
    pub async fn projector_process(&self) -> ServiceProcess {
        self.projector_process_with(Vec::new()).await
    }

    /// Projectors as their own process, with `overrides` of its environment.
    pub async fn projector_process_with(&self, overrides: Vec<(String, String)>) -> ServiceProcess {
        let port = free_port();
        let mut env = self.process_env();
        env.push(("PROJECTOR_ADMIN_ADDR".into(), format!("127.0.0.1:{port}")));
        env.extend(overrides);
        ServiceProcess::start("projectors", port, env).await
    }

    /// A second, empty database (migrated) on the same server, for a fresh rebuild to
    /// compare with.
    pub async fn another_database(&self) -> (String, sqlx::PgPool) {
        let name = format!("test_{}", Uuid::new_v4().simple());
        let url = with_database(&server_url(), &name).expect("valid TEST_DATABASE_URL");
        let pool = flowline_service_kit::db::prepare(&url, 4)
            .await
            .expect("database");
        (url, pool)
    }

    /// Projectors writing into `database_url` under their own consumer groups.
    pub async fn projectors_into(&self, database_url: &str, group_prefix: &str) -> Running {
        self.projectors_from(self.projectors_config(database_url, group_prefix))
            .await
    }

    /// The projectors' settings in tests, writing into `database_url`.
    pub fn projectors_config(&self, database_url: &str, group_prefix: &str) -> ProjectorConfig {
        ProjectorConfig {
            command: None,
            access: auth::access_settings(),
            redis: self.redis_settings(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            group_prefix: group_prefix.to_owned(),
            batch_size: 500,
            rebuild_batch_size: 500,
            rebuild_history: projectors::HistorySource::EventStore,
            cloudevents_source: flowline_event_store::headers::cloudevents::DEFAULT_SOURCE.into(),
            fetch_wait_ms: 10,
            rebuild_grace_seconds: 2,
            database: DatabaseSettings {
                url: database_url.to_owned(),
                max_connections: 8,
            },
            kafka: self.kafka.clone(),
            graph: flowline_graph::GraphSettings { dgraph_url: None },
        }
    }

    /// Starts the projectors with `config`.
    pub async fn projectors_from(&self, config: ProjectorConfig) -> Running {
        let app = projectors::Application::build(config)
            .await
            .expect("projectors build");
        spawn_server(app.port(), |stop| app.run_until(stopped(stop)))
    }

    /// A query service as its own process.
    pub async fn query_process(&self) -> ServiceProcess {
        let port = free_port();
        let mut env = self.process_env();
        env.push(("QUERY_ADDR".into(), format!("127.0.0.1:{port}")));
        ServiceProcess::start("query-service", port, env).await
    }

    /// The executor in-process, with short leases (a test's partitions change hands fast).
    pub async fn executor(&self) -> Running {
        self.executor_with(|_| {}).await
    }

    /// The executor in-process, with its settings adjusted by `adjust`.
    pub async fn executor_with(&self, adjust: impl FnOnce(&mut executor::Config)) -> Running {
        self.executor_with_runners(adjust, |runners| runners).await
    }

    /// The executor in-process, with its settings adjusted by `adjust` and step runners
    /// replaced by `runners` (a test's own runner for a kind).
    pub async fn executor_with_runners(
        &self,
        adjust: impl FnOnce(&mut executor::Config),
        runners: impl FnOnce(executor::runners::Runners) -> executor::runners::Runners,
    ) -> Running {
        use clap::Parser;
        let mut config = executor::Config::parse_from(["executor"]);
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.lease_ttl_ms = 2_000;
        config.database = self.database();
        config.kafka = self.kafka.clone();
        config.redis = self.redis_settings();
        config.access = auth::access_settings();
        adjust(&mut config);
        let app = executor::Application::build_with(config, runners)
            .await
            .expect("executor builds");
        spawn_server(app.port(), |stop| app.run_until(stopped(stop)))
    }

    /// The executor as its own process (to `kill -9` it), with `overrides` of its
    /// environment.
    pub async fn executor_process(&self, overrides: Vec<(String, String)>) -> ServiceProcess {
        let port = free_port();
        let mut env = self.process_env();
        env.push(("EXECUTOR_ADMIN_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("EXECUTOR_LEASE_TTL_MS".into(), "2000".into()));
        env.extend(overrides);
        ServiceProcess::start("executor", port, env).await
    }

    /// Submits `body` and returns the new run's id.
    pub async fn submit(&self, command_url: &str, body: &Value) -> String {
        let reply = self
            .post(&format!("{command_url}/v1/workflows"), body)
            .await;
        created_run(reply)
    }

    /// Submits `body` in `tenant` and returns the new run's id.
    pub async fn submit_in(&self, command_url: &str, tenant: &str, body: &Value) -> String {
        let request = self
            .http
            .post(format!("{command_url}/v1/workflows"))
            .header("X-Tenant-Id", tenant)
            .json(body);
        created_run(self.send(request).await)
    }

    /// The run's status, straight from the event store's events (independent of the
    /// projections).
    pub async fn run_status(&self, workflow_id: &str) -> Option<String> {
        let last: Option<String> = sqlx::query_scalar(
            "SELECT event_type FROM event_store WHERE stream_id = $1::uuid \
             ORDER BY stream_version DESC LIMIT 1",
        )
        .bind(workflow_id)
        .fetch_optional(&self.pool)
        .await
        .expect("event store readable");
        last.map(|event_type| {
            match event_type.as_str() {
                "WorkflowSucceeded" => "succeeded",
                "WorkflowFailed" => "failed",
                "WorkflowCancelled" => "cancelled",
                "WorkflowPaused" => "paused",
                "WorkflowSubmitted" => "pending",
                _ => "running",
            }
            .to_owned()
        })
    }

    /// Waits (up to `within`) until the run's last event says `status`.
    pub async fn wait_for_run(&self, workflow_id: &str, status: &str, within: Duration) {
        let reached = eventually(within, || async {
            (self.run_status(workflow_id).await.as_deref() == Some(status)).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "run {workflow_id} did not become {status} within {within:?} (it is {:?}); events: {:?}",
            self.run_status(workflow_id).await,
            self.event_types(workflow_id).await
        );
    }

    /// The run's event types in version order, from the event store.
    pub async fn event_types(&self, workflow_id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT event_type FROM event_store WHERE stream_id = $1::uuid ORDER BY stream_version",
        )
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await
        .expect("event store readable")
    }

    /// The run's events decoded, in version order, from the event store.
    pub async fn events(&self, workflow_id: &str) -> Vec<flowline_domain::EventEnvelope> {
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM event_store WHERE stream_id = $1::uuid ORDER BY stream_version",
        )
        .bind(workflow_id)
        .fetch_all(&self.pool)
        .await
        .expect("event store readable");
        let codec = flowline_schemas::EventCodec::default();
        payloads
            .iter()
            .map(|p| codec.decode(p).expect("decodable"))
            .collect()
    }

    /// A command service as its own process.
    pub async fn command_process(&self) -> ServiceProcess {
        let port = free_port();
        let mut env = self.process_env();
        env.push(("COMMAND_ADDR".into(), format!("127.0.0.1:{port}")));
        ServiceProcess::start("command-service", port, env).await
    }
}

/// A tansu broker owned by one test, so the test can `kill -9` and restart it.
pub struct OwnedBroker {
    /// `host:port`.
    pub address: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnedBroker {
    /// Starts tansu (`TANSU_BIN`, as `scripts/test` exports it) with sqlite storage in a
    /// fresh directory.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("flowline-broker-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            address: format!("127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        broker.restart().await;
        broker
    }

    fn binary() -> std::path::PathBuf {
        std::env::var_os("TANSU_BIN")
            .map(Into::into)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_default();
                std::path::Path::new(&home).join(".cache/flowline/tansu-0.6.0/bin/tansu")
            })
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        let binary = Self::binary();
        assert!(
            binary.exists(),
            "tansu not found at {}: set TANSU_BIN (scripts/test does)",
            binary.display()
        );
        let url = format!("tcp://{}", self.address);
        let child = std::process::Command::new(binary)
            .current_dir(&self.dir)
            .args(["broker", "--cluster-id", "test", "--listener-url", &url])
            .args([
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        assert!(up.is_some(), "tansu did not listen on {}", self.address);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One record of the log as a plain Kafka consumer sees it.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key (the stream id).
    pub key: String,
    /// Headers as text.
    pub headers: std::collections::HashMap<String, String>,
    /// The value.
    pub payload: Vec<u8>,
}

/// Reading whole topics as a plain consumer.
pub struct LogRecords;

impl LogRecords {
    /// Every record of `topic`, partition by partition, in offset order.
    pub async fn of(brokers: &str, topic: &str) -> Vec<LogRecord> {
        use rdkafka::Message;
        use rdkafka::message::Headers;
        let brokers = brokers.to_owned();
        let topic = topic.to_owned();
        let tails = tokio::task::spawn_blocking(move || {
            flowline_event_log::read_partition_tails(&brokers, &topic, i64::MAX / 2)
        })
        .await
        .unwrap()
        .expect("log readable");
        tails
            .into_iter()
            .flat_map(|(partition, records)| {
                records.into_iter().map(move |record| LogRecord {
                    partition,
                    offset: record.offset(),
                    key: String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned(),
                    headers: record
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    payload: record.payload().unwrap_or_default().to_vec(),
                })
            })
            .collect()
    }
}

impl TestSystem {
    /// Every record on the test's topic, partition by partition, in offset order.
    pub async fn read_log(&self) -> Vec<LogRecord> {
        LogRecords::of(&self.kafka.brokers, &self.kafka.topic).await
    }
}

/// A reply read in full.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// JSON body, or the text as a JSON string.
    pub body: Value,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The id of the run a submission created (asserting it did).
fn created_run(reply: Reply) -> String {
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["workflow_id"]
        .as_str()
        .expect("an id")
        .to_owned()
}

/// Polls `probe` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        // Often enough to see a change soon, seldom enough that a hundred tests polling
        // at once do not load the machine they are waiting on.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An event of the `default` tenant at `version` of `stream_id`, with fresh ids: for tests
/// that write the event store directly, past the command service.
pub fn direct_envelope(
    stream_id: Uuid,
    version: u64,
    event: flowline_domain::WorkflowEvent,
) -> flowline_domain::EventEnvelope {
    let id = Uuid::now_v7();
    flowline_domain::EventEnvelope {
        metadata: flowline_domain::EventMetadata {
            event_id: id,
            tenant: "default".into(),
            stream_id,
            stream_version: version,
            occurred_at: chrono::Utc::now(),
            command_id: id,
            correlation_id: id,
            causation_id: id,
            traceparent: None,
            tracestate: None,
        },
        event,
    }
}

/// The `WorkflowSubmitted` event of the submission `body` (valid).
pub fn submitted_event(body: Value) -> flowline_domain::WorkflowEvent {
    let submit: flowline_domain::SubmitWorkflow =
        serde_json::from_value(body).expect("a submission");
    flowline_domain::WorkflowEvent::Submitted(submit.validate().expect("a valid submission"))
}

impl TestSystem {
    /// The value of the series `name` on `{service_url}/metrics` (with its labels, as
    /// exposed: `name{label="value"}`).
    pub async fn metric(&self, service_url: &str, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{service_url}/metrics"))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics read");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .expect("a metric's value is a number")
    }
}

impl TestSystem {
    /// Starts a command service with the test's defaults changed by `adjust`.
    pub async fn command_service_adjusted(
        &self,
        adjust: impl FnOnce(&mut CommandConfig),
    ) -> Running {
        let mut config = CommandConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 1024 * 1024,
            publish_timeout_ms: 10_000,
            snapshot_every: 100,
            redis: self.redis_settings(),
            idempotency_ttl_seconds: 600,
            cloudevents_source: flowline_event_store::headers::cloudevents::DEFAULT_SOURCE.into(),
            database: self.database(),
            kafka: self.kafka.clone(),
            limits: Default::default(),
            access: auth::access_settings(),
        };
        adjust(&mut config);
        let app = command_service::Application::build(config)
            .await
            .expect("command service builds");
        spawn_server(app.port(), |stop| app.run_until(stopped(stop)))
    }
}

impl TestSystem {
    /// A plain submit through `commands` and its read through `queries` (REST and GraphQL)
    /// still work: the check after every hostile request.
    pub async fn still_serves(&self, commands: &Running, queries: &Running) {
        let id = self
            .submit(
                &commands.url,
                &serde_json::json!({"name": "plain", "steps": [{"id": "only", "kind": "http"}]}),
            )
            .await;
        let read = eventually(Duration::from_secs(60), || async {
            let reply = self
                .get(&format!("{}/v1/workflows/{id}", queries.url))
                .await;
            (reply.status == 200).then_some(reply)
        })
        .await
        .unwrap_or_else(|| panic!("the plain run {id} never became readable"));
        assert_eq!(read.body["name"], "plain");
        let answer = self
            .graphql(
                &queries.url,
                &format!("{{ workflow(id: \"{id}\") {{ name steps {{ id }} }} }}"),
            )
            .await;
        assert_eq!(answer["data"]["workflow"]["name"], "plain", "{answer}");
    }
}

/// The whole command-to-read path over one [`TestSystem`]: a command service, a query
/// service and the projectors between them.
pub struct Stack {
    /// The database and topic.
    pub system: TestSystem,
    /// The command service.
    pub commands: Running,
    /// The query service.
    pub queries: Running,
    /// The projectors (kept running for the stack's life).
    pub projectors: Running,
}

impl Stack {
    /// Starts the projectors beside `commands` and `queries` on `system`.
    pub async fn around(system: TestSystem, commands: Running, queries: Running) -> Self {
        let projectors = system.projectors().await;
        Self {
            system,
            commands,
            queries,
            projectors,
        }
    }
}
