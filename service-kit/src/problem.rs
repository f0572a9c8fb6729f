//! RFC 9457 problem details: the one error body every HTTP endpoint answers with.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An `application/problem+json` response (boxed: it travels in `Err` variants).
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemDetails>);

/// The members of a problem body (named `Problem` in the OpenAPI documents; extension
/// members such as `parameter`, `header` or `current_version` may follow).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    /// A URI naming the kind of problem (relative, documented in the README).
    #[serde(rename = "type")]
    #[schema(example = "/problems/invalid-parameter")]
    pub kind: String,
    /// Short, stable summary of the kind.
    pub title: String,
    /// The HTTP status, repeated for clients that only keep the body.
    pub status: u16,
    /// What went wrong this time, for a person.
    pub detail: String,
    /// Per-field errors, when the request body was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldError>)]
    pub errors: Vec<serde_json::Value>,
    /// Extra members (e.g. `current_version`).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    retry_after_seconds: Option<u64>,
}

/// One refused field of a request body (documentation of `errors` items).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `steps[1].kind`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    /// A problem of `kind` (the last segment of its type URI) with `status`.
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            kind: format!("/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_seconds: None,
        }))
    }

    /// Adds per-field errors.
    pub fn with_errors(mut self, errors: impl IntoIterator<Item = serde_json::Value>) -> Self {
        self.0.errors.extend(errors);
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.0.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Asks the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after_seconds = Some(seconds);
        self
    }

    /// 404 for a resource that does not exist (or belongs to another tenant).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 400 for a request that cannot be parsed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )
    }

    /// 500 for failures that are ours; the detail is logged, not sent.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed to handle the request; it has been logged",
        )
    }
}

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;

    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_seconds;
        let mut response = (status, axum::Json(*self.0)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Turns axum's own rejections (bad JSON, body too large, bad path) into problems.
pub fn from_rejection(status: StatusCode, body_text: String) -> Problem {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            status,
            "payload-too-large",
            "Payload too large",
            "the request body is larger than the configured limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => {
            Problem::new(status, "validation", "Invalid request", body_text)
        }
        _ => Problem::new(status, "malformed-request", "Malformed request", body_text),
    }
}

/// Middleware (`axum::middleware::map_response`) turning every error response that is not
/// already a problem (axum's own rejections of query strings, paths and bodies, 404s of
/// unknown routes, 405s) into `application/problem+json`, keeping its other headers
/// (`Allow` on a 405).
pub async fn problem_errors(method: Method, response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|value| value.to_str().is_ok_and(|t| t.starts_with("text/")));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let problem = match status {
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            status,
            "method-not-allowed",
            "Method not allowed",
            format!("this endpoint does not accept {method}; the Allow header lists what it does"),
        ),
        StatusCode::NOT_FOUND => Problem::not_found(if text.is_empty() {
            "no such endpoint".to_owned()
        } else {
            text
        }),
        _ if text.is_empty() => from_rejection(
            status,
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
        _ => from_rejection(status, text),
    };
    let mut answer = problem.into_response();
    for (name, value) in &parts.headers {
        if *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}
