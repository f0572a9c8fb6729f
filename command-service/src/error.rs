//! The service's errors and their one mapping to HTTP problems.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowline_domain::{DomainError, WorkflowStatus};
use flowline_service_kit::Problem;
use uuid::Uuid;

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A command about one step that the run's status forbids. The aggregate's refusal
    /// names only the run's status; the caller also needs to know which step it was about.
    #[error("workflow is {}: {action} is not possible (step '{step_id}')", status.as_str())]
    StepRefused {
        /// The step the command named.
        step_id: String,
        /// The run's status.
        status: WorkflowStatus,
        /// What was attempted.
        action: &'static str,
    },
    /// `If-Match` named another version than the current one.
    #[error("expected version {expected}, current version is {current}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What the stream is at.
        current: u64,
    },
    /// The event is stored (committed) but not yet confirmed on the log, or confirming it
    /// failed: the outcome is pending, never an error a blind retry would duplicate.
    #[error(
        "event {event_id} (workflow {workflow_id} version {version}) is stored but not yet confirmed on the log"
    )]
    PublicationPending {
        /// The stream.
        workflow_id: Uuid,
        /// The stored version.
        version: u64,
        /// The stored event.
        event_id: Uuid,
    },
    /// The connection to the store failed while appending: the event may or may not be
    /// stored.
    #[error(
        "the store did not confirm whether event {event_id} of workflow {workflow_id} was stored"
    )]
    OutcomeUnknown {
        /// The stream.
        workflow_id: Uuid,
        /// The event that may be stored.
        event_id: Uuid,
    },
    /// The event's record would be larger than the log accepts.
    #[error(
        "the command's event would make a record of {bytes} bytes on the log; at most {max_bytes} are accepted"
    )]
    EventTooLarge {
        /// The record's size.
        bytes: usize,
        /// `MAX_EVENT_BYTES`.
        max_bytes: usize,
    },
    /// The event is stored, but the log refused it (or an earlier event of its stream) for
    /// good: it is parked until an operator redrives it.
    #[error("event {} of workflow {} version {} is stored but parked, not published: {}",
        .0.event_id, .0.stream_id, .0.stream_version, .0.reason)]
    PublicationParked(Box<flowline_event_store::ParkedEvent>),
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
    /// Access control could not start (an unusable key set).
    #[error(transparent)]
    Access(#[from] flowline_access::Error),
    /// The personal data keys could not be read or written: nothing was stored, so a
    /// personal field is never appended unsealed.
    #[error(transparent)]
    PersonalData(#[from] flowline_personal_data::Error),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Self::Request(problem)
    }
}

impl Error {
    /// This error as the answer to a command about step `step_id`: a refusal because of the
    /// run's status becomes [`Error::StepRefused`], which names the step; anything else is
    /// kept (the step's own refusals name it already).
    pub(crate) fn about_step(self, step_id: &str) -> Self {
        match self {
            Error::Domain(DomainError::InvalidTransition { status, action }) => {
                Error::StepRefused {
                    step_id: step_id.to_owned(),
                    status,
                    action,
                }
            }
            other => other,
        }
    }
}

/// 409 for a command the run's or a step's status forbids. Callers add the status as
/// `workflow_status` or `step_status`: `status` is the HTTP status of every problem.
fn invalid_transition(detail: String) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "invalid-transition",
        "Not possible in the current status",
        detail,
    )
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
            Error::Domain(ref error @ DomainError::UnknownStep(ref step_id)) => {
                Problem::not_found(error.to_string()).with("step", step_id.as_str())
            }
            Error::Domain(error @ DomainError::AlreadyExists) => {
                Problem::new(StatusCode::CONFLICT, "already-exists", "Already exists", error.to_string())
            }
            Error::Domain(ref error @ DomainError::InvalidTransition { status, .. }) => {
                invalid_transition(error.to_string()).with("workflow_status", status.as_str())
            }
            ref error @ Error::StepRefused { ref step_id, status, .. } => {
                invalid_transition(error.to_string())
                    .with("workflow_status", status.as_str())
                    .with("step", step_id.as_str())
            }
            Error::Domain(ref error @ DomainError::InvalidStepTransition { ref step_id, status, .. }) => {
                invalid_transition(error.to_string())
                    .with("step", step_id.as_str())
                    .with("step_status", status.as_str())
            }
            Error::Domain(ref error @ DomainError::StaleAttempt { ref step_id, attempt_id }) => Problem::new(
                StatusCode::CONFLICT,
                "stale-attempt",
                "Not the step's running attempt",
                error.to_string(),
            )
            .with("step", step_id.as_str())
            .with("attempt_id", attempt_id.to_string()),
            Error::VersionMismatch { expected, current } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version-mismatch",
                "Version mismatch",
                format!("If-Match expected version {expected}, but the workflow is at version {current}"),
            )
            .with("current_version", current),
            ref error @ Error::PublicationPending { workflow_id, version, event_id } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "publication-pending",
                "Not yet confirmed on the log",
                format!("{error}; it is durably stored and will be published, so do not resubmit it blindly: read the workflow to see it"),
            )
            .with("outcome", "pending")
            .with("workflow_id", workflow_id.to_string())
            .with("version", version)
            .with("event_id", event_id.to_string())
            .retry_after(1),
            Error::PublicationParked(ref parked) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "publication-parked",
                "Stored but parked",
                format!("{self}; it stays stored and is published once an operator redrives it, so do not resubmit it"),
            )
            .with("event_id", parked.event_id.to_string())
            .with("workflow_id", parked.stream_id.to_string())
            .with("version", parked.stream_version)
            .with("reason", parked.reason.as_str()),

            ref error @ Error::OutcomeUnknown { workflow_id, event_id } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown",
                format!("{error}; read the workflow's events for event_id before resubmitting, or resubmit with the same Idempotency-Key"),
            )
            .with("outcome", "unknown")
            .with("workflow_id", workflow_id.to_string())
            .with("event_id", event_id.to_string())
            .retry_after(1),
            ref error @ Error::EventTooLarge { bytes, max_bytes } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event-too-large",
                "Event too large for the log",
                error.to_string(),
            )
            .with("event_bytes", bytes)
            .with("max_event_bytes", max_bytes),
            Error::Domain(ref error @ DomainError::StreamFull { version, max_events }) => Problem::new(
                StatusCode::CONFLICT,
                "stream-full",
                "The run's stream is full",
                error.to_string(),
            )
            .with("version", version)
            .with("max_stream_events", max_events),
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
            Error::PersonalData(error) => {
                tracing::error!(%error, "personal data store failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "personal-data-unavailable",
                    "Personal data keys unavailable",
                    "the personal data key store could not be reached; nothing was stored or changed",
                )
                .retry_after(1)
            }
            Error::Request(problem) => problem,
            Error::Store(error) => Problem::internal(&error),
            error @ (Error::Startup(_) | Error::Log(_) | Error::Access(_)) => {
                Problem::internal(&error)
            }
        };
        problem.into_response()
    }
}
