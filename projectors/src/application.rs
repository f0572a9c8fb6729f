//! Wiring: database, topic, projection runner, admin endpoint.

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};
use flowline_event_log::{KafkaSettings, LogProducer};
use flowline_service_kit::Problem;
use flowline_service_kit::http::HttpServer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runner::{self, RunnerSettings};
use crate::workflow_read_model::{self, WorkflowReadModel};
use crate::{Result, admin};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) pool: PgPool,
    pub(crate) kafka: KafkaSettings,
    pub(crate) admin_token: Option<String>,
}

/// Built projectors with a bound admin endpoint.
pub struct Application {
    server: HttpServer,
    stop: CancellationToken,
    runner: std::thread::JoinHandle<()>,
}

impl Application {
    /// Prepares the database and topic, starts the projection and binds the admin port.
    pub async fn build(config: Config) -> Result<Self> {
        let pool = config.database.prepare().await?;
        flowline_event_log::ensure_topic(&config.kafka).await?;
        let stop = CancellationToken::new();
        let dead_letter_log = KafkaSettings {
            topic: runner::dead_letter_topic(&config.kafka.topic),
            partitions: 1,
            ..config.kafka.clone()
        };
        flowline_event_log::ensure_topic(&dead_letter_log).await?;
        let runner = runner::spawn(
            WorkflowReadModel,
            RunnerSettings {
                pool: pool.clone(),
                kafka: config.kafka.clone(),
                group_id: format!("{}.{}", config.group_prefix, workflow_read_model::NAME),
                batch_size: config.batch_size,
            },
            LogProducer::new(&dead_letter_log)?,
            stop.clone(),
        )?;
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/admin/lag", get(admin::lag))
            .route("/metrics", get(admin::metrics))
            .route("/admin/dead-letters", get(admin::dead_letters))
            .route("/admin/dead-letters/redrive", post(admin::redrive_all))
            .route("/admin/dead-letters/{id}", get(admin::dead_letter_by_id))
            .route("/admin/dead-letters/{id}/redrive", post(admin::redrive))
            .fallback(|| async { Problem::not_found("no such endpoint") })
            .with_state(AdminState {
                pool,
                kafka: config.kafka,
                admin_token: config.admin_token,
            });
        let server = HttpServer::bind(config.admin_listen, router).await?;
        Ok(Self {
            server,
            stop,
            runner,
        })
    }

    /// The admin endpoint's port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves the admin endpoint and projects until `shutdown` resolves (or this future is
    /// dropped), then stops the projection after its current batch.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let _stop_on_drop = self.stop.clone().drop_guard();
        let served = self.server.serve_until(shutdown).await;
        self.stop.cancel();
        let runner = self.runner;
        let _ = tokio::task::spawn_blocking(move || runner.join()).await;
        served
    }
}
