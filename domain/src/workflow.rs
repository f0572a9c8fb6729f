//! The `Workflow` aggregate: a run, its steps and their attempts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::command::{StepCommand, WorkflowCommand};
use crate::event::{
    SignalReceived, StepError, StepFailed, StepKind, StepRetried, StepSkipped, StepStarted,
    StepSucceeded, StepTimedOut, WorkflowCancelled, WorkflowEvent, WorkflowFailed, WorkflowPaused,
    WorkflowResumed, WorkflowStarted, WorkflowSubmitted, WorkflowSucceeded,
};
use crate::usage::UsageSummary;
use crate::validation::ValidationErrors;

/// Lifecycle of a workflow run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Accepted, not yet taken up by the executor.
    #[default]
    Pending,
    /// Its steps are being run.
    Running,
    /// Paused by a caller: running attempts finish, nothing new starts.
    Paused,
    /// Every step succeeded (or failed with `on_failure: continue`, or was skipped).
    Succeeded,
    /// A step failed for good, or the run timed out.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

impl WorkflowStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [WorkflowStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Paused,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// No command but a step retry (of a failed run) changes a run in a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Lifecycle of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies or a worker.
    #[default]
    Pending,
    /// An attempt is executing (or, for a `wait` step, waiting for its signal).
    Running,
    /// An attempt failed; the next one is due at `next_attempt_at`.
    Retrying,
    /// Finished successfully.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Will not run: a step it depends on failed for good.
    Skipped,
    /// Will not run (or was stopped): its run was cancelled or failed.
    Cancelled,
}

impl StepStatus {
    /// Every status.
    pub const ALL: [StepStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether nothing more will happen to the step (unless a caller retries it).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still running.
    #[default]
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed.
    Failed {
        /// Why.
        error: StepError,
    },
    /// Ran past its deadline.
    TimedOut,
    /// Stopped because its run was cancelled or failed.
    Cancelled,
}

impl AttemptOutcome {
    /// The wire name (`running`, `succeeded`, `failed`, `timed_out`, `cancelled`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// The error the attempt ended with, if it ended with one.
    pub fn error(&self) -> Option<StepError> {
        match self {
            Self::Failed { error } => Some(error.clone()),
            Self::TimedOut => Some(StepError::timed_out()),
            _ => None,
        }
    }
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// Unique id (the `Idempotency-Key` of an `http` attempt).
    pub attempt_id: Uuid,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it times out.
    pub deadline: Option<DateTime<Utc>>,
    /// How it ended, so far.
    pub outcome: AttemptOutcome,
    /// What its model calls used and cost, once it ended (none when it called no model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSummary>,
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
    /// Its attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The output of its successful attempt (`null` while kept by reference).
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// The payload table's reference of a large output.
    #[serde(default)]
    pub output_ref: Option<String>,
    /// When the next attempt is due (status `retrying`).
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last failure.
    #[serde(default)]
    pub error: Option<StepError>,
    /// Why it was skipped.
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// Attempts made before a caller last retried the step: its retry policy counts the
    /// attempts after them.
    #[serde(default)]
    pub attempts_before_retry: u32,
}

impl StepState {
    /// The number of `attempt` as the step's retry policy counts it (from the last time a
    /// caller retried the step).
    pub fn policy_attempt(&self, attempt: u32) -> u32 {
        attempt.saturating_sub(self.attempts_before_retry).max(1)
    }

    /// What the model calls of all its attempts used and cost (a failed attempt's calls
    /// were made, and billed, too).
    pub fn usage(&self) -> Option<UsageSummary> {
        UsageSummary::total(self.attempts.iter().filter_map(|a| a.usage.as_ref()))
    }

    /// Attempt `number` (1-based), if the step had it.
    fn attempt_mut(&mut self, number: u32) -> Option<&mut Attempt> {
        self.attempts.iter_mut().rev().find(|a| a.number == number)
    }

    /// The attempt running now, if any.
    pub fn running_attempt(&self) -> Option<&Attempt> {
        self.attempts
            .last()
            .filter(|a| a.outcome == AttemptOutcome::Running)
    }
}

/// A signal the run received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSignal {
    /// Its name.
    pub name: String,
    /// The stream version of its `SignalReceived` event (where its payload is).
    pub version: u64,
    /// Its payload; `None` where a snapshot left it out (no `wait` step can take it any
    /// more): read it from the event at `version` when it is wanted.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub payload: Option<serde_json::Value>,
}

/// A field that is there is `Some`, even when it is JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
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
    pub signals: Vec<ReceivedSignal>,
    /// Why it was cancelled, if it was and a reason was given.
    pub cancel_reason: Option<String>,
    /// Who submitted it, when known.
    pub submitted_by: Option<String>,
    /// The run's timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// When the executor took it up.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it times out.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(default)]
    pub failure: Option<WorkflowFailed>,
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
    /// The workflow has no step of that id.
    #[error("workflow has no step '{0}'")]
    UnknownStep(String),
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
    /// The command does not fit the step's current status.
    #[error("step '{step_id}' is {}: {action} is not possible", status.as_str())]
    InvalidStepTransition {
        /// The step.
        step_id: String,
        /// Its status.
        status: StepStatus,
        /// What was attempted.
        action: &'static str,
    },
    /// An outcome for an attempt that is not the step's running one (a late or duplicate
    /// report): refused, so an attempt's outcome is recorded once.
    #[error("step '{step_id}' has no running attempt {attempt_id}")]
    StaleAttempt {
        /// The step.
        step_id: String,
        /// The reported attempt.
        attempt_id: Uuid,
    },
    /// The run's stream reached the share of its maximum length that callers may fill
    /// (see [`crate::accepted::check_stream_room`]); only cancel is still accepted.
    #[error(
        "the run's stream is at version {version}; callers may grow it to half of its \
         maximum of {max_events} events, so only cancel is still accepted"
    )]
    StreamFull {
        /// The stream's version.
        version: u64,
        /// The stream's maximum length.
        max_events: u64,
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

    fn require_status(
        &self,
        allowed: &[WorkflowStatus],
        action: &'static str,
    ) -> Result<(), DomainError> {
        if !self.submitted {
            return Err(DomainError::NotFound);
        }
        if !allowed.contains(&self.status) {
            return Err(DomainError::InvalidTransition {
                status: self.status,
                action,
            });
        }
        Ok(())
    }

    /// The step of that id.
    pub fn step(&self, step_id: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.id == step_id)
    }

    fn step_mut(&mut self, step_id: &str) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.id == step_id)
    }

    fn known_step(&self, step_id: &str) -> Result<&StepState, DomainError> {
        self.step(step_id)
            .ok_or_else(|| DomainError::UnknownStep(step_id.to_owned()))
    }

    fn decide_step(
        &self,
        step_id: &str,
        command: &StepCommand,
    ) -> Result<WorkflowEvent, DomainError> {
        if !self.submitted {
            return Err(DomainError::NotFound);
        }
        let step = self.known_step(step_id)?;
        let refuse = |action| DomainError::InvalidStepTransition {
            step_id: step_id.to_owned(),
            status: step.status,
            action,
        };
        let running = |attempt_id: &Uuid| {
            step.running_attempt()
                .filter(|a| a.attempt_id == *attempt_id)
                .ok_or_else(|| DomainError::StaleAttempt {
                    step_id: step_id.to_owned(),
                    attempt_id: *attempt_id,
                })
        };
        let step_id = step_id.to_owned();
        match command {
            StepCommand::Start {
                attempt_id,
                input,
                started_at,
                deadline,
            } => {
                self.require_status(&[WorkflowStatus::Running], "starting a step")?;
                if !matches!(step.status, StepStatus::Pending | StepStatus::Retrying) {
                    return Err(refuse("start"));
                }
                let waiting_for = step.depends_on.iter().find(|dependency| {
                    self.step(dependency).map(|d| d.status) != Some(StepStatus::Succeeded)
                });
                if waiting_for.is_some() {
                    return Err(refuse("start before its dependencies succeeded"));
                }
                Ok(WorkflowEvent::StepStarted(StepStarted {
                    step_id,
                    attempt: step.attempts.len() as u32 + 1,
                    attempt_id: *attempt_id,
                    input: input.clone(),
                    started_at: *started_at,
                    deadline: *deadline,
                }))
            }
            StepCommand::Succeed {
                attempt_id,
                output,
                output_ref,
                duration_ms,
                calls,
            } => {
                self.require_live("completing a step")?;
                let attempt = running(attempt_id)?;
                Ok(WorkflowEvent::StepSucceeded(StepSucceeded {
                    step_id,
                    attempt: attempt.number,
                    attempt_id: *attempt_id,
                    output: output.clone(),
                    output_ref: output_ref.clone(),
                    duration_ms: *duration_ms,
                    calls: calls.clone(),
                }))
            }
            StepCommand::Fail {
                attempt_id,
                error,
                retryable,
                next_attempt_at,
                calls,
            } => {
                self.require_live("failing a step")?;
                let attempt = running(attempt_id)?;
                Ok(WorkflowEvent::StepFailed(StepFailed {
                    step_id,
                    attempt: attempt.number,
                    attempt_id: *attempt_id,
                    error: error.clone(),
                    retryable: *retryable,
                    next_attempt_at: *next_attempt_at,
                    calls: calls.clone(),
                }))
            }
            StepCommand::TimeOut {
                attempt_id,
                next_attempt_at,
            } => {
                self.require_live("timing out a step")?;
                let attempt = running(attempt_id)?;
                Ok(WorkflowEvent::StepTimedOut(StepTimedOut {
                    step_id,
                    attempt: attempt.number,
                    attempt_id: *attempt_id,
                    next_attempt_at: *next_attempt_at,
                }))
            }
            StepCommand::Skip { reason } => {
                self.require_live("skipping a step")?;
                if !matches!(step.status, StepStatus::Pending | StepStatus::Retrying) {
                    return Err(refuse("skip"));
                }
                Ok(WorkflowEvent::StepSkipped(StepSkipped {
                    step_id,
                    reason: reason.clone(),
                }))
            }
            StepCommand::Retry => {
                self.require_status(&[WorkflowStatus::Failed], "retrying a step")?;
                if step.status != StepStatus::Failed {
                    return Err(refuse("retry"));
                }
                Ok(WorkflowEvent::StepRetried(StepRetried { step_id }))
            }
        }
    }

    /// Ends the running attempt of `step_id` with `outcome` and moves the step on.
    fn end_attempt(
        &mut self,
        step_id: &str,
        number: u32,
        outcome: AttemptOutcome,
        next_attempt_at: Option<DateTime<Utc>>,
        usage: Option<UsageSummary>,
    ) {
        let Some(step) = self.step_mut(step_id) else {
            return;
        };
        step.error = outcome.error().or_else(|| step.error.take());
        if let Some(attempt) = step.attempt_mut(number) {
            attempt.outcome = outcome;
            if usage.is_some() {
                attempt.usage = usage;
            }
        }
        step.next_attempt_at = next_attempt_at;
        step.status = if next_attempt_at.is_some() {
            StepStatus::Retrying
        } else {
            StepStatus::Failed
        };
    }

    /// What the model calls of all its steps used and cost.
    pub fn usage(&self) -> Option<UsageSummary> {
        UsageSummary::total(
            self.steps
                .iter()
                .flat_map(|step| &step.attempts)
                .filter_map(|attempt| attempt.usage.as_ref()),
        )
    }

    /// The state as a snapshot keeps it: signal payloads only where a `wait` step may still
    /// take them (a name's first arrivals go to its `wait` steps in order, one each, so an
    /// arrival is out of reach once as many of them succeeded, or past their number). The
    /// rest stay in their events, so a snapshot does not grow with every signal's payload.
    pub fn for_snapshot(&self) -> Workflow {
        let mut waits = std::collections::HashMap::<String, (usize, usize)>::new();
        for (step, policy) in self.steps.iter().zip(crate::schedule::policies(self)) {
            if step.kind == StepKind::Wait
                && let Some(signal) = policy.signal
            {
                let (taken, all) = waits.entry(signal).or_default();
                *all += 1;
                if step.status == StepStatus::Succeeded {
                    *taken += 1;
                }
            }
        }
        let mut snapshot = self.clone();
        let mut arrived = std::collections::HashMap::<&str, usize>::new();
        for (signal, kept) in self.signals.iter().zip(&mut snapshot.signals) {
            let index = arrived.entry(signal.name.as_str()).or_default();
            let (taken, all) = waits.get(&signal.name).copied().unwrap_or_default();
            if !(taken..all).contains(&*index) {
                kept.payload = None;
            }
            *index += 1;
        }
        snapshot
    }

    /// The stream versions of the signals whose payload this state does not hold.
    pub fn signals_without_payload(&self) -> Vec<u64> {
        self.signals
            .iter()
            .filter(|s| s.payload.is_none())
            .map(|s| s.version)
            .collect()
    }

    /// Puts back the payload of the signal received at stream `version`.
    pub fn restore_signal_payload(&mut self, version: u64, payload: serde_json::Value) {
        if let Some(signal) = self.signals.iter_mut().find(|s| s.version == version) {
            signal.payload = Some(payload);
        }
    }

    /// Marks every unfinished step cancelled and stops its running attempt.
    fn stop_unfinished_steps(&mut self) {
        for step in &mut self.steps {
            if !step.status.is_finished() {
                step.status = StepStatus::Cancelled;
                step.next_attempt_at = None;
                if let Some(attempt) = step.attempts.last_mut()
                    && attempt.outcome == AttemptOutcome::Running
                {
                    attempt.outcome = AttemptOutcome::Cancelled;
                }
            }
        }
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
                cancel.validate()?;
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
            WorkflowCommand::Pause(pause) => {
                pause.validate()?;
                self.require_status(&[WorkflowStatus::Pending, WorkflowStatus::Running], "pause")?;
                let reason = pause
                    .reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned);
                Ok(WorkflowEvent::Paused(WorkflowPaused { reason }))
            }
            WorkflowCommand::Resume => {
                self.require_status(&[WorkflowStatus::Paused], "resume")?;
                Ok(WorkflowEvent::Resumed(WorkflowResumed {}))
            }
            WorkflowCommand::Start { started_at } => {
                self.require_status(&[WorkflowStatus::Pending], "start")?;
                Ok(WorkflowEvent::Started(WorkflowStarted {
                    started_at: *started_at,
                    deadline: crate::policy::deadline(
                        *started_at,
                        self.timeout_ms.map(std::time::Duration::from_millis),
                    ),
                }))
            }
            WorkflowCommand::Step { step_id, command } => self.decide_step(step_id, command),
            WorkflowCommand::Succeed => {
                self.require_status(&[WorkflowStatus::Running], "succeed")?;
                if let Some(step) = self.steps.iter().find(|s| !s.status.is_finished()) {
                    return Err(DomainError::InvalidStepTransition {
                        step_id: step.id.clone(),
                        status: step.status,
                        action: "finishing the run",
                    });
                }
                Ok(WorkflowEvent::Succeeded(WorkflowSucceeded {}))
            }
            WorkflowCommand::Fail { reason, step_id } => {
                self.require_live("fail")?;
                Ok(WorkflowEvent::Failed(WorkflowFailed {
                    reason: reason.clone(),
                    step_id: step_id.clone(),
                }))
            }
        }
    }

    fn apply(&mut self, event: &WorkflowEvent) {
        self.apply_at(event, 0);
    }

    fn apply_at(&mut self, event: &WorkflowEvent, version: u64) {
        match event {
            WorkflowEvent::Submitted(WorkflowSubmitted {
                name,
                input,
                steps,
                submitted_by,
                timeout_ms,
            }) => {
                self.submitted = true;
                self.submitted_by = submitted_by.clone();
                self.name = name.clone();
                self.input = input.clone();
                self.timeout_ms = *timeout_ms;
                self.status = WorkflowStatus::Pending;
                self.steps = steps
                    .iter()
                    .map(|step| StepState {
                        id: step.id.clone(),
                        kind: step.kind,
                        depends_on: step.depends_on.clone(),
                        config: step.config.clone(),
                        status: StepStatus::Pending,
                        attempts: Vec::new(),
                        output: None,
                        output_ref: None,
                        next_attempt_at: None,
                        error: None,
                        skip_reason: None,
                        attempts_before_retry: 0,
                    })
                    .collect();
            }
            WorkflowEvent::Cancelled(WorkflowCancelled { reason }) => {
                self.status = WorkflowStatus::Cancelled;
                self.cancel_reason = reason.clone();
                self.stop_unfinished_steps();
            }
            WorkflowEvent::SignalReceived(SignalReceived { name, payload }) => {
                self.signals.push(ReceivedSignal {
                    name: name.clone(),
                    version,
                    payload: Some(payload.clone()),
                });
            }
            WorkflowEvent::Started(started) => {
                self.status = WorkflowStatus::Running;
                self.started_at = Some(started.started_at);
                self.deadline = started.deadline;
            }
            WorkflowEvent::StepStarted(started) => {
                if let Some(step) = self.step_mut(&started.step_id) {
                    step.status = StepStatus::Running;
                    step.next_attempt_at = None;
                    step.attempts.push(Attempt {
                        number: started.attempt,
                        attempt_id: started.attempt_id,
                        started_at: started.started_at,
                        deadline: started.deadline,
                        outcome: AttemptOutcome::Running,
                        usage: None,
                    });
                }
            }
            WorkflowEvent::StepSucceeded(succeeded) => {
                if let Some(step) = self.step_mut(&succeeded.step_id) {
                    step.status = StepStatus::Succeeded;
                    step.output = Some(succeeded.output.clone());
                    step.output_ref = succeeded.output_ref.clone();
                    step.next_attempt_at = None;
                    if let Some(attempt) = step.attempt_mut(succeeded.attempt) {
                        attempt.outcome = AttemptOutcome::Succeeded;
                        attempt.usage = UsageSummary::of(&succeeded.calls);
                    }
                }
            }
            WorkflowEvent::StepFailed(failed) => self.end_attempt(
                &failed.step_id,
                failed.attempt,
                AttemptOutcome::Failed {
                    error: failed.error.clone(),
                },
                failed.next_attempt_at,
                UsageSummary::of(&failed.calls),
            ),
            WorkflowEvent::StepTimedOut(timed_out) => self.end_attempt(
                &timed_out.step_id,
                timed_out.attempt,
                AttemptOutcome::TimedOut,
                timed_out.next_attempt_at,
                None,
            ),
            WorkflowEvent::StepSkipped(skipped) => {
                if let Some(step) = self.step_mut(&skipped.step_id) {
                    step.status = StepStatus::Skipped;
                    step.next_attempt_at = None;
                    step.skip_reason = Some(skipped.reason.clone());
                }
            }
            WorkflowEvent::StepRetried(retried) => {
                self.status = WorkflowStatus::Running;
                self.failure = None;
                // The run's timeout ran from its first start; a caller retrying a failed
                // run (perhaps one that timed out) takes responsibility for it from here.
                self.deadline = None;
                if let Some(step) = self.step_mut(&retried.step_id) {
                    step.attempts_before_retry = step.attempts.len() as u32;
                }
                for step in &mut self.steps {
                    // The retried step and whatever the run's failure stopped go again.
                    if step.id == retried.step_id || step.status == StepStatus::Cancelled {
                        step.status = StepStatus::Pending;
                        step.next_attempt_at = None;
                    }
                }
            }
            WorkflowEvent::Succeeded(WorkflowSucceeded {}) => {
                self.status = WorkflowStatus::Succeeded;
            }
            WorkflowEvent::Failed(failed) => {
                self.status = WorkflowStatus::Failed;
                self.failure = Some(failed.clone());
                self.stop_unfinished_steps();
            }
            WorkflowEvent::Paused(WorkflowPaused { .. }) => self.status = WorkflowStatus::Paused,
            WorkflowEvent::Resumed(WorkflowResumed {}) => {
                self.status = if self.started_at.is_some() {
                    WorkflowStatus::Running
                } else {
                    WorkflowStatus::Pending
                };
            }
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
            timeout: None,
            subject: None,
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

    /// given `events`, when `command`: the decided event checked for room in a stream of
    /// at most `max_events`.
    fn given_when_within(
        events: &[WorkflowEvent],
        command: WorkflowCommand,
        max_events: u64,
    ) -> Result<WorkflowEvent, DomainError> {
        let state = Versioned::<Workflow>::replay(events);
        let event = state.state.decide(&command)?;
        crate::accepted::check_stream_room(&event, state.version, max_events)?;
        Ok(event)
    }

    fn signal(name: &str, payload: serde_json::Value) -> WorkflowCommand {
        WorkflowCommand::Signal(SendSignal {
            name: name.into(),
            payload,
        })
    }

    #[test]
    fn every_command_body_is_held_to_the_accepted_language() {
        let deep = (0..33).fold(json!(1), |inner, _| json!([inner]));
        assert_eq!(
            field_errors(given_when(&[submitted()], signal("s", json!({"a": deep})))),
            [format!("payload.a{}", "[0]".repeat(31))]
        );
        let WorkflowCommand::Submit(mut nul) = valid_submit() else {
            unreachable!()
        };
        nul.input = Some(json!({"a": {"b": "\u{0}"}}));
        nul.steps[1].config = Some(json!({"model": "m".repeat(201)}));
        assert_eq!(
            field_errors(given_when(&[], WorkflowCommand::Submit(nul))),
            ["input.a.b", "steps[1].config.model"]
        );
        let reason = Some("\u{0}".to_owned());
        assert_eq!(
            field_errors(given_when(
                &[submitted()],
                WorkflowCommand::Cancel(CancelWorkflow { reason })
            )),
            ["reason"]
        );
    }

    #[test]
    fn callers_fill_half_a_stream_then_only_cancel_is_accepted() {
        // 2 steps of 3 attempts: 4 + 2 × 6 = 16 events at worst.
        assert!(given_when_within(&[], valid_submit(), 32).is_ok());
        assert_eq!(
            field_errors(given_when_within(&[], valid_submit(), 31)),
            ["steps"]
        );
        let mut events = vec![submitted()];
        while events.len() < 16 {
            events.push(given_when_within(&events, signal("s", json!({})), 32).expect("room"));
        }
        assert!(matches!(
            given_when_within(&events, signal("s", json!({})), 32),
            Err(DomainError::StreamFull {
                version: 16,
                max_events: 32
            })
        ));
        assert!(
            given_when_within(
                &events,
                WorkflowCommand::Cancel(CancelWorkflow::default()),
                32
            )
            .is_ok()
        );
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
            timeout: None,
            subject: None,
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
                StepSpec {
                    config: Some(json!({"server": "web", "tool": "search"})),
                    ..step("d", "mcp_tool", &[])
                },
            ]),
        );
        let Err(DomainError::Invalid(errors)) = result else {
            panic!("got {result:?}")
        };
        assert_eq!(errors.0[0].field, "steps");
        assert_eq!(errors.0[0].message, "dependency cycle: a -> c -> b -> a");
    }

    #[test]
    fn an_mcp_tool_step_needs_its_server_and_tool_and_object_arguments() {
        let refused = |config: serde_json::Value| {
            field_errors(given_when(
                &[],
                submit(vec![StepSpec {
                    config: Some(config),
                    ..step("call", "mcp_tool", &[])
                }]),
            ))
        };
        assert_eq!(
            refused(json!({"arguments": {"q": "x"}})),
            vec!["steps[0].config.server", "steps[0].config.tool"]
        );
        assert_eq!(
            refused(json!({"server": "web", "tool": 7})),
            vec!["steps[0].config.tool"]
        );
        assert_eq!(
            refused(json!({"server": "web", "tool": "search", "arguments": "q=x"})),
            vec!["steps[0].config.arguments"]
        );
        let accepted = given_when(
            &[],
            submit(vec![StepSpec {
                config: Some(json!({"server": "{{ input.server }}", "tool": "search",
                                    "arguments": {"q": "{{ input.topic }}"}})),
                ..step("call", "mcp_tool", &[])
            }]),
        );
        assert!(accepted.is_ok(), "{accepted:?}");
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

    #[test]
    fn a_snapshot_keeps_only_the_signal_payloads_a_wait_step_may_still_take() {
        let wait = StepSpec {
            id: "approval".into(),
            kind: "wait".into(),
            depends_on: vec![],
            config: Some(json!({"signal": "approve"})),
        };
        let submitted = given_when(&[], submit(vec![wait])).expect("valid submission");
        let signal = |name: &str, payload: serde_json::Value| {
            WorkflowEvent::SignalReceived(SignalReceived {
                name: name.into(),
                payload,
            })
        };
        let events = [
            submitted,
            signal("noise", json!({"n": 1})),
            signal("approve", json!(null)),
            signal("approve", json!({"n": 3})),
            signal("noise", json!({"n": 4})),
        ];
        let state = Versioned::<Workflow>::replay(&events);
        let snapshot: Workflow =
            serde_json::from_value(serde_json::to_value(state.state.for_snapshot()).unwrap())
                .unwrap();
        let kept: Vec<_> = snapshot
            .signals
            .iter()
            .map(|s| (s.name.as_str(), s.version, s.payload.clone()))
            .collect();
        // Only the first "approve" can still go to the one wait step (a JSON null included).
        assert_eq!(
            kept,
            vec![
                ("noise", 2, None),
                ("approve", 3, Some(json!(null))),
                ("approve", 4, None),
                ("noise", 5, None),
            ]
        );
        assert_eq!(snapshot.signals_without_payload(), vec![2, 4, 5]);
        // A read puts the others back from their events.
        let mut restored = snapshot;
        for version in restored.signals_without_payload() {
            if let WorkflowEvent::SignalReceived(signal) = &events[version as usize - 1] {
                restored.restore_signal_payload(version, signal.payload.clone());
            }
        }
        assert_eq!(restored.signals, state.state.signals);
    }

    #[test]
    fn a_steps_usage_sums_every_attempts_model_calls_and_survives_a_snapshot() {
        use crate::usage::{ModelCall, TokenUsage};
        let call = |input, cost: &str| ModelCall {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            called_at: Utc::now(),
            usage: TokenUsage {
                input_tokens: input,
                output_tokens: 7,
                ..TokenUsage::default()
            },
            cost_usd: Some(cost.parse().expect("a decimal")),
            price_ref: None,
            complete: true,
        };
        let on = |step: &str, command| WorkflowCommand::Step {
            step_id: step.into(),
            command,
        };
        let start = |attempt_id| StepCommand::Start {
            attempt_id,
            input: json!({}),
            started_at: Utc::now(),
            deadline: None,
        };
        let succeed = |attempt_id, calls| StepCommand::Succeed {
            attempt_id,
            output: json!("done"),
            output_ref: None,
            duration_ms: 3,
            calls,
        };
        let (fetch, first, second) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut run = Versioned::<Workflow>::replay(&[submitted()]);
        for command in [
            WorkflowCommand::Start {
                started_at: Utc::now(),
            },
            on("fetch", start(fetch)),
            on("fetch", succeed(fetch, vec![])),
            on("summarize", start(first)),
            on(
                "summarize",
                StepCommand::Fail {
                    attempt_id: first,
                    error: StepError {
                        kind: "http_status".into(),
                        message: "503".into(),
                    },
                    retryable: true,
                    next_attempt_at: Some(Utc::now()),
                    calls: vec![call(100, "0.25")],
                },
            ),
            on("summarize", start(second)),
            on(
                "summarize",
                succeed(second, vec![call(10, "0.5"), call(1, "0.000001")]),
            ),
        ] {
            let event = run.state.decide(&command).expect("accepted");
            run.apply(&event);
        }
        let step = &run.state.steps[1];
        assert_eq!(
            step.attempts[0].usage.as_ref().map(|u| u.model_calls),
            Some(1)
        );
        let usage = step.usage().expect("model calls were made");
        assert_eq!(usage.model_calls, 3);
        assert_eq!(usage.tokens.input_tokens, 111);
        assert_eq!(usage.tokens.output_tokens, 21);
        assert_eq!(usage.cost_usd.to_string(), "0.750001");
        assert_eq!(run.state.steps[0].usage(), None, "no model, no usage");
        let snapshot = serde_json::to_value(run.state.for_snapshot()).expect("serialises");
        let restored: Workflow = serde_json::from_value(snapshot).expect("reads back");
        assert_eq!(restored.steps[1].usage(), Some(usage));
    }
}
