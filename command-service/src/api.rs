//! The command routes together with their OpenAPI 3.1 document, served at `/openapi.json`
//! (Swagger UI at `/docs`). The body schemas here document the domain's commands; the
//! domain crate stays free of HTTP concerns.

use axum::Router;
use flowline_service_kit::openapi;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::application::AppState;
use crate::routes;

/// Step kinds.
#[derive(ToSchema)]
#[schema(as = StepKind, rename_all = "snake_case")]
#[allow(dead_code)] // documentation only
pub(crate) enum StepKindDoc {
    /// A call to a language model (`config.model`).
    Llm,
    /// A tool call on an MCP server (`config.server`, `config.tool`).
    McpTool,
    /// Rendering a text template.
    Template,
    /// An HTTP request.
    Http,
}

/// A step of a submitted workflow.
#[derive(ToSchema)]
#[schema(as = Step)]
#[allow(dead_code)] // documentation only
pub(crate) struct StepDoc {
    /// Unique within the workflow (1-128 characters).
    id: String,
    kind: StepKindDoc,
    /// Ids of steps that must finish first (no cycles).
    #[schema(default = json!([]))]
    depends_on: Option<Vec<String>>,
    /// Kind-specific settings.
    #[schema(value_type = Option<Object>)]
    config: Option<serde_json::Value>,
}

/// `POST /v1/workflows` body.
#[derive(ToSchema)]
#[schema(as = SubmitWorkflow)]
#[allow(dead_code)] // documentation only
pub(crate) struct SubmitDoc {
    /// Human-readable name (1-200 characters).
    name: String,
    /// The run's input document.
    #[schema(value_type = Option<Object>)]
    input: Option<serde_json::Value>,
    /// The step graph: 1 to 1000 steps, acyclic.
    steps: Vec<StepDoc>,
}

/// `POST /v1/workflows/{id}/cancel` body (optional).
#[derive(ToSchema)]
#[schema(as = CancelWorkflow)]
#[allow(dead_code)] // documentation only
pub(crate) struct CancelDoc {
    /// Why, for the audit trail.
    reason: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowline command-service",
        description = "Commands on workflow runs. A command is answered once its event is on \
            the log. Every error is `application/problem+json` (RFC 9457); refused bodies list \
            `errors: [{field, message}]`."
    ),
    tags((name = "commands", description = "Submit, cancel and signal runs"))
)]
struct ApiDoc;

/// The command routes and the routes serving their document.
pub(crate) fn router() -> Router<AppState> {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::submit))
        .routes(routes!(routes::cancel))
        .routes(routes!(routes::signal))
        .split_for_parts();
    router.merge(openapi::docs(openapi::finish(api, &["/v1"])))
}
