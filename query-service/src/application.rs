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
use flowline_service_kit::http::HttpServer;
use flowline_service_kit::request::tenant;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::graphql::{QuerySchema, Tenant, schema};
use crate::read_model::ReadModel;
use crate::{Result, graph_rest, rest};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) read_model: ReadModel,
    pub(crate) repository: WorkflowRepository,
    pub(crate) graph: AnyGraph,
    pub(crate) schema: QuerySchema,
}

/// A built, bound query service.
pub struct Application {
    server: HttpServer,
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn graphql(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    match tenant(&headers) {
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
        let repository = WorkflowRepository::new(EventStore::new(pool.clone()), pool.clone(), 0);
        let graph = config.graph.store(pool.clone());
        let state = AppState {
            schema: schema(
                read_model.clone(),
                repository.clone(),
                graph.clone(),
                config.graphql,
            ),
            graph,
            repository,
            read_model,
        };
        let router = Router::new()
            .route("/v1/workflows", get(rest::list))
            .route("/v1/workflows/{id}", get(rest::workflow))
            .route("/v1/workflows/{id}/events", get(rest::events))
            .route("/v1/workflows/{id}/state", get(rest::state))
            .route(
                "/v1/workflows/{id}/steps/{step}/dependencies",
                get(graph_rest::dependencies),
            )
            .route(
                "/v1/workflows/{id}/steps/{step}/dependents",
                get(graph_rest::dependents),
            )
            .route(
                "/v1/workflows/{id}/steps/{step}/lineage",
                get(graph_rest::lineage),
            )
            .route("/v1/graph/runs", get(graph_rest::runs))
            .route("/graphql", get(graphiql).post(graphql))
            .route("/health", get(|| async { "ok" }))
            .fallback(not_found)
            .layer(TraceLayer::new_for_http())
            .with_state(state);
        let server = HttpServer::bind(config.listen, router).await?;
        Ok(Self { server })
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
        self.server.serve_until(shutdown).await
    }
}
