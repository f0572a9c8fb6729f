//! Wiring: database, topic, projection runner, admin endpoint.

use std::future::Future;

use axum::Router;
use axum::routing::get;
use flowline_event_log::KafkaSettings;
use flowline_service_kit::Problem;
use flowline_service_kit::health::Health;
use flowline_service_kit::http::HttpServer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dead_letter::{self, Redrive};
use crate::rebuild::{self, RebuildRecord, RebuildSettings};
use crate::runner::{self, RunnerSettings};
use crate::usage::{self, Usage};
use crate::workflow_graph::{self, WorkflowGraph};
use crate::workflow_read_model::{self, WorkflowReadModel};
use crate::{Error, Result, admin};
use flowline_graph::GraphStore;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) pool: PgPool,
    pub(crate) kafka: KafkaSettings,
    pub(crate) access: flowline_access::Access,
    pub(crate) projections: Projections,
    pub(crate) rebuilds: Rebuilds,
    pub(crate) graph: flowline_graph::GraphSettings,
}

/// Runs rebuilds inside the service (started over the admin endpoint, or resumed at start).
#[derive(Clone)]
pub(crate) struct Rebuilds {
    settings: RebuildSettings,
    stop: CancellationToken,
}

impl Rebuilds {
    /// Runs `record` on a thread of its own until it is swapped in or the service stops.
    pub(crate) fn launch(&self, record: RebuildRecord) {
        let settings = self.settings.clone();
        let (runtime, stop) = (tokio::runtime::Handle::current(), self.stop.clone());
        std::thread::spawn(move || rebuild::run(settings, record, runtime, stop, |_| {}));
    }
}

async fn drop_retired_tables(pool: PgPool, stop: CancellationToken) {
    loop {
        if let Err(error) = rebuild::drop_retired(&pool).await {
            tracing::warn!(%error, "retired tables not dropped");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// Every projection this service runs.
#[derive(Clone)]
pub struct Projections {
    /// The PostgreSQL read model.
    pub read_model: WorkflowReadModel,
    /// The graph view.
    pub graph: WorkflowGraph,
    /// Model calls' tokens and cost.
    pub usage: Usage,
}

impl Projections {
    /// Their names, for lag reports.
    pub const NAMES: [&'static str; 3] =
        [workflow_read_model::NAME, workflow_graph::NAME, usage::NAME];

    /// Re-drives one dead letter with the projection it belongs to.
    pub async fn redrive(&self, pool: &PgPool, id: i64) -> Result<Redrive> {
        let Some(letter) = dead_letter::show(pool, id).await? else {
            return Ok(Redrive::NotPending { id });
        };
        if letter.projection == workflow_graph::NAME {
            dead_letter::redrive(pool, &self.graph, id).await
        } else if letter.projection == usage::NAME {
            dead_letter::redrive(pool, &self.usage, id).await
        } else {
            dead_letter::redrive(pool, &self.read_model, id).await
        }
    }

    /// Re-drives every pending dead letter of every projection, in log order.
    pub async fn redrive_all(&self, pool: &PgPool) -> Result<Vec<Redrive>> {
        let mut outcomes = dead_letter::redrive_all(pool, &self.read_model).await?;
        outcomes.extend(dead_letter::redrive_all(pool, &self.graph).await?);
        outcomes.extend(dead_letter::redrive_all(pool, &self.usage).await?);
        Ok(outcomes)
    }
}

/// Built projectors with a bound admin endpoint.
pub struct Application {
    server: HttpServer,
    stop: CancellationToken,
    runners: Vec<std::thread::JoinHandle<()>>,
}

impl Application {
    /// Prepares the database and topic, starts the projection and binds the admin port.
    pub async fn build(config: Config) -> Result<Self> {
        let pool = config.database.prepare().await?;
        flowline_event_log::ensure_topic(&config.kafka).await?;
        let stop = CancellationToken::new();
        let rebuild_settings = RebuildSettings::from_config(&config, pool.clone()).await?;
        let graph = config.graph.store(pool.clone());
        graph
            .ensure_schema()
            .await
            .map_err(|e| Error::Graph(e.to_string()))?;
        let projections = Projections {
            read_model: WorkflowReadModel::live(),
            graph: WorkflowGraph::new(graph),
            usage: Usage,
        };
        let settings = |name: &str| RunnerSettings {
            pool: pool.clone(),
            kafka: config.kafka.clone(),
            group_id: format!("{}.{name}", config.group_prefix),
            batch_size: config.batch_size,
            fetch_wait_ms: config.fetch_wait_ms,
        };
        let health = Health::new();
        health.postgres(pool.clone());
        health.kafka(&config.kafka.brokers, &config.kafka.topic);
        let runners = vec![
            runner::spawn(
                projections.read_model,
                settings(workflow_read_model::NAME),
                rebuild_settings.dead_letters.clone(),
                stop.clone(),
                &health,
            )?,
            runner::spawn(
                projections.graph.clone(),
                settings(workflow_graph::NAME),
                rebuild_settings.dead_letters.clone(),
                stop.clone(),
                &health,
            )?,
            runner::spawn(
                projections.usage,
                settings(usage::NAME),
                rebuild_settings.dead_letters.clone(),
                stop.clone(),
                &health,
            )?,
        ];
        let rebuilds = Rebuilds {
            settings: rebuild_settings,
            stop: stop.clone(),
        };
        // Rebuilds interrupted by a crash go on; replaced tables past their grace go away.
        for record in rebuild::running(&pool).await? {
            rebuilds.launch(record);
        }
        tokio::spawn(drop_retired_tables(pool.clone(), stop.clone()));
        let access =
            flowline_access::Access::new(&config.access, pool.clone(), &config.redis).await?;
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .merge(health.routes())
            .merge(admin::router())
            .fallback(|| async { Problem::not_found("no such endpoint") })
            .layer(axum::middleware::from_fn(
                flowline_service_kit::request::require_json_bodies,
            ))
            .layer(axum::middleware::from_fn_with_state(
                access.clone(),
                flowline_access::guard,
            ))
            .layer(axum::middleware::map_response(
                flowline_service_kit::problem::problem_errors,
            ))
            .with_state(AdminState {
                pool: pool.clone(),
                kafka: config.kafka.clone(),
                access,
                projections,
                rebuilds: rebuilds.clone(),
                graph: config.graph.clone(),
            });
        let server = HttpServer::bind(config.admin_listen, router).await?;
        Ok(Self {
            server,
            stop,
            runners,
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
        let runners = self.runners;
        let _ = tokio::task::spawn_blocking(move || {
            for runner in runners {
                let _ = runner.join();
            }
        })
        .await;
        served
    }
}
