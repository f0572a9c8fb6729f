//! What an event changes in the graph.

use flowline_domain::{EventEnvelope, StepKind, WorkflowEvent};
use serde::Serialize;
use uuid::Uuid;

/// A step as a graph node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepNode {
    /// Step id within its run.
    pub id: String,
    /// Step kind (`llm`, …).
    pub kind: String,
    /// Steps it depends on.
    pub depends_on: Vec<String>,
    /// The tool it calls (`mcp_tool` steps: `config.server/config.tool`, or `config.tool`).
    pub tool: Option<String>,
    /// The model it uses (`llm` steps: `config.model`).
    pub model: Option<String>,
}

/// What happened to a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RunChange {
    /// The run and its step graph appeared.
    Submitted {
        /// Run name.
        name: String,
        /// Steps.
        steps: Vec<StepNode>,
        /// Who submitted it.
        submitted_by: Option<String>,
    },
    /// The run's status changed.
    Status(String),
    /// Nothing the graph shows changed, but the run's version moved on.
    Touched,
}

/// One event's effect on the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphChange {
    /// Tenant of the run.
    pub tenant: String,
    /// The run.
    pub run: Uuid,
    /// The event's stream version (the guard against replays of older events).
    pub version: u64,
    /// What changed.
    pub change: RunChange,
}

/// External ids of nodes. Tools, models and principals are per tenant.
pub mod xid {
    use uuid::Uuid;

    /// A run.
    pub fn run(run: Uuid) -> String {
        format!("run:{run}")
    }
    /// A step of a run.
    pub fn step(run: Uuid, step: &str) -> String {
        format!("step:{run}/{step}")
    }
    /// A tool.
    pub fn tool(tenant: &str, tool: &str) -> String {
        format!("tool:{tenant}/{tool}")
    }
    /// A model.
    pub fn model(tenant: &str, model: &str) -> String {
        format!("model:{tenant}/{model}")
    }
    /// A principal.
    pub fn principal(tenant: &str, principal: &str) -> String {
        format!("principal:{tenant}/{principal}")
    }
}

fn text(config: &serde_json::Value, key: &str) -> Option<String> {
    config.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

/// The tool a step calls: `mcp_tool` steps name it `config.server/config.tool` (or just
/// `config.tool`); other kinds call none.
pub fn tool_of(kind: StepKind, config: &serde_json::Value) -> Option<String> {
    if kind != StepKind::McpTool {
        return None;
    }
    match (text(config, "server"), text(config, "tool")) {
        (Some(server), Some(tool)) => Some(format!("{server}/{tool}")),
        (None, Some(tool)) => Some(tool),
        _ => None,
    }
}

/// The model a step uses: `llm` steps name it `config.model`.
pub fn model_of(kind: StepKind, config: &serde_json::Value) -> Option<String> {
    (kind == StepKind::Llm)
        .then(|| text(config, "model"))
        .flatten()
}

impl GraphChange {
    /// The graph change of an event.
    pub fn of(envelope: &EventEnvelope) -> Self {
        let metadata = &envelope.metadata;
        let change = match &envelope.event {
            WorkflowEvent::Submitted(submitted) => RunChange::Submitted {
                name: submitted.name.clone(),
                submitted_by: submitted.submitted_by.clone(),
                steps: submitted
                    .steps
                    .iter()
                    .map(|step| StepNode {
                        id: step.id.clone(),
                        kind: step.kind.as_str().to_owned(),
                        depends_on: step.depends_on.clone(),
                        tool: tool_of(step.kind, &step.config),
                        model: model_of(step.kind, &step.config),
                    })
                    .collect(),
            },
            WorkflowEvent::Cancelled(_) => RunChange::Status("cancelled".into()),
            WorkflowEvent::SignalReceived(_) => RunChange::Touched,
        };
        Self {
            tenant: metadata.tenant.clone(),
            run: metadata.stream_id,
            version: metadata.stream_version,
            change,
        }
    }
}
