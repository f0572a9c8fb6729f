//! Wiring: database, topic, projection runner, admin endpoint.

use std::future::Future;

use axum::Router;
use axum::routing::get;
use flowline_event_log::KafkaSettings;
use flowline_service_kit::Problem;
use flowline_service_kit::http::HttpServer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runner::{self, RunnerSettings};
use crate::{Result, admin, workflow_read_model};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) pool: PgPool,
    pub(crate) kafka: KafkaSettings,
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
        let runner = runner::spawn(
            RunnerSettings {
                pool: pool.clone(),
                kafka: config.kafka.clone(),
                group_id: format!("{}.{}", config.group_prefix, workflow_read_model::NAME),
                batch_size: config.batch_size,
            },
            stop.clone(),
        )?;
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/admin/lag", get(admin::lag))
            .route("/metrics", get(admin::metrics))
            .fallback(|| async { Problem::not_found("no such endpoint") })
            .with_state(AdminState {
                pool,
                kafka: config.kafka,
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
