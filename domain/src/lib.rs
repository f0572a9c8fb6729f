//! The workflow domain: the `Workflow` aggregate, the commands it accepts, the events it
//! emits, and the validation that guards them.
//!
//! Nothing here does I/O. The aggregate is a pure function pair — `decide` turns a command
//! into an event against the current state, `apply` folds an event into the state — so it is
//! tested given/when/then without a broker or a database, and every reader of the log
//! (command side, projectors, audit) folds events with the same code.

pub mod aggregate;
pub mod change;
pub mod command;
pub mod event;
pub mod validation;
pub mod workflow;

pub use aggregate::{Aggregate, Versioned};
pub use change::WorkflowChange;
pub use command::{CancelWorkflow, SendSignal, StepSpec, SubmitWorkflow, WorkflowCommand};
pub use event::{
    EventEnvelope, EventMetadata, SignalReceived, StepDefinition, StepKind, WorkflowCancelled,
    WorkflowEvent, WorkflowSubmitted,
};
pub use validation::{FieldError, ValidationErrors};
pub use workflow::{DomainError, StepState, StepStatus, Workflow, WorkflowStatus};
