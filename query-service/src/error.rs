//! The service's errors and their one mapping to HTTP problems (GraphQL errors reuse the
//! same messages).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowline_service_kit::Problem;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow does not exist for this tenant.
    #[error("no workflow with id '{0}'")]
    NotFound(String),
    /// The workflow has no such version.
    #[error("version {requested} does not exist: the workflow has versions 1 to {current}")]
    UnknownVersion {
        /// What was asked for.
        requested: u64,
        /// The latest version.
        current: u64,
    },
    /// The workflow did not exist yet at the time asked for.
    #[error("the workflow did not exist yet at {0}")]
    NotYetExisting(String),
    /// The workflow has no such step.
    #[error("the workflow has no step '{0}'")]
    UnknownStep(String),
    /// The graph store failed.
    #[error("graph store: {0}")]
    Graph(String),
    /// A query parameter is invalid.
    #[error("{parameter}: {message}")]
    InvalidParameter {
        /// The parameter's name.
        parameter: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The read model did not reach the consistency token in time.
    #[error(
        "the read model has not reached consistency token {token} after {waited_ms} ms; retry later"
    )]
    NotYetConsistent {
        /// The token asked for.
        token: String,
        /// How long the query waited.
        waited_ms: u64,
    },
    /// A GraphQL query nests deeper than allowed.
    #[error(
        "the query is nested {depth} levels deep; at most {limit} are allowed (GRAPHQL_MAX_DEPTH)"
    )]
    QueryTooDeep {
        /// The query's depth.
        depth: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A GraphQL query would cost more than allowed.
    #[error(
        "the query's complexity is {complexity}; at most {limit} is allowed (GRAPHQL_MAX_COMPLEXITY): \
         ask for fewer items (first, depth) or fewer nested lists"
    )]
    QueryTooComplex {
        /// The query's complexity.
        complexity: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A GraphQL operation selects more fields or aliases than allowed.
    #[error("the query has {count} {what}; at most {limit} are allowed ({setting})")]
    QueryTooLarge {
        /// What was counted: `fields` or `aliases`.
        what: &'static str,
        /// How many the operation has (counting stops just above the limit).
        count: usize,
        /// The configured limit.
        limit: usize,
        /// The setting naming the limit.
        setting: &'static str,
    },
    /// A GraphQL answer grew past its budget while it ran.
    #[error(
        "the answer would hold more than {limit} values (GRAPHQL_MAX_ANSWER_VALUES): \
         ask for fewer items or fewer nested lists"
    )]
    AnswerTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A request body is larger than allowed.
    #[error("the request body is larger than {limit} bytes ({setting})")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
        /// The setting naming the limit.
        setting: &'static str,
    },
    /// A read ran into the statement timeout.
    #[error(
        "the read took longer than the statement timeout (QUERY_STATEMENT_TIMEOUT_MS); \
         retry later or ask for less"
    )]
    ReadTimedOut,
    /// A header is invalid.
    #[error("{}", .0.detail)]
    Request(Problem),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(Box<flowline_event_store::Error>),
    /// The event log could not be read for an audit.
    #[error("audit: {0}")]
    Audit(#[from] flowline_audit::Error),
    /// Every audit scan allowed at once is running.
    #[error("{limit} audit scans of the log run already (AUDIT_MAX_CONCURRENT_SCANS); retry later")]
    AuditBusy {
        /// The configured limit.
        limit: usize,
    },
    /// The read model failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database or the listener could not be prepared at start.
    #[error(transparent)]
    Startup(#[from] flowline_service_kit::Error),
    /// Access control could not start (an unusable key set).
    #[error(transparent)]
    Access(#[from] flowline_access::Error),
    /// Personal fields could not be opened (the key store failed): the answer is refused
    /// rather than sent with its personal fields sealed or half open.
    #[error("personal data: {0}")]
    PersonalData(String),
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// PostgreSQL's `query_canceled`, which a `statement_timeout` raises.
const QUERY_CANCELED: &str = "57014";

/// Whether PostgreSQL cancelled the statement (its `statement_timeout`).
fn timed_out(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == QUERY_CANCELED)
}

impl From<flowline_graph::Error> for Error {
    fn from(error: flowline_graph::Error) -> Self {
        match &error {
            flowline_graph::Error::Postgres(e) if timed_out(e) => Error::ReadTimedOut,
            _ => Error::Graph(error.to_string()),
        }
    }
}

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Self::Request(problem)
    }
}

impl Error {
    /// The problem a client sees.
    pub fn to_problem(&self) -> Problem {
        match self {
            Error::NotFound(_) => Problem::not_found(self.to_string()),
            Error::UnknownVersion { current, .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-version",
                "Unknown version",
                self.to_string(),
            )
            .with("current_version", *current),
            Error::UnknownStep(_) => Problem::not_found(self.to_string()),
            Error::NotYetExisting(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "not-yet-existing",
                "Did not exist yet",
                self.to_string(),
            ),
            Error::InvalidParameter { parameter, .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
                bounded(self.to_string()),
            )
            .with("parameter", *parameter),
            Error::NotYetConsistent { token, .. } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-yet-consistent",
                "Not yet consistent",
                self.to_string(),
            )
            .with("consistency_token", token.as_str())
            .with("retryable", true)
            .retry_after(1),
            Error::QueryTooDeep { depth, limit } => Problem::new(
                StatusCode::BAD_REQUEST,
                "query-too-deep",
                "Query too deep",
                self.to_string(),
            )
            .with("depth", *depth)
            .with("limit", *limit),
            Error::QueryTooComplex { complexity, limit } => Problem::new(
                StatusCode::BAD_REQUEST,
                "query-too-complex",
                "Query too complex",
                self.to_string(),
            )
            .with("complexity", *complexity)
            .with("limit", *limit),
            Error::QueryTooLarge {
                what,
                count,
                limit,
                setting,
            } => Problem::new(
                StatusCode::BAD_REQUEST,
                "query-too-large",
                "Query too large",
                self.to_string(),
            )
            .with("counted", *what)
            .with("count", *count)
            .with("limit", *limit)
            .with("setting", *setting),
            Error::AnswerTooLarge { limit } => Problem::new(
                StatusCode::BAD_REQUEST,
                "answer-too-large",
                "Answer too large",
                self.to_string(),
            )
            .with("limit", *limit)
            .with("setting", "GRAPHQL_MAX_ANSWER_VALUES"),
            Error::BodyTooLarge { limit, setting } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                self.to_string(),
            )
            .with("limit", *limit)
            .with("setting", *setting),
            Error::ReadTimedOut => Self::read_timed_out(self),
            Error::Database(e) if timed_out(e) => Self::read_timed_out(&Error::ReadTimedOut),
            Error::Store(e) if matches!(&**e, flowline_event_store::Error::Database(e) if timed_out(e)) => {
                Self::read_timed_out(&Error::ReadTimedOut)
            }
            Error::Request(problem) => problem.clone(),
            Error::Audit(error) => {
                // The broker's words stay in the log, not in the answer.
                tracing::error!(%error, "reading the event log failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log-unavailable",
                    "Event log unavailable",
                    "the event log cannot be read right now; retry later",
                )
                .retry_after(5)
            }
            Error::AuditBusy { limit } => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "audit-busy",
                "Audit busy",
                self.to_string(),
            )
            .with("limit", *limit)
            .retry_after(1),
            Error::PersonalData(_) => {
                tracing::error!(error = %self, "personal data could not be opened");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "personal-data-unavailable",
                    "Personal data keys unavailable",
                    "the answer's personal fields could not be decrypted; retry later",
                )
                .retry_after(1)
            }
            Error::Database(_)
            | Error::Store(_)
            | Error::Graph(_)
            | Error::Startup(_)
            | Error::Access(_) => Problem::internal(self),
        }
    }
}

impl Error {
    fn read_timed_out(error: &Error) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "read-timed-out",
            "Read timed out",
            error.to_string(),
        )
        .with("setting", "QUERY_STATEMENT_TIMEOUT_MS")
        .with("retryable", true)
        .retry_after(1)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}

/// Longest `detail` of an error that may quote what the caller sent: one bad parameter is
/// reported (the first found), and what it quotes is cut here, so an error body stays
/// small whatever the request held.
pub(crate) const MAX_DETAIL_BYTES: usize = 512;

/// `detail` cut to [`MAX_DETAIL_BYTES`].
pub(crate) fn bounded(detail: String) -> String {
    if detail.len() > MAX_DETAIL_BYTES {
        bounded_to(&detail, MAX_DETAIL_BYTES)
    } else {
        detail
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub(crate) fn bounded_to(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
