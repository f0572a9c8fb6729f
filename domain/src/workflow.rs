//! The `Workflow` aggregate.

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::command::WorkflowCommand;
use crate::event::{SignalReceived, StepKind, WorkflowCancelled, WorkflowEvent, WorkflowSubmitted};
use crate::validation::ValidationErrors;

/// Lifecycle of a workflow run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Accepted, no step started yet.
    #[default]
    Pending,
    /// At least one step started.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed for good.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

impl WorkflowStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [WorkflowStatus; 5] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// No command changes a run in a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Lifecycle of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies or a worker.
    #[default]
    Pending,
    /// Executing.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully.
    Failed,
    /// Will not run: its workflow was cancelled.
    Cancelled,
}

impl StepStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A step inside the aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Unique within the workflow.
    pub id: String,
    /// What it does.
    pub kind: StepKind,
    /// Steps that must finish first.
    pub depends_on: Vec<String>,
    /// Kind-specific settings.
    pub config: serde_json::Value,
    /// Where it is in its lifecycle.
    pub status: StepStatus,
}

/// The state of one workflow run, as folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// `false` until the `WorkflowSubmitted` event.
    pub submitted: bool,
    /// Human-readable name.
    pub name: String,
    /// Lifecycle status.
    pub status: WorkflowStatus,
    /// The run's input.
    pub input: serde_json::Value,
    /// Steps in submission order.
    pub steps: Vec<StepState>,
    /// Signals received, oldest first.
    pub signals: Vec<SignalReceived>,
    /// Why it was cancelled, if it was and a reason was given.
    pub cancel_reason: Option<String>,
    /// Who submitted it, when known.
    pub submitted_by: Option<String>,
}

/// Why the aggregate refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// The command's fields are invalid.
    #[error("invalid command: {0}")]
    Invalid(#[from] ValidationErrors),
    /// The stream has no workflow yet.
    #[error("workflow not found")]
    NotFound,
    /// A workflow with this id was already submitted.
    #[error("workflow already exists")]
    AlreadyExists,
    /// The command does not fit the workflow's current status.
    #[error("workflow is {}: {action} is not possible", status.as_str())]
    InvalidTransition {
        /// The current status.
        status: WorkflowStatus,
        /// What was attempted.
        action: &'static str,
    },
}

impl Workflow {
    fn require_live(&self, action: &'static str) -> Result<(), DomainError> {
        if !self.submitted {
            return Err(DomainError::NotFound);
        }
        if self.status.is_terminal() {
            return Err(DomainError::InvalidTransition {
                status: self.status,
                action,
            });
        }
        Ok(())
    }
}

impl Aggregate for Workflow {
    type Command = WorkflowCommand;
    type Event = WorkflowEvent;
    type Error = DomainError;

    fn decide(&self, command: &WorkflowCommand) -> Result<WorkflowEvent, DomainError> {
        match command {
            WorkflowCommand::Submit(submit) => {
                if self.submitted {
                    return Err(DomainError::AlreadyExists);
                }
                Ok(WorkflowEvent::Submitted(submit.validate()?))
            }
            WorkflowCommand::Cancel(cancel) => {
                self.require_live("cancel")?;
                let reason = cancel
                    .reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned);
                Ok(WorkflowEvent::Cancelled(WorkflowCancelled { reason }))
            }
            WorkflowCommand::Signal(signal) => {
                signal.validate()?;
                self.require_live("signal")?;
                Ok(WorkflowEvent::SignalReceived(SignalReceived {
                    name: signal.name.clone(),
                    payload: signal.payload.clone(),
                }))
            }
        }
    }

    fn apply(&mut self, event: &WorkflowEvent) {
        match event {
            WorkflowEvent::Submitted(WorkflowSubmitted {
                name,
                input,
                steps,
                submitted_by,
            }) => {
                self.submitted = true;
                self.submitted_by = submitted_by.clone();
                self.name = name.clone();
                self.input = input.clone();
                self.status = WorkflowStatus::Pending;
                self.steps = steps
                    .iter()
                    .map(|step| StepState {
                        id: step.id.clone(),
                        kind: step.kind,
                        depends_on: step.depends_on.clone(),
                        config: step.config.clone(),
                        status: StepStatus::Pending,
                    })
                    .collect();
            }
            WorkflowEvent::Cancelled(WorkflowCancelled { reason }) => {
                self.status = WorkflowStatus::Cancelled;
                self.cancel_reason = reason.clone();
                for step in &mut self.steps {
                    if matches!(step.status, StepStatus::Pending | StepStatus::Running) {
                        step.status = StepStatus::Cancelled;
                    }
                }
            }
            WorkflowEvent::SignalReceived(signal) => self.signals.push(signal.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::aggregate::Versioned;
    use crate::command::{CancelWorkflow, SendSignal, StepSpec, SubmitWorkflow};

    fn step(id: &str, kind: &str, depends_on: &[&str]) -> StepSpec {
        StepSpec {
            id: id.into(),
            kind: kind.into(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            config: None,
        }
    }

    fn submit(steps: Vec<StepSpec>) -> WorkflowCommand {
        WorkflowCommand::Submit(SubmitWorkflow {
            name: "research".into(),
            input: Some(json!({"topic": "rust"})),
            steps,
            submitted_by: Some("ana".into()),
        })
    }

    fn valid_submit() -> WorkflowCommand {
        submit(vec![
            step("fetch", "http", &[]),
            step("summarize", "llm", &["fetch"]),
        ])
    }

    /// given `events`, when `command`: the decided event or the refusal.
    fn given_when(
        events: &[WorkflowEvent],
        command: WorkflowCommand,
    ) -> Result<WorkflowEvent, DomainError> {
        Versioned::<Workflow>::replay(events).state.decide(&command)
    }

    fn submitted() -> WorkflowEvent {
        given_when(&[], valid_submit()).expect("valid submission")
    }

    fn field_errors(result: Result<WorkflowEvent, DomainError>) -> Vec<String> {
        match result {
            Err(DomainError::Invalid(errors)) => errors.0.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn submit_on_an_empty_stream_emits_submitted_with_defaults() {
        let event = submitted();
        let WorkflowEvent::Submitted(submitted) = &event else {
            panic!("got {event:?}")
        };
        assert_eq!(submitted.name, "research");
        assert_eq!(submitted.steps[1].kind, StepKind::Llm);
        assert_eq!(submitted.steps[1].depends_on, vec!["fetch"]);
        assert_eq!(submitted.steps[0].config, json!({}));
        assert_eq!(submitted.submitted_by.as_deref(), Some("ana"));

        let state = Versioned::<Workflow>::replay(&[event]);
        assert_eq!(state.version, 1);
        assert_eq!(state.state.status, WorkflowStatus::Pending);
        assert!(
            state
                .state
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Pending)
        );
    }

    #[test]
    fn submit_twice_is_refused() {
        assert_eq!(
            given_when(&[submitted()], valid_submit()),
            Err(DomainError::AlreadyExists)
        );
    }

    #[test]
    fn every_invalid_field_is_named() {
        let command = WorkflowCommand::Submit(SubmitWorkflow {
            name: "  ".into(),
            input: Some(json!([1])),
            steps: vec![step("a", "http", &["missing"]), step("a", "teleport", &[])],
            submitted_by: None,
        });
        assert_eq!(
            field_errors(given_when(&[], command)),
            vec![
                "name",
                "input",
                "steps[1].id",
                "steps[1].kind",
                "steps[0].depends_on[0]"
            ]
        );
    }

    #[test]
    fn no_steps_is_refused() {
        assert_eq!(field_errors(given_when(&[], submit(vec![]))), vec!["steps"]);
    }

    #[test]
    fn a_dependency_cycle_is_refused_and_described() {
        let result = given_when(
            &[],
            submit(vec![
                step("a", "http", &["c"]),
                step("b", "llm", &["a"]),
                step("c", "template", &["b"]),
                step("d", "mcp_tool", &[]),
            ]),
        );
        let Err(DomainError::Invalid(errors)) = result else {
            panic!("got {result:?}")
        };
        assert_eq!(errors.0[0].field, "steps");
        assert_eq!(errors.0[0].message, "dependency cycle: a -> c -> b -> a");
    }

    #[test]
    fn self_dependency_is_refused() {
        assert_eq!(
            field_errors(given_when(&[], submit(vec![step("a", "http", &["a"])]))),
            vec!["steps[0].depends_on[0]"]
        );
    }

    #[test]
    fn a_long_chain_is_accepted_without_recursion() {
        let steps = (0..1_000)
            .map(|i| {
                let dep = (i > 0).then(|| format!("s{}", i - 1));
                StepSpec {
                    id: format!("s{i}"),
                    kind: "template".into(),
                    depends_on: dep.into_iter().collect(),
                    config: None,
                }
            })
            .collect();
        assert!(given_when(&[], submit(steps)).is_ok());
    }

    #[test]
    fn cancel_marks_the_run_and_its_unfinished_steps() {
        let cancel = WorkflowCommand::Cancel(CancelWorkflow {
            reason: Some(" no longer needed ".into()),
        });
        let event = given_when(&[submitted()], cancel).expect("cancel accepted");
        assert_eq!(
            event,
            WorkflowEvent::Cancelled(WorkflowCancelled {
                reason: Some("no longer needed".into())
            })
        );
        let state = Versioned::<Workflow>::replay(&[submitted(), event]);
        assert_eq!(state.version, 2);
        assert_eq!(state.state.status, WorkflowStatus::Cancelled);
        assert!(
            state
                .state
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Cancelled)
        );
    }

    #[test]
    fn commands_on_a_missing_workflow_are_not_found() {
        let cancel = WorkflowCommand::Cancel(CancelWorkflow::default());
        assert_eq!(given_when(&[], cancel), Err(DomainError::NotFound));
    }

    #[test]
    fn a_cancelled_workflow_takes_no_signal_and_no_second_cancel() {
        let cancelled = WorkflowEvent::Cancelled(WorkflowCancelled { reason: None });
        let signal = WorkflowCommand::Signal(SendSignal {
            name: "approve".into(),
            payload: json!({}),
        });
        assert!(matches!(
            given_when(&[submitted(), cancelled.clone()], signal),
            Err(DomainError::InvalidTransition {
                status: WorkflowStatus::Cancelled,
                ..
            })
        ));
        assert!(matches!(
            given_when(
                &[submitted(), cancelled],
                WorkflowCommand::Cancel(CancelWorkflow::default())
            ),
            Err(DomainError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn a_signal_is_recorded_in_order() {
        let signal = |name: &str| {
            given_when(
                &[submitted()],
                WorkflowCommand::Signal(SendSignal {
                    name: name.into(),
                    payload: json!({"ok": true}),
                }),
            )
            .expect("signal accepted")
        };
        let state =
            Versioned::<Workflow>::replay(&[submitted(), signal("first"), signal("second")]);
        assert_eq!(state.version, 3);
        let names: Vec<_> = state
            .state
            .signals
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, vec!["first", "second"]);
    }

    #[test]
    fn a_signal_name_must_be_an_identifier() {
        let signal = WorkflowCommand::Signal(SendSignal {
            name: "has space".into(),
            payload: json!(null),
        });
        assert_eq!(
            field_errors(given_when(&[submitted()], signal)),
            vec!["name"]
        );
    }
}
