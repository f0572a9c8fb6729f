//! Wiring: database, log, relay, routes, listener.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use flowline_event_store::{
    EventStore, OutboxRelay, ParkedEvents, Publications, RecordLimit, RelayConfig,
    WorkflowRepository,
};
use flowline_service_kit::health::Health;
use flowline_service_kit::http::HttpServer;
use flowline_service_kit::problem::problem_errors;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::commands::CommandHandler;
use crate::config::Config;
use crate::idempotency::AnswerCache;
use crate::{Result, api, routes};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) handler: Arc<CommandHandler>,
    pub(crate) answers: AnswerCache,
    pub(crate) parked: ParkedEvents,
    /// The database, for what is not a run's event (budgets).
    pub(crate) pool: sqlx::PgPool,
    /// Credentials, roles, API keys.
    pub(crate) access: flowline_access::Access,
    /// Personal data keys and privacy configs (ADR 26).
    pub(crate) vault: flowline_personal_data::Vault,
}

/// How long a stopping service waits for its relay to finish what it is publishing.
const RELAY_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A built, bound command service.
pub struct Application {
    server: HttpServer,
    background: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Prepares the database and topic, starts the outbox relay and binds the listener.
    pub async fn build(config: Config) -> Result<Self> {
        let pool = config.database.prepare().await?;
        flowline_event_log::ensure_topic(&config.kafka).await?;
        let background = CancellationToken::new();
        let publications = Publications::start(pool.clone(), background.clone()).await?;
        let relay = OutboxRelay::new(
            pool.clone(),
            config.kafka.clone(),
            RelayConfig {
                cloudevents_source: config.cloudevents_source.clone(),
                ..RelayConfig::default()
            },
        );
        let store =
            EventStore::with_waker(pool.clone(), relay.waker()).with_record_limit(RecordLimit {
                max_bytes: config.limits.max_event_bytes,
                cloudevents_source: config.cloudevents_source.clone(),
            });
        let parked = ParkedEvents::new(pool.clone());
        let health = Health::new();
        health
            .postgres(pool.clone())
            .kafka(&config.kafka.brokers, &config.kafka.topic)
            .redis(&config.redis.redis_url);
        let repository = WorkflowRepository::new(store, pool.clone(), config.snapshot_every);
        let stop = background.clone();
        let relay = health.supervise("outbox relay", background.clone(), move || {
            relay.clone().run(stop.clone())
        });

        let vault = flowline_personal_data::Vault::new(pool.clone());
        let handler = CommandHandler::new(
            repository,
            vault.clone(),
            publications,
            config.publish_timeout(),
            config.limits.clone(),
        );
        let answers = AnswerCache::connect(
            &config.redis.redis_url,
            config.idempotency_ttl_seconds,
            &config.redis.redis_key_prefix,
        )
        .await;
        let access =
            flowline_access::Access::new(&config.access, pool.clone(), &config.redis).await?;
        let state = AppState {
            handler: Arc::new(handler),
            answers,
            parked,
            pool,
            access: access.clone(),
            vault,
        };
        let router = Router::new()
            .merge(api::router())
            .route("/health", get(routes::health))
            .route("/metrics", get(routes::metrics))
            .merge(health.routes())
            .fallback(routes::not_found)
            .layer(axum::middleware::from_fn_with_state(
                access.clone(),
                flowline_access::guard,
            ))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(axum::middleware::from_fn(
                flowline_service_kit::request::require_json_bodies,
            ))
            .layer(axum::middleware::map_response(problem_errors))
            .layer(TraceLayer::new_for_http())
            .layer(axum::middleware::from_fn(
                flowline_service_kit::telemetry::trace_requests,
            ))
            .with_state(state);
        // Outermost: a preflight carries no credentials and is answered here.
        let router = match access.cors() {
            Some(cors) => router.layer(cors),
            None => router,
        };
        let server = HttpServer::bind(config.listen, router).await?;
        Ok(Self {
            server,
            background,
            relay,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown` resolves, then stops the relay and waits until it has: a
    /// stopped service publishes nothing more.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let _stop_on_drop = self.background.clone().drop_guard();
        let served = self.server.serve_until(shutdown).await;
        self.background.cancel();
        // Bounded: a relay stuck on an unreachable broker would hold shutdown up for its
        // producer's whole delivery timeout. What it did not publish, the next leader does.
        match tokio::time::timeout(RELAY_STOP_WAIT, self.relay).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "outbox relay ended abnormally"),
            Err(_) => tracing::warn!("outbox relay still busy at shutdown; leaving it"),
        }
        served
    }
}
