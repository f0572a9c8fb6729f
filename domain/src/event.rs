//! Events: the facts on the log, and the metadata every one of them carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
}

impl StepKind {
    /// Every kind, in the order the API documents them.
    pub const ALL: [StepKind; 4] = [Self::Llm, Self::McpTool, Self::Template, Self::Http];

    /// The wire name (`llm`, `mcp_tool`, `template`, `http`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::McpTool => "mcp_tool",
            Self::Template => "template",
            Self::Http => "http",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
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
}

impl WorkflowEvent {
    /// The event's type name on the log (also the Avro record name).
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Submitted(_) => "WorkflowSubmitted",
            Self::Cancelled(_) => "WorkflowCancelled",
            Self::SignalReceived(_) => "SignalReceived",
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
