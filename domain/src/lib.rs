//! The workflow domain: the `Workflow` aggregate, the commands it accepts, the events it
//! emits, the validation that guards them, step policies, and the step scheduler's
//! decisions.
//!
//! Nothing here does I/O. The aggregate is a pure function pair — `decide` turns a command
//! into an event against the current state, `apply` folds an event into the state — so it is
//! tested given/when/then without a broker or a database, and every reader of the log
//! (command side, projectors, audit) folds events with the same code.

pub mod accepted;
pub mod aggregate;
pub mod budget;
pub mod change;
pub mod command;
pub mod event;
pub mod llm;
pub mod personal;
pub mod policy;
pub mod schedule;
pub mod usage;
pub mod validation;
pub mod workflow;

pub use aggregate::{Aggregate, Versioned};
pub use change::WorkflowChange;
pub use command::{
    CancelWorkflow, PauseWorkflow, SendSignal, StepCommand, StepSpec, SubmitWorkflow,
    WorkflowCommand,
};
pub use event::{
    EventEnvelope, EventMetadata, SignalReceived, StepDefinition, StepError, StepFailed, StepKind,
    StepRetried, StepSkipped, StepStarted, StepSucceeded, StepTimedOut, WorkflowCancelled,
    WorkflowEvent, WorkflowFailed, WorkflowPaused, WorkflowResumed, WorkflowStarted,
    WorkflowSubmitted, WorkflowSucceeded,
};
pub use policy::{OnFailure, RetryPolicy, StepPolicy};
pub use schedule::{Decision, Plan};
pub use usage::{ModelCall, TokenUsage, UsageSummary};
pub use validation::{FieldError, MAX_FIELD_ERRORS, ValidationErrors};
pub use workflow::{
    Attempt, AttemptOutcome, DomainError, ReceivedSignal, StepState, StepStatus, Workflow,
    WorkflowStatus,
};
