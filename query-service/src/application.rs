//! Wiring: database, routes, listener.

use std::future::Future;
use std::time::Duration;

use async_graphql::http::{GraphiQLSource, MultipartOptions, receive_batch_body};
use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use flowline_access::{Caller, Role};
use flowline_event_store::{EventStore, WorkflowRepository};
use flowline_graph::AnyGraph;
use flowline_service_kit::Problem;
use flowline_service_kit::health::Health;
use flowline_service_kit::http::HttpServer;
use flowline_service_kit::problem::problem_errors;
use tower_http::trace::TraceLayer;

use crate::audit::AuditAccess;
use crate::cache::{ReadCache, WorkflowReads};
use crate::changes::{ChangeFeed, Listening};
use crate::config::Config;
use crate::config::GraphqlLimits;
use crate::consistency::{ConsistencyGate, Watching, token_from_headers};
use crate::graphql::{QuerySchema, Tenant, bounded, schema};
use crate::read_model::ReadModel;
use crate::step_output::LiveChannel;
use crate::{Error, Result, api, subscriptions};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) read_model: ReadModel,
    pub(crate) reads: WorkflowReads,
    pub(crate) repository: WorkflowRepository,
    pub(crate) graph: AnyGraph,
    pub(crate) schema: QuerySchema,
    pub(crate) audit: AuditAccess,
    pub(crate) websockets: subscriptions::WebSockets,
    pub(crate) changes: ChangeFeed,
    /// What bounds a GraphQL request.
    pub(crate) graphql_limits: GraphqlLimits,
    /// Credentials, roles, rate limits.
    pub(crate) access: flowline_access::Access,
    /// Opens personal fields at the edge (ADR 26).
    pub(crate) vault: flowline_personal_data::Vault,
}

/// A built, bound query service.
pub struct Application {
    server: HttpServer,
    changes: Listening,
    checkpoints: Watching,
}

async fn graphiql() -> Html<String> {
    // The page itself is public; its requests need a token, which GraphiQL's headers
    // editor adds (`{"Authorization": "Bearer …"}`) and subscriptions send as the
    // connection's `authorization` parameter.
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

/// Reads a GraphQL request of at most `limit` bytes: the `async-graphql-axum` extractor
/// reads bodies whole without any limit (axum's `DefaultBodyLimit` does not apply to it).
async fn graphql_request(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<async_graphql::Request> {
    let too_large = Error::BodyTooLarge {
        limit,
        setting: "GRAPHQL_MAX_BODY_BYTES",
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large);
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let invalid = |message: String| Error::InvalidParameter {
        parameter: "body",
        message,
    };
    receive_batch_body(content_type, &bytes[..], MultipartOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))?
        .into_single()
        .map_err(|e| invalid(e.to_string()))
}

async fn graphql(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ready = async {
        // Every operation of the schema reads: the reader role covers them all.
        caller.require(Role::Reader)?;
        let tenant = caller.tenant().to_owned();
        let token = token_from_headers(&headers)?;
        let request = graphql_request(&headers, body, state.graphql_limits.max_body_bytes).await?;
        state.reads.gate().wait_for_any(token.as_ref()).await?;
        Ok::<_, Error>((tenant, request))
    };
    match ready.await {
        Ok((tenant, request)) => {
            let request = bounded(
                request.data(Tenant(tenant)),
                &state.graphql_limits,
                &state.graph,
            );
            let response: GraphQLResponse = state.schema.execute(request).await.into();
            response.into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

/// Prometheus text: the counters that show reads stay bounded (checkpoint polls for
/// consistency waits, re-reads by subscriptions) and the open WebSocket connections.
async fn metrics(State(state): State<AppState>, caller: Option<Caller>) -> Response {
    use std::fmt::Write;
    if let Err(refusal) = state.access.metrics_allowed(caller.as_ref()) {
        return refusal.into_response();
    }
    let mut text = flowline_access::metrics_text(&state.access);
    let counters = [
        (
            "flowline_query_consistency_polls_total",
            "Checkpoint queries made for requests waiting on a consistency token (shared by all of them)",
            state.reads.gate().polls(),
        ),
        (
            "flowline_query_subscription_reads_total",
            "Read-model queries made by subscriptions (at their start and after a change concerning them)",
            state.changes.reads(),
        ),
        (
            "flowline_query_cache_invalidation_failures_total",
            "Read-cache invalidations Redis did not take (the cache is bypassed until its entries are retired)",
            state.reads.cache().failed_invalidations(),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let gauge = "flowline_query_websocket_connections";
    let _ = writeln!(
        text,
        "# HELP {gauge} Open GraphQL WebSocket connections per tenant\n# TYPE {gauge} gauge"
    );
    for (tenant, open) in state.websockets.open() {
        let _ = writeln!(text, "{gauge}{{tenant=\"{tenant}\"}} {open}");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no such endpoint")
}

impl Application {
    /// Prepares the database and binds the listener.
    pub async fn build(config: Config) -> Result<Self> {
        let pool = config
            .database
            .prepare_with_statement_timeout(Duration::from_millis(
                config.statements.statement_timeout_ms,
            ))
            .await?;
        let read_model = ReadModel::new(pool.clone());
        let health = Health::new();
        health
            .postgres(pool.clone())
            .kafka(&config.kafka.brokers, &config.kafka.topic)
            .redis(&config.cache.redis.redis_url);
        let (changes, listening) = ChangeFeed::start(pool.clone(), &health);
        let cache = ReadCache::connect(&config.cache).await;
        cache.follow(&changes);
        let (gate, checkpoints) =
            ConsistencyGate::start(pool.clone(), &config.consistency, &changes);
        let reads = WorkflowReads::new(read_model.clone(), gate.clone(), cache);
        let repository = WorkflowRepository::new(EventStore::new(pool.clone()), pool.clone(), 0);
        let graph = config.graph.store(pool.clone());
        let access =
            flowline_access::Access::new(&config.access, pool.clone(), &config.cache.redis).await?;
        let vault = flowline_personal_data::Vault::new(pool.clone());
        let state = AppState {
            schema: schema(
                read_model.clone(),
                repository.clone(),
                graph.clone(),
                config.graphql,
                changes.clone(),
                reads.clone(),
                LiveChannel(config.cache.redis.clone()),
            ),
            websockets: subscriptions::WebSockets::new(config.limits, vault.clone()),
            changes,
            graph,
            repository,
            reads,
            read_model,
            audit: AuditAccess::new(
                flowline_audit::LogReader::new(&config.kafka.brokers, &config.kafka.topic),
                config.limits.audit_max_concurrent_scans,
            ),
            graphql_limits: config.graphql,
            access: access.clone(),
            vault: vault.clone(),
        };
        let router = Router::new()
            .merge(api::router())
            .route("/metrics", get(metrics))
            .route("/graphql", get(graphiql).post(graphql))
            .route("/graphql/ws", get(subscriptions::websocket))
            .route("/health", get(|| async { "ok" }))
            .merge(health.routes())
            .fallback(not_found)
            // Innermost: every JSON answer, cached or not, is opened as it leaves.
            .layer(axum::middleware::from_fn_with_state(
                vault,
                crate::personal::open_answers,
            ))
            .layer(axum::middleware::from_fn_with_state(
                access.clone(),
                flowline_access::guard,
            ))
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
            changes: listening,
            checkpoints,
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
        let Self {
            server,
            changes,
            checkpoints,
        } = self;
        let served = server.serve_until(shutdown).await;
        // Stops listening only once no request can subscribe or wait any more.
        drop(checkpoints);
        drop(changes);
        served
    }
}
