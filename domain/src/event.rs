//! Events: the facts on the log, and the metadata every one of them carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::usage::ModelCall;

/// What kind of work a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A call to a language model.
    Llm,
    /// A tool call on an MCP server.
    McpTool,
    /// Rendering a text template.
    Template,
    /// An HTTP request.
    Http,
    /// Waiting for a named signal (human in the loop).
    Wait,
}

impl StepKind {
    /// Every kind, in the order the API documents them.
    pub const ALL: [StepKind; 5] = [
        Self::Llm,
        Self::McpTool,
        Self::Template,
        Self::Http,
        Self::Wait,
    ];

    /// The wire name (`llm`, `mcp_tool`, `template`, `http`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::McpTool => "mcp_tool",
            Self::Template => "template",
            Self::Http => "http",
            Self::Wait => "wait",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether its attempts stream live output (model text, tool progress) before their
    /// outcome, and mark its end on the live channel.
    pub fn streams_live_output(self) -> bool {
        matches!(self, Self::Llm | Self::McpTool)
    }
}

/// A validated step of a submitted workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    /// Unique within its workflow.
    pub id: String,
    /// What the step does.
    pub kind: StepKind,
    /// Ids of the steps that must finish first.
    pub depends_on: Vec<String>,
    /// Kind-specific settings, opaque to the engine's core.
    pub config: serde_json::Value,
}

/// A workflow was accepted for execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSubmitted {
    /// Human-readable name.
    pub name: String,
    /// The run's input document.
    pub input: serde_json::Value,
    /// The step graph, in submission order.
    pub steps: Vec<StepDefinition>,
    /// The principal that submitted it, when known (recorded since schema v2).
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// The run's own timeout in milliseconds, from start to end (recorded since schema v3).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A workflow was cancelled; steps not yet finished will not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCancelled {
    /// Why, if the caller said.
    pub reason: Option<String>,
}

/// An external signal was delivered to a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReceived {
    /// The signal's name (from the URL).
    pub name: String,
    /// The signal's JSON payload.
    pub payload: serde_json::Value,
}

/// The executor took up the run: its steps start from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStarted {
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run times out, if it has a timeout.
    pub deadline: Option<DateTime<Utc>>,
}

/// An attempt of a step started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStarted {
    /// The step.
    pub step_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Unique id of this attempt (sent to HTTP servers as `Idempotency-Key`).
    pub attempt_id: Uuid,
    /// The step's config with every template string rendered: what the attempt runs with.
    pub input: serde_json::Value,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When the attempt times out, if it has a timeout.
    pub deadline: Option<DateTime<Utc>>,
}

/// An attempt of a step succeeded; the step is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSucceeded {
    /// The step.
    pub step_id: String,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// Its id.
    pub attempt_id: Uuid,
    /// The output, when small enough to travel with the event (else `null`).
    pub output: serde_json::Value,
    /// `sha256:<hex>` of an output kept in the payload table instead of on the event.
    pub output_ref: Option<String>,
    /// How long the attempt ran, in milliseconds.
    pub duration_ms: u64,
    /// The model calls the attempt made, with their usage and cost (`llm` steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ModelCall>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// A stable, machine-readable kind (`http_status`, `timed_out`, `undefined_reference`…).
    pub kind: String,
    /// For a person.
    pub message: String,
}

impl StepError {
    /// What a timed-out attempt leaves on its step (its event carries no error).
    pub fn timed_out() -> Self {
        Self {
            kind: "timed_out".into(),
            message: "the attempt ran past its timeout".into(),
        }
    }
}

/// An attempt of a step failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailed {
    /// The step.
    pub step_id: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// Its id.
    pub attempt_id: Uuid,
    /// Why.
    pub error: StepError,
    /// Whether the failure itself allows another try (a 503 does, a 400 does not).
    pub retryable: bool,
    /// When the next attempt is due; `None`: the step failed for good.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The model calls the attempt made before it failed, with what they used and cost
    /// (a call cut short is billed for the tokens that were received).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ModelCall>,
}

/// An attempt of a step ran past its timeout (or a wait step's signal did not come).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTimedOut {
    /// The step.
    pub step_id: String,
    /// The attempt.
    pub attempt: u32,
    /// Its id.
    pub attempt_id: Uuid,
    /// When the next attempt is due; `None`: the step failed for good.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A step will not run: a step it depends on failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSkipped {
    /// The step.
    pub step_id: String,
    /// Why.
    pub reason: String,
}

/// A caller asked a failed step of a failed run to run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRetried {
    /// The step.
    pub step_id: String,
}

/// Every step finished and the run succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSucceeded {}

/// The run failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowFailed {
    /// Why, for a person.
    pub reason: String,
    /// The step whose failure failed the run, if a step did.
    pub step_id: Option<String>,
}

/// A caller paused the run: running attempts finish, nothing new starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowPaused {
    /// Why, if the caller said.
    pub reason: Option<String>,
}

/// A caller resumed a paused run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowResumed {}

/// Every event of the `Workflow` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkflowEvent {
    /// See [`WorkflowSubmitted`].
    Submitted(WorkflowSubmitted),
    /// See [`WorkflowCancelled`].
    Cancelled(WorkflowCancelled),
    /// See [`SignalReceived`].
    SignalReceived(SignalReceived),
    /// See [`WorkflowStarted`].
    Started(WorkflowStarted),
    /// See [`StepStarted`].
    StepStarted(StepStarted),
    /// See [`StepSucceeded`].
    StepSucceeded(StepSucceeded),
    /// See [`StepFailed`].
    StepFailed(StepFailed),
    /// See [`StepTimedOut`].
    StepTimedOut(StepTimedOut),
    /// See [`StepSkipped`].
    StepSkipped(StepSkipped),
    /// See [`StepRetried`].
    StepRetried(StepRetried),
    /// See [`WorkflowSucceeded`].
    Succeeded(WorkflowSucceeded),
    /// See [`WorkflowFailed`].
    Failed(WorkflowFailed),
    /// See [`WorkflowPaused`].
    Paused(WorkflowPaused),
    /// See [`WorkflowResumed`].
    Resumed(WorkflowResumed),
}

impl WorkflowEvent {
    /// The event's type name on the log (also the Avro record name).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Submitted(_) => "WorkflowSubmitted",
            Self::Cancelled(_) => "WorkflowCancelled",
            Self::SignalReceived(_) => "SignalReceived",
            Self::Started(_) => "WorkflowStarted",
            Self::StepStarted(_) => "StepStarted",
            Self::StepSucceeded(_) => "StepSucceeded",
            Self::StepFailed(_) => "StepFailed",
            Self::StepTimedOut(_) => "StepTimedOut",
            Self::StepSkipped(_) => "StepSkipped",
            Self::StepRetried(_) => "StepRetried",
            Self::Succeeded(_) => "WorkflowSucceeded",
            Self::Failed(_) => "WorkflowFailed",
            Self::Paused(_) => "WorkflowPaused",
            Self::Resumed(_) => "WorkflowResumed",
        }
    }

    /// The step an event is about, for step-level events.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            Self::StepStarted(e) => Some(&e.step_id),
            Self::StepSucceeded(e) => Some(&e.step_id),
            Self::StepFailed(e) => Some(&e.step_id),
            Self::StepTimedOut(e) => Some(&e.step_id),
            Self::StepSkipped(e) => Some(&e.step_id),
            Self::StepRetried(e) => Some(&e.step_id),
            _ => None,
        }
    }
}

/// What every event carries besides its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// The tenant owning the stream.
    pub tenant: String,
    /// The stream (aggregate) id; also the Kafka record key.
    pub stream_id: Uuid,
    /// 1-based position of the event within its stream.
    pub stream_version: u64,
    /// When the command was decided.
    pub occurred_at: DateTime<Utc>,
    /// The command that produced the event (idempotency: one command, one event).
    pub command_id: Uuid,
    /// The conversation the command belongs to.
    pub correlation_id: Uuid,
    /// The message that caused the command (the command itself for external requests).
    pub causation_id: Uuid,
    /// W3C `traceparent` of the request that decided the event.
    pub traceparent: Option<String>,
    /// W3C `tracestate`, when the caller sent one.
    pub tracestate: Option<String>,
}

/// An event with its metadata: the unit stored and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Identity, position and provenance.
    pub metadata: EventMetadata,
    /// The fact itself.
    pub event: WorkflowEvent,
}
