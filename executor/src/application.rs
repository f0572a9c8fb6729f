//! Wiring: database, topic, leases, runners, the feed and the admin endpoint.

use std::future::Future;
use std::sync::Arc;

use flowline_domain::StepKind;
use flowline_event_store::{EventStore, WorkflowRepository};
use flowline_pricing::PriceTable;
use flowline_service_kit::health::Health;
use flowline_service_kit::http::HttpServer;
use flowline_service_kit::leases::Leases;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::budget::BudgetLedger;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::feed::{self, Parts, Shared};
use crate::live::LiveHub;
use crate::metrics::Metrics;
use crate::payloads::Payloads;
use crate::runners::Runners;
use crate::runners::http::HttpRunner;
use crate::runners::llm::LlmRunner;
use crate::runners::mcp_tool::McpToolRunner;
use crate::{Error, Result};

/// Snapshot cadence of the executor's appends (as the command service's default).
const SNAPSHOT_EVERY: u64 = 100;

/// Name under which executor processes share partitions.
pub const LEASE_NAME: &str = "executor";

/// A built executor with a bound admin endpoint.
pub struct Application {
    server: HttpServer,
    stop: CancellationToken,
    feed: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Prepares the database, learns the topic's partitions, starts the feed and binds
    /// the admin port.
    pub async fn build(config: Config) -> Result<Self> {
        Self::build_with(config, |runners| runners).await
    }

    /// The same, with step runners replaced or added (tests plug theirs in here).
    pub async fn build_with(
        config: Config,
        runners: impl FnOnce(Runners) -> Runners,
    ) -> Result<Self> {
        let prices = match &config.price_table {
            Some(path) => PriceTable::load(path),
            None => PriceTable::shipped(),
        }
        .map(Arc::new)
        .map_err(|e| Error::Config(e.to_string()))?;
        tracing::info!(entries = prices.len(), "price table loaded");
        let metrics = Arc::new(Metrics::default());
        let live = LiveHub::connect(&config.redis, Arc::clone(&metrics)).await;
        let pool = config.database.prepare().await?;
        let partitions = flowline_event_log::ensure_topic(&config.kafka).await?;
        let http = HttpRunner::new(&config.http).map_err(Error::Config)?;
        let default_http_timeout = http.default_timeout();
        let mcp_tool = McpToolRunner::from_settings(&config.mcp).map_err(Error::Config)?;
        let mut own_runners = Runners::new(http);
        if let Some(providers) = config
            .llm
            .providers()
            .map_err(|e| Error::Config(e.to_string()))?
        {
            tracing::info!(providers = ?providers.names().collect::<Vec<_>>(), "llm providers loaded");
            let llm = LlmRunner::new(
                Arc::new(providers),
                Arc::clone(&prices),
                BudgetLedger::new(pool.clone()),
            );
            own_runners = own_runners.with(StepKind::Llm, Arc::new(llm));
        }
        let store = EventStore::with_background_wakeups(pool.clone());
        let shared = Shared::new(Parts {
            repository: WorkflowRepository::new(store, pool.clone(), SNAPSHOT_EVERY),
            pool: pool.clone(),
            dispatcher: Dispatcher::new(
                config.max_concurrent_attempts,
                config.max_attempts_per_tenant,
            ),
            runners: runners(own_runners.with(StepKind::McpTool, Arc::new(mcp_tool))),
            payloads: Payloads::new(pool.clone(), config.output_inline_bytes),
            metrics,
            default_http_timeout,
            partitions,
            live,
        });
        let stop = CancellationToken::new();
        let health = Health::new();
        health
            .postgres(pool.clone())
            .kafka(&config.kafka.brokers, &config.kafka.topic);
        let leases = Leases::new(pool.clone(), LEASE_NAME, partitions).with_ttl(config.lease_ttl());
        // Restarted when it fails; its partition workers and run actors end with it, and
        // the new feed takes the leases (still this process's) and adopts the live runs.
        let feed = {
            let (shared, stop, ttl) = (Arc::clone(&shared), stop.clone(), config.lease_ttl());
            health.supervise("feed", stop.clone(), move || {
                feed::run(Arc::clone(&shared), leases.clone(), ttl, stop.clone())
            })
        };
        let access =
            flowline_access::Access::new(&config.access, pool.clone(), &config.redis).await?;
        let router = admin::router(AdminState {
            shared,
            access: access.clone(),
        })
        .merge(health.readiness_route())
        .layer(axum::middleware::from_fn_with_state(
            access,
            flowline_access::guard,
        ));
        let server = HttpServer::bind(config.admin_listen, router).await?;
        Ok(Self { server, stop, feed })
    }

    /// The admin endpoint's port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown`, then stops driving runs and gives its leases back.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let stop = self.stop.clone();
        let served = self
            .server
            .serve_until(async move {
                shutdown.await;
                stop.cancel();
            })
            .await;
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.feed).await;
        served.map_err(|e| Error::Config(format!("admin endpoint: {e}")))
    }
}
