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
    /// Waiting for a named signal (`config.signal`, required), e.g. a person's approval:
    /// `POST /v1/workflows/{id}/signals/{signal}` completes it. With `config.timeout` it
    /// fails once that passes; it is never retried.
    Wait,
}

/// What a step's failure for good means for its run.
#[derive(ToSchema)]
#[schema(as = OnFailure, rename_all = "snake_case")]
#[allow(dead_code)] // documentation only
pub(crate) enum OnFailureDoc {
    /// The run fails (the default).
    Fail,
    /// The run goes on; the steps depending on this one are skipped.
    Continue,
}

/// Retries of a step's failed or timed-out attempts, with exponential backoff (each pause
/// is jittered between half and all of its base value).
#[derive(ToSchema)]
#[schema(as = RetryPolicy)]
#[allow(dead_code)] // documentation only
pub(crate) struct RetryDoc {
    /// Attempts in all, the first included (1 = no retry).
    #[schema(default = 3, minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
    /// Pause before the second attempt (a duration).
    #[schema(default = "1s", pattern = "^[0-9]+(ms|s|m|h)$")]
    initial_interval: Option<String>,
    /// Each further pause is the previous one times this.
    #[schema(default = 2.0, minimum = 1.0, maximum = 10.0)]
    backoff_coefficient: Option<f64>,
    /// No pause is longer (a duration, not shorter than `initial_interval`); by default
    /// 100 × `initial_interval` (at most 7 days).
    #[schema(pattern = "^[0-9]+(ms|s|m|h)$")]
    max_interval: Option<String>,
    /// Error kinds (e.g. `http_status`) that are never retried; at most 32.
    #[schema(default = json!([]), max_items = 32)]
    non_retryable: Option<Vec<String>>,
}

/// A step's `config`: the kind's own settings (e.g. `model`, `server` and `tool`, `url`)
/// next to the policy members below, which apply to every kind. Each is checked at
/// submit: a bad one is a 422 naming it (`steps[0].config.retry.max_attempts`).
///
/// Durations are a whole number and one unit, `ms`, `s`, `m` or `h` (`500ms`, `30s`,
/// `5m`, `2h`), longer than 0 and at most 7 days.
#[derive(ToSchema)]
#[schema(as = StepConfig)]
#[allow(dead_code)] // documentation only
pub(crate) struct StepConfigDoc {
    /// Retries; defaults: 3 attempts, 1s initial interval, coefficient 2, max interval
    /// 100 × the initial interval. A `wait` step is never retried.
    retry: Option<RetryDoc>,
    /// Per attempt, from start to end (a duration); no timeout unless set. For a `wait`
    /// step: how long it waits for its signal.
    #[schema(pattern = "^[0-9]+(ms|s|m|h)$")]
    timeout: Option<String>,
    /// What the step's failure for good means for the run.
    #[schema(default = "fail")]
    on_failure: Option<OnFailureDoc>,
    /// `wait` steps only, and required for them: the name of the signal that completes the
    /// step (1-128 ASCII letters, digits, '_', '-', '.').
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    signal: Option<String>,
    /// `llm` steps: the model (1-200 characters, no control characters; indexed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    model: Option<String>,
    /// `mcp_tool` steps, required: the MCP server, a name from the executor's servers file
    /// (1-200 characters, no control characters; indexed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    server: Option<String>,
    /// `mcp_tool` steps, required: the tool (1-200 characters, no control characters;
    /// indexed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    tool: Option<String>,
    /// `mcp_tool` steps: the tool's arguments (its strings are templates). The step's
    /// output is the tool's `structuredContent` when it sends one, else its `content`
    /// blocks.
    #[schema(value_type = Option<Object>)]
    arguments: Option<serde_json::Value>,
}

/// A step of a submitted workflow.
#[derive(ToSchema)]
#[schema(as = Step)]
#[allow(dead_code)] // documentation only
pub(crate) struct StepDoc {
    /// Unique within the workflow (1-128 ASCII letters, digits, '_', '-', '.').
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    id: String,
    kind: StepKindDoc,
    /// Ids of steps that must finish first (no cycles, no repeats).
    #[schema(default = json!([]), max_items = 1000)]
    depends_on: Option<Vec<StepIdDoc>>,
    /// The kind's settings and the step's policy (retries, timeout, `on_failure`, a
    /// `wait` step's `signal`). A JSON object in the accepted language of commands (see
    /// `input`).
    config: Option<StepConfigDoc>,
}

/// A step id.
#[derive(ToSchema)]
#[schema(as = StepId, pattern = "^[A-Za-z0-9_.-]{1,128}$")]
#[allow(dead_code)] // documentation only
pub(crate) struct StepIdDoc(String);

/// `POST /v1/workflows` body.
#[derive(ToSchema)]
#[schema(as = SubmitWorkflow)]
#[allow(dead_code)] // documentation only
pub(crate) struct SubmitDoc {
    /// Human-readable name (1-200 characters, not blank, no control characters; indexed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    name: String,
    /// The run's input document, a JSON object in the accepted language of commands:
    /// arrays and objects nest at most 32 deep (this object is level 1), an array has at
    /// most 10000 items and an object at most 10000 members, keys are at most 256
    /// characters, and no string or key contains U+0000 (other characters, escapes and
    /// numbers are kept as sent). The whole event must fit the log (`MAX_EVENT_BYTES`,
    /// 413 otherwise).
    #[schema(value_type = Option<Object>)]
    input: Option<serde_json::Value>,
    /// The step graph: 1 to 1000 steps, acyclic. Their `retry.max_attempts` together may
    /// not make a run write more than half of `MAX_STREAM_EVENTS` (2 events per attempt).
    #[schema(min_items = 1, max_items = 1000)]
    steps: Vec<StepDoc>,
    /// The run's timeout, from its start to its end (a duration: a whole number and `ms`,
    /// `s`, `m` or `h`, longer than 0 and at most 7 days); none unless set. A run past it
    /// fails.
    #[schema(pattern = "^[0-9]+(ms|s|m|h)$", example = "30m")]
    timeout: Option<String>,
    /// Whom the personal input fields (`PUT /v1/privacy`) and signal fields of this run are
    /// about: they are encrypted with this subject's key, and `DELETE /v1/subjects/{id}`
    /// erases them. Never stored in plaintext. Defaults to the submitter (`X-Principal`),
    /// else to `run:<workflow id>`. 1-200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200, example = "customer-4711")]
    subject: Option<String>,
}

/// `POST /v1/workflows/{id}/pause` body (optional).
#[derive(ToSchema)]
#[schema(as = PauseWorkflow)]
#[allow(dead_code)] // documentation only
pub(crate) struct PauseDoc {
    /// Why, for the audit trail (at most 2000 characters, no U+0000).
    #[schema(max_length = 2000, pattern = "^[^\\u0000]*$")]
    reason: Option<String>,
}

/// `POST /v1/workflows/{id}/cancel` body (optional).
#[derive(ToSchema)]
#[schema(as = CancelWorkflow)]
#[allow(dead_code)] // documentation only
pub(crate) struct CancelDoc {
    /// Why, for the audit trail (at most 2000 characters, no U+0000).
    #[schema(max_length = 2000, pattern = "^[^\\u0000]*$")]
    reason: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowline command-service",
        description = "Commands on workflow runs. A command is answered once its event is on \
            the log. Every error is `application/problem+json` (RFC 9457); refused bodies list \
            `errors: [{field, message}]`. Every operation needs `Authorization: Bearer` with a \
            JWT or an API key: submitters and above send run commands, admins manage budgets \
            and keys."
    ),
    tags(
        (name = "commands", description = "Submit, cancel, signal, pause and resume runs; retry failed steps"),
        (name = "budgets", description = "Monthly budgets of tenants for model calls (admins)"),
        (name = "api-keys", description = "API keys of the caller's tenant for service-to-service calls (admins)"),
        (name = "personal data", description = "Which fields are personal, and erasing a data subject (crypto-shredding; admins)")
    )
)]
struct ApiDoc;

/// The command routes and their finished document.
fn routes_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::submit))
        .routes(routes!(routes::cancel))
        .routes(routes!(routes::signal))
        .routes(routes!(routes::pause))
        .routes(routes!(routes::resume))
        .routes(routes!(routes::retry_step))
        .routes(routes!(crate::budgets::set_budget))
        .routes(routes!(crate::api_keys::create, crate::api_keys::list))
        .routes(routes!(crate::api_keys::revoke))
        .routes(routes!(crate::privacy::set_privacy))
        .routes(routes!(crate::privacy::erase_subject))
        .split_for_parts();
    (router, openapi::finish(api, &["/v1"]))
}

/// The command routes and the routes serving their document.
pub(crate) fn router() -> Router<AppState> {
    let (router, api) = routes_and_document();
    router.merge(openapi::docs(api))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn document() -> Value {
        serde_json::to_value(routes_and_document().1).unwrap()
    }

    #[test]
    fn run_control_routes_are_documented_with_the_headers_and_answers_of_every_command() {
        let document = document();
        for path in [
            "/v1/workflows/{id}/pause",
            "/v1/workflows/{id}/resume",
            "/v1/workflows/{id}/steps/{step}/retry",
        ] {
            let operation = &document["paths"][path]["post"];
            assert!(operation.is_object(), "{path} is documented");
            // An empty body is accepted, so the document must not require one.
            assert_ne!(operation["requestBody"]["required"], json!(true), "{path}");
            for status in ["200", "404", "409", "412", "default"] {
                assert!(
                    !operation["responses"][status].is_null(),
                    "{path} documents {status}"
                );
            }
            let parameters: Vec<&str> = operation["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for name in ["id", "Idempotency-Key", "If-Match", "X-Tenant-Id"] {
                assert!(
                    parameters.contains(&name),
                    "{path}: {name} in {parameters:?}"
                );
            }
        }
    }

    #[test]
    fn the_submit_body_documents_the_run_timeout_wait_steps_and_step_policies() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let kinds = serde_json::to_string(&schemas["StepKind"]).unwrap();
        assert!(kinds.contains("\"wait\""), "{kinds}");
        assert!(schemas["SubmitWorkflow"]["properties"]["timeout"].is_object());
        for field in ["retry", "timeout", "on_failure", "signal"] {
            assert!(
                schemas["StepConfig"]["properties"][field].is_object(),
                "StepConfig.{field}"
            );
        }
        let retry = &schemas["RetryPolicy"]["properties"];
        assert_eq!(retry["max_attempts"]["default"], json!(3));
        assert_eq!(retry["initial_interval"]["default"], json!("1s"));
        assert_eq!(retry["backoff_coefficient"]["default"], json!(2.0));
    }

    #[test]
    fn the_document_states_the_accepted_language_it_enforces() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let submit = &schemas["SubmitWorkflow"]["properties"];
        assert_eq!(submit["name"]["maxLength"], json!(200));
        assert_eq!(submit["steps"]["maxItems"], json!(1000));
        assert_eq!(submit["steps"]["minItems"], json!(1));
        let input = submit["input"]["description"].as_str().unwrap();
        for limit in ["32 deep", "10000 items", "256", "U+0000", "MAX_EVENT_BYTES"] {
            assert!(input.contains(limit), "input: {limit}");
        }
        let step = &schemas["Step"]["properties"];
        assert_eq!(step["id"]["pattern"], json!("^[A-Za-z0-9_.-]{1,128}$"));
        assert_eq!(
            schemas["StepId"]["pattern"],
            json!("^[A-Za-z0-9_.-]{1,128}$")
        );
        for name in ["model", "server", "tool"] {
            assert_eq!(
                schemas["StepConfig"]["properties"][name]["maxLength"],
                json!(200),
                "{name}"
            );
        }
        for body in ["CancelWorkflow", "PauseWorkflow"] {
            assert_eq!(
                schemas[body]["properties"]["reason"]["maxLength"],
                json!(2000),
                "{body}"
            );
        }
        let signal = &document["paths"]["/v1/workflows/{id}/signals/{name}"]["post"];
        let name = signal["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "name")
            .unwrap();
        assert_eq!(name["schema"]["pattern"], json!("^[A-Za-z0-9_.-]{1,128}$"));
        let body = signal["requestBody"]["description"].as_str().unwrap();
        assert!(
            body.contains("32 deep") && body.contains("MAX_EVENT_BYTES"),
            "{body}"
        );
        let too_large = signal["responses"]["413"]["description"].as_str().unwrap();
        assert!(too_large.contains("MAX_EVENT_BYTES"), "{too_large}");
    }
}
