//! What an event changes in the graph.

use flowline_domain::{EventEnvelope, StepKind, StepStatus, WorkflowEvent, WorkflowStatus};
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
    /// The run and its step graph appeared (every step `pending`).
    Submitted {
        /// Run name.
        name: String,
        /// Steps.
        steps: Vec<StepNode>,
        /// Who submitted it.
        submitted_by: Option<String>,
    },
    /// The run's status changed, and nothing else.
    Status(String),
    /// The executor took the run up: `running`, and remembered as started (see
    /// [`RunChange::Resumed`]).
    Started,
    /// The run ended badly (`failed` or `cancelled`): every step not finished yet
    /// (`pending`, `running`, `retrying`) becomes `cancelled`.
    Stopped(String),
    /// A step's status changed.
    StepStatus {
        /// The step id.
        step: String,
        /// Its new status.
        status: String,
    },
    /// A failed step of a failed run is tried again: the run is `running`, the step and
    /// every `cancelled` step are `pending`.
    StepRetried {
        /// The step id.
        step: String,
    },
    /// A paused run goes on: `running` if it had started, else `pending` (as the
    /// aggregate decides; the event does not say which).
    Resumed,
    /// Nothing the graph shows changed, but the run's version moved on.
    Touched,
}

/// Step statuses after which nothing happens to a step unless a caller retries it: a
/// stopped run leaves these as they are.
pub(crate) fn finished_step_statuses() -> Vec<&'static str> {
    StepStatus::ALL
        .into_iter()
        .filter(|status| status.is_finished())
        .map(StepStatus::as_str)
        .collect()
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
    /// A principal. An encrypted `submitted_by` (ADR 26) is a new ciphertext on every
    /// run, so its node is named by the data key instead: one node per subject key, which
    /// groups a principal's runs without naming the principal, and whose name (the
    /// ciphertext) reads as erased once the key is destroyed.
    pub fn principal(tenant: &str, principal: &str) -> String {
        match flowline_domain::personal::Envelope::parse(principal) {
            Some(envelope) => format!("principal:{tenant}/key:{}", envelope.key_id.simple()),
            None => format!("principal:{tenant}/{principal}"),
        }
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

fn step_status(step: &str, status: StepStatus) -> RunChange {
    RunChange::StepStatus {
        step: step.to_owned(),
        status: status.as_str().to_owned(),
    }
}

/// A failed or timed-out attempt leaves its step `retrying` when another one is due, else
/// `failed` (as the aggregate's `apply`).
fn after_failure(retry_due: bool) -> StepStatus {
    if retry_due {
        StepStatus::Retrying
    } else {
        StepStatus::Failed
    }
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
            WorkflowEvent::Cancelled(_) => {
                RunChange::Stopped(WorkflowStatus::Cancelled.as_str().into())
            }
            WorkflowEvent::Failed(_) => RunChange::Stopped(WorkflowStatus::Failed.as_str().into()),
            WorkflowEvent::SignalReceived(_) => RunChange::Touched,
            WorkflowEvent::Started(_) => RunChange::Started,
            WorkflowEvent::Succeeded(_) => {
                RunChange::Status(WorkflowStatus::Succeeded.as_str().into())
            }
            WorkflowEvent::Paused(_) => RunChange::Status(WorkflowStatus::Paused.as_str().into()),
            WorkflowEvent::Resumed(_) => RunChange::Resumed,
            WorkflowEvent::StepRetried(retried) => RunChange::StepRetried {
                step: retried.step_id.clone(),
            },
            WorkflowEvent::StepStarted(started) => {
                step_status(&started.step_id, StepStatus::Running)
            }
            WorkflowEvent::StepSucceeded(succeeded) => {
                step_status(&succeeded.step_id, StepStatus::Succeeded)
            }
            WorkflowEvent::StepFailed(failed) => step_status(
                &failed.step_id,
                after_failure(failed.next_attempt_at.is_some()),
            ),
            WorkflowEvent::StepTimedOut(timed_out) => step_status(
                &timed_out.step_id,
                after_failure(timed_out.next_attempt_at.is_some()),
            ),
            WorkflowEvent::StepSkipped(skipped) => {
                step_status(&skipped.step_id, StepStatus::Skipped)
            }
        };
        Self {
            tenant: metadata.tenant.clone(),
            run: metadata.stream_id,
            version: metadata.stream_version,
            change,
        }
    }
}
