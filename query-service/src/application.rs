//! Wiring: database, routes, listener.

use std::future::Future;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use flowline_event_store::{EventStore, WorkflowRepository};
use flowline_graph::AnyGraph;
use flowline_service_kit::Problem;
use flowline_service_kit::health::Health;
use flowline_service_kit::http::HttpServer;
use flowline_service_kit::problem::problem_errors;
use flowline_service_kit::request::tenant;
use tower_http::trace::TraceLayer;

use crate::audit::AuditAccess;
use crate::cache::{ReadCache, WorkflowReads};
use crate::changes::{ChangeFeed, Listening};
use crate::config::Config;
use crate::consistency::{ConsistencyGate, token_from_headers};
use crate::graphql::{QuerySchema, Tenant, schema};
use crate::read_model::ReadModel;
use crate::{Error, Result, api, audit, subscriptions};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) read_model: ReadModel,
    pub(crate) reads: WorkflowReads,
    pub(crate) repository: WorkflowRepository,
    pub(crate) graph: AnyGraph,
    pub(crate) schema: QuerySchema,
    pub(crate) audit: AuditAccess,
}

/// A built, bound query service.
pub struct Application {
    server: HttpServer,
    changes: Listening,
}

async fn graphiql() -> Html<String> {
    // Subscriptions have no default tenant; GraphiQL names the one HTTP requests default to.
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .ws_connection_param("tenant", flowline_service_kit::request::DEFAULT_TENANT)
            .finish(),
    )
}

async fn graphql(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    let ready = async {
        let tenant = tenant(&headers)?;
        let token = token_from_headers(&headers)?;
        state.reads.gate().wait_for_any(token.as_ref()).await?;
        Ok::<_, Error>(tenant)
    };
    match ready.await {
        Ok(tenant) => {
            let response: GraphQLResponse = state
                .schema
                .execute(request.into_inner().data(Tenant(tenant)))
                .await
                .into();
            response.into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

async fn not_found() -> Problem {
    Problem::not_found("no such endpoint")
}

impl Application {
    /// Prepares the database and binds the listener.
    pub async fn build(config: Config) -> Result<Self> {
        let pool = config.database.prepare().await?;
        let read_model = ReadModel::new(pool.clone());
        let health = Health::new();
        health
            .postgres(pool.clone())
            .kafka(&config.kafka.brokers, &config.kafka.topic)
            .redis(&config.cache.redis_url);
        let (changes, listening) = ChangeFeed::start(pool.clone(), &health);
        let cache = ReadCache::connect(&config.cache).await;
        cache.follow(&changes);
        let gate = ConsistencyGate::new(pool.clone(), &config.consistency);
        let reads = WorkflowReads::new(read_model.clone(), gate.clone(), cache);
        let repository = WorkflowRepository::new(EventStore::new(pool.clone()), pool.clone(), 0);
        let graph = config.graph.store(pool.clone());
        let state = AppState {
            schema: schema(
                read_model.clone(),
                repository.clone(),
                graph.clone(),
                config.graphql,
                changes,
                reads.clone(),
            ),
            graph,
            repository,
            reads,
            read_model,
            audit: AuditAccess {
                reader: flowline_audit::LogReader::new(&config.kafka.brokers, &config.kafka.topic),
                admin_token: config.admin_token.clone(),
            },
        };
        let router = Router::new()
            .merge(api::router())
            .route("/v1/audit/events", get(audit::events))
            .route("/v1/audit/verify", get(audit::verify))
            .route("/graphql", get(graphiql).post(graphql))
            .route("/graphql/ws", get(subscriptions::websocket))
            .route("/health", get(|| async { "ok" }))
            .merge(health.routes())
            .fallback(not_found)
            .layer(axum::middleware::map_response(problem_errors))
            .layer(TraceLayer::new_for_http())
            .layer(axum::middleware::from_fn(
                flowline_service_kit::telemetry::trace_requests,
            ))
            .with_state(state);
        let server = HttpServer::bind(config.listen, router).await?;
        Ok(Self {
            server,
            changes: listening,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let Self { server, changes } = self;
        let served = server.serve_until(shutdown).await;
        // Stops listening only once no request can subscribe any more.
        drop(changes);
        served
    }
}
