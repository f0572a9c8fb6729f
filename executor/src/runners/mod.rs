//! Step runners: one port per step kind. The executor hands an attempt its rendered input
//! and gets back an output or a classified failure, each with the model calls the attempt
//! made; runners know nothing of events, retries or timers (the attempt's deadline is
//! enforced by dropping its future, so a runner that has usage to report on a slow call
//! ends it itself a little before the deadline).

pub mod http;
pub mod llm;
pub mod mcp_tool;
pub mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowline_domain::{ModelCall, StepKind};
use futures::future::BoxFuture;
use serde_json::Value;
use uuid::Uuid;

use crate::live::LiveSink;

/// What an attempt runs with.
#[derive(Debug, Clone)]
pub struct AttemptInput {
    /// The run.
    pub workflow_id: Uuid,
    /// Its tenant.
    pub tenant: String,
    /// The step.
    pub step_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Unique per attempt (the `Idempotency-Key` of an HTTP attempt).
    pub attempt_id: Uuid,
    /// The step's config with its templates rendered.
    pub input: Value,
    /// When the executor stops waiting for it.
    pub deadline: Option<DateTime<Utc>>,
    /// Whether the step's retry policy allows no attempt after this one (an `llm` step
    /// falls back to other models only then).
    pub last_attempt: bool,
    /// Where its live output (streamed text, progress) goes.
    pub live: LiveSink,
}

/// What a successful attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The step's output.
    pub value: Value,
    /// The model calls made to produce it.
    pub calls: Vec<ModelCall>,
}

impl From<Value> for StepOutput {
    fn from(value: Value) -> Self {
        Self {
            value,
            calls: Vec::new(),
        }
    }
}

/// Why an attempt failed, classified for the retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure {
    /// A stable kind (`http_status`, `http_transport`, `timed_out`, `invalid_config`,
    /// `destination_refused`, `not_configured`, …): what `retry.non_retryable` names.
    pub kind: String,
    /// For a person.
    pub message: String,
    /// Whether trying again could help.
    pub retryable: bool,
    /// The server's `Retry-After`, a floor for the next attempt's pause.
    pub retry_after: Option<Duration>,
    /// The model calls made before it failed (billed as far as they went).
    pub calls: Vec<ModelCall>,
}

impl AttemptFailure {
    /// A failure that another attempt would not mend.
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            retryable: false,
            retry_after: None,
            calls: Vec::new(),
        }
    }

    /// A failure that another attempt may mend.
    pub fn transient(kind: &str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            ..Self::permanent(kind, message)
        }
    }

    /// The same failure, with the model calls made before it.
    pub fn with_calls(mut self, calls: Vec<ModelCall>) -> Self {
        self.calls = calls;
        self
    }
}

/// Runs attempts of one step kind.
pub trait StepRunner: Send + Sync {
    /// Runs one attempt. Dropping the future aborts it (cancel, timeout).
    fn run(&self, attempt: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>>;
}

/// Answers every attempt with `not_configured`: the kind's runner is not part of this
/// build yet, and a run must fail clearly rather than hang.
#[derive(Debug, Clone, Copy)]
pub struct NotConfigured(pub StepKind);

impl StepRunner for NotConfigured {
    fn run(&self, _: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>> {
        let kind = self.0.as_str();
        Box::pin(async move {
            Err(AttemptFailure::permanent(
                "not_configured",
                format!("no runner for '{kind}' steps is configured in this executor"),
            ))
        })
    }
}

/// The runner of each step kind.
#[derive(Clone)]
pub struct Runners {
    by_kind: HashMap<StepKind, Arc<dyn StepRunner>>,
}

impl std::fmt::Debug for Runners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runners")
            .field("kinds", &self.by_kind.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Runners {
    /// `template` and `http` runners; `llm` and `mcp_tool` not configured.
    pub fn new(http: http::HttpRunner) -> Self {
        let mut by_kind: HashMap<StepKind, Arc<dyn StepRunner>> = HashMap::new();
        by_kind.insert(StepKind::Template, Arc::new(template::TemplateRunner));
        by_kind.insert(StepKind::Http, Arc::new(http));
        by_kind.insert(StepKind::Llm, Arc::new(NotConfigured(StepKind::Llm)));
        by_kind.insert(
            StepKind::McpTool,
            Arc::new(NotConfigured(StepKind::McpTool)),
        );
        Self { by_kind }
    }

    /// Replaces the runner of `kind` (the AI and MCP runners plug in here).
    pub fn with(mut self, kind: StepKind, runner: Arc<dyn StepRunner>) -> Self {
        self.by_kind.insert(kind, runner);
        self
    }

    /// The runner of `kind` (`wait` steps have none: a signal completes them).
    pub fn get(&self, kind: StepKind) -> Option<Arc<dyn StepRunner>> {
        self.by_kind.get(&kind).cloned()
    }
}
