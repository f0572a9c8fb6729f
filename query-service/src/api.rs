//! The REST routes together with their OpenAPI 3.1 document, served at `/openapi.json`
//! (Swagger UI at `/docs`).

use axum::Router;
use flowline_service_kit::openapi;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::application::AppState;
use crate::{audit, graph_rest, rest, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowline query-service",
        description = "Reads over the workflow read models and the graph view. Every error is \
            `application/problem+json` (RFC 9457); a bad parameter is a 400 whose `parameter` \
            member names it.\n\nGraphQL over the same read model is served at `/graphql` \
            (POST a query; GET opens GraphiQL) and is described by its own schema, not here.\n\n\
            Every operation needs `Authorization: Bearer` with a JWT or an API key: readers \
            read their tenant, operators also read its audit log."
    ),
    tags(
        (name = "workflows", description = "Runs, their steps, events and past states"),
        (name = "usage", description = "Model calls' tokens and cost"),
        (name = "graph", description = "Questions answered by the graph view"),
        (name = "audit", description = "Operators' reads of the event log itself (operators)"),
        (name = "budgets", description = "Tenants' monthly budgets for model calls and this month's spend"),
        (name = "personal data", description = "Which fields are personal; every answer shows them decrypted, or `\"[erased]\"` once their subject is erased"),
    )
)]
struct ApiDoc;

/// The REST routes and the routes serving their document.
pub(crate) fn router() -> Router<AppState> {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(rest::list))
        .routes(routes!(rest::workflow))
        .routes(routes!(rest::events))
        .routes(routes!(rest::state))
        .routes(routes!(rest::step))
        .routes(routes!(usage::usage))
        .routes(routes!(graph_rest::dependencies))
        .routes(routes!(graph_rest::dependents))
        .routes(routes!(graph_rest::lineage))
        .routes(routes!(graph_rest::runs))
        .routes(routes!(audit::events))
        .routes(routes!(audit::verify))
        .routes(routes!(crate::budgets::budget))
        .routes(routes!(crate::personal::privacy))
        .split_for_parts();
    router.merge(openapi::docs(openapi::finish(
        api,
        &[
            "/v1/workflows",
            "/v1/graph",
            "/v1/usage",
            "/v1/audit",
            "/v1/budgets",
            "/v1/privacy",
        ],
    )))
}
