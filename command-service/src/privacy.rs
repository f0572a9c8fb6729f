//! Personal data (ADR 26): `PUT /v1/privacy` sets which input and signal fields of the
//! caller's tenant are personal, `DELETE /v1/subjects/{id}` destroys a subject's key, after
//! which everything sealed with it reads as erased everywhere. Like budgets these are
//! configuration and keys, not a run's history: rows beside the event store, never events.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use flowline_access::{Caller, Role};
use flowline_domain::command::MAX_NAME_CHARS;
use flowline_domain::personal::PrivacyConfig;
use flowline_service_kit::openapi::PROBLEM_JSON;
use flowline_service_kit::problem::ProblemDetails;
use flowline_service_kit::request::{body_bytes, json_body};

use crate::application::AppState;
use crate::{Error, Result};

/// Which fields of the tenant's runs are personal, besides `submitted_by` (always).
#[derive(utoipa::ToSchema)]
#[schema(as = PrivacyConfig)]
#[allow(dead_code)] // documentation only
pub(crate) struct PrivacyDoc {
    /// Paths into a run's `input`: member names separated by dots (`customer.email`); `*`
    /// is every member or item, a number one array item. At most 100, each 1-200
    /// characters. The whole value found there is encrypted (an object or array too).
    #[schema(max_items = 100, example = json!(["customer.email", "customer.name"]))]
    input: Option<Vec<String>>,
    /// Per signal name, or `*` for every signal: paths into its payload, as for `input`.
    #[schema(value_type = Option<Object>, example = json!({"approve": ["note"], "*": ["by"]}))]
    signals: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Sets the caller's tenant's privacy config (replacing the previous one). It applies to
/// events appended from then on; fields of runs submitted before stay as they were stored.
#[utoipa::path(
    put,
    path = "/v1/privacy",
    tag = "personal data",
    request_body = PrivacyDoc,
    responses(
        (status = 200, description = "The config as set", body = PrivacyDoc),
        (status = 400, description = "Malformed JSON or an invalid header", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "A path or signal name is invalid, or an unknown member (`errors` names each)", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The key store is unreachable", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn set_privacy(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PrivacyConfig>> {
    caller.require(Role::Admin)?;
    let tenant = caller.tenant().to_owned();
    let body = body_bytes(body)?;
    let config: PrivacyConfig = json_body(&body)?;
    config
        .validate()
        .map_err(|errors| Error::Domain(flowline_domain::DomainError::Invalid(errors)))?;
    state.vault.set_privacy_config(&tenant, &config).await?;
    Ok(Json(config))
}

/// Erases a data subject of the caller's tenant: its key is destroyed, so its personal
/// fields (`submitted_by` of the runs it submitted, the personal input and signal fields of
/// the runs about it, and what steps derived from them) read as `"[erased]"` in every answer,
/// on the log and after every rebuild; the rest of each event stays readable and the hash
/// chain still verifies. Idempotent; an unknown subject is also 204, so the answer does not
/// tell whether the subject ever existed.
#[utoipa::path(
    delete,
    path = "/v1/subjects/{id}",
    tag = "personal data",
    params(("id" = String, Path, description = "The subject: a submitter's principal, a submit's `subject`, or `run:<id>` for a run submitted with neither (1-200 characters)")),
    responses(
        (status = 204, description = "The subject's key is destroyed (or never existed)"),
        (status = 400, description = "An invalid header", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 422, description = "The id is blank, too long or has control characters", body = ProblemDetails, content_type = PROBLEM_JSON),
        (status = 503, description = "The key store is unreachable; nothing was erased", body = ProblemDetails, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn erase_subject(
    State(state): State<AppState>,
    caller: Caller,
    Path(subject): Path<String>,
) -> Result<StatusCode> {
    caller.require(Role::Admin)?;
    let tenant = caller.tenant().to_owned();
    let mut errors = flowline_domain::ValidationErrors::default();
    flowline_domain::accepted::check_name(&subject, "id", MAX_NAME_CHARS, &mut errors);
    errors
        .into_result()
        .map_err(|errors| Error::Domain(flowline_domain::DomainError::Invalid(errors)))?;
    state.vault.erase_subject(&tenant, &subject).await?;
    Ok(StatusCode::NO_CONTENT)
}
