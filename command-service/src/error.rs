//! The service's errors and their one mapping to HTTP problems.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowline_domain::DomainError;
use flowline_service_kit::Problem;
use uuid::Uuid;

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// `If-Match` named another version than the current one.
    #[error("expected version {expected}, current version is {current}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What the stream is at.
        current: u64,
    },
    /// The event is stored but not yet confirmed on the log.
    #[error("workflow {workflow_id} version {version} is stored but not yet on the log")]
    PublicationPending {
        /// The stream.
        workflow_id: Uuid,
        /// The stored version.
        version: u64,
    },
    /// The `Idempotency-Key` was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Concurrent writers kept winning for longer than the retry budget.
    #[error("too much contention on workflow {0}")]
    Contention(Uuid),
    /// A header or body the service could not accept.
    #[error("{}", .0.detail)]
    Request(Problem),
    /// The store or the log failed.
    #[error(transparent)]
    Store(#[from] flowline_event_store::Error),
    /// The database or the listener could not be prepared at start.
    #[error(transparent)]
    Startup(#[from] flowline_service_kit::Error),
    /// The log could not be prepared at start.
    #[error(transparent)]
    Log(#[from] flowline_event_log::Error),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Self::Request(problem)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = match self {
            Error::Domain(DomainError::Invalid(errors)) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
                errors.to_string(),
            )
            .with_errors(errors.0.iter().map(|e| serde_json::json!(e))),
            Error::Domain(DomainError::NotFound) => Problem::not_found("no such workflow"),
            Error::Domain(error @ DomainError::AlreadyExists) => {
                Problem::new(StatusCode::CONFLICT, "already-exists", "Already exists", error.to_string())
            }
            Error::Domain(error @ DomainError::InvalidTransition { .. }) => Problem::new(
                StatusCode::CONFLICT,
                "invalid-transition",
                "Not possible in the current status",
                error.to_string(),
            ),
            Error::VersionMismatch { expected, current } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version-mismatch",
                "Version mismatch",
                format!("If-Match expected version {expected}, but the workflow is at version {current}"),
            )
            .with("current_version", current),
            error @ Error::PublicationPending { .. } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "publication-pending",
                "Not yet confirmed on the log",
                format!("{error}; it is durably stored and will be published, so do not resubmit it blindly: read the workflow to see it"),
            )
            .retry_after(1),
            error @ Error::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                format!("{error}; use a new key for a new request"),
            )
            .with("header", "Idempotency-Key"),
            error @ Error::Contention(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "contention",
                "Too much contention",
                error.to_string(),
            )
            .retry_after(1),
            Error::Request(problem) => problem,
            Error::Store(error) => Problem::internal(&error),
            error @ (Error::Startup(_) | Error::Log(_)) => Problem::internal(&error),
        };
        problem.into_response()
    }
}
