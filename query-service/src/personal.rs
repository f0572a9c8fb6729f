//! Personal data at the query side's edge (ADR 26): read models, snapshots, the graph, the
//! payload table and the read cache all hold personal fields as envelopes; this module
//! opens them in the answer, just before it leaves the service, with the keys of the
//! caller's tenant. So an erased subject reads as `"[erased]"` at once, from every
//! endpoint, whatever was cached or rebuilt, and no handler has to remember it.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flowline_access::{Caller, Role};
use flowline_domain::personal::{ENVELOPE_PREFIX, PrivacyConfig};
use flowline_personal_data::Vault;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use serde_json::Value;

use crate::application::AppState;
use crate::{Error, Result};

/// Whether an answer of this content type is a JSON document this layer opens. NDJSON is
/// opened line by line by its handler (the audit stream, each line in its own tenant).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json") && !t.contains("ndjson"))
}

fn holds_envelope(bytes: &[u8]) -> bool {
    let needle = ENVELOPE_PREFIX.as_bytes();
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The middleware: opens the envelopes of every JSON answer in the request's tenant.
pub(crate) async fn open_answers(
    State(vault): State<Vault>,
    request: Request,
    next: Next,
) -> Response {
    // The guard outside this layer placed the caller in its tenant.
    let tenant = request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.tenant().to_owned());
    let response = next.run(request).await;
    let Some(tenant) = tenant.filter(|_| is_json(response.headers())) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Error::PersonalData("the answer could not be read".into()).into_response();
    };
    if !holds_envelope(&bytes) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Error::PersonalData("the answer is not JSON".into()).into_response();
    };
    if let Err(error) = vault.open(&tenant, &mut value).await {
        return Error::PersonalData(error.to_string()).into_response();
    }
    let opened = serde_json::to_vec(&value).expect("JSON values serialize");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(opened))
}

/// Opens the envelopes of `value` with `tenant`'s keys (for answers that do not pass the
/// middleware as one JSON document: NDJSON lines, WebSocket messages).
pub(crate) async fn open(vault: &Vault, tenant: &str, value: &mut Value) -> Result<()> {
    vault
        .open(tenant, value)
        .await
        .map(drop)
        .map_err(|error| Error::PersonalData(error.to_string()))
}

/// Opens one serialized JSON message (a WebSocket frame), leaving it as it is when it holds
/// no envelope; an envelope that cannot be opened is never passed on sealed or in part.
pub(crate) async fn open_text(vault: &Vault, tenant: &str, text: String) -> Result<String> {
    if !holds_envelope(text.as_bytes()) {
        return Ok(text);
    }
    let mut value: Value = serde_json::from_str(&text)
        .map_err(|_| Error::PersonalData("the message is not JSON".into()))?;
    open(vault, tenant, &mut value).await?;
    Ok(value.to_string())
}

/// The caller's tenant's privacy config: which input and signal fields are personal
/// (`submitted_by` always is). Set with `PUT /v1/privacy` on the command service.
#[utoipa::path(
    get,
    path = "/v1/privacy",
    tag = "personal data",
    responses(
        (status = 200, description = "The config (`{\"input\": [], \"signals\": {}}` when never set)", body = Object,
            example = json!({"input": ["customer.email"], "signals": {"approve": ["note"]}})),
        (status = 400, description = "An invalid header", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The key store is unreachable", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub async fn privacy(State(state): State<AppState>, caller: Caller) -> Result<Json<PrivacyConfig>> {
    caller.require(Role::Reader)?;
    let tenant = caller.tenant().to_owned();
    state
        .vault
        .privacy_config(&tenant)
        .await
        .map(Json)
        .map_err(|error| Error::PersonalData(error.to_string()))
}
