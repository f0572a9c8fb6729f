//! Commands: what callers ask of a workflow, as they asked it (unvalidated).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::accepted::{MAX_TEXT_CHARS, check_json, check_name, check_text};
use crate::event::{StepDefinition, StepError, StepKind, WorkflowSubmitted};
use crate::policy::{StepPolicy, parse_duration};
use crate::usage::ModelCall;
use crate::validation::{ValidationErrors, shown};

pub use crate::accepted::MAX_NAME_CHARS;
/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 1_000;
/// Longest accepted step id or signal name, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A step as the caller wrote it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepSpec {
    /// Unique within the workflow.
    #[serde(default)]
    pub id: String,
    /// One of `llm`, `mcp_tool`, `template`, `http`.
    #[serde(default)]
    pub kind: String,
    /// Ids of steps that must finish first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Kind-specific settings; must be an object when present.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// Submit a new workflow run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubmitWorkflow {
    /// Human-readable name; required.
    #[serde(default)]
    pub name: String,
    /// The run's input document; an object when present.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// The step graph; at least one step, acyclic.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// The run's timeout, start to end (`30s`, `5m`…); none when absent.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Whom the run's personal input fields are about (an id of the caller's choosing,
    /// 1-200 characters); the submitter when absent. Never on the log: it names the key
    /// those fields are encrypted with (ADR 26).
    #[serde(default)]
    pub subject: Option<String>,
    /// Who submits it; set by the service from the request, never from the body.
    #[serde(skip)]
    pub submitted_by: Option<String>,
}

/// Cancel a workflow run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CancelWorkflow {
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Deliver a named signal to a workflow run.
#[derive(Debug, Clone, PartialEq)]
pub struct SendSignal {
    /// The signal's name.
    pub name: String,
    /// Any JSON value.
    pub payload: serde_json::Value,
}

/// Pause a run: running attempts finish, nothing new starts until it is resumed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PauseWorkflow {
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the executor records about a step attempt, decided against the run's state like
/// every caller's command.
#[derive(Debug, Clone, PartialEq)]
pub enum StepCommand {
    /// Start the next attempt of a runnable step.
    Start {
        /// The attempt's id (fresh per attempt).
        attempt_id: Uuid,
        /// The rendered config it runs with.
        input: serde_json::Value,
        /// Now.
        started_at: DateTime<Utc>,
        /// When it times out.
        deadline: Option<DateTime<Utc>>,
    },
    /// The running attempt succeeded.
    Succeed {
        /// Which attempt (a stale attempt's outcome is refused).
        attempt_id: Uuid,
        /// Its output (or `null` when kept by reference).
        output: serde_json::Value,
        /// The payload table's reference of a large output.
        output_ref: Option<String>,
        /// How long it ran.
        duration_ms: u64,
        /// The model calls it made.
        calls: Vec<ModelCall>,
    },
    /// The running attempt failed.
    Fail {
        /// Which attempt.
        attempt_id: Uuid,
        /// Why.
        error: StepError,
        /// Whether the failure allows another try.
        retryable: bool,
        /// When the next attempt is due; `None` = failed for good.
        next_attempt_at: Option<DateTime<Utc>>,
        /// The model calls it made before it failed.
        calls: Vec<ModelCall>,
    },
    /// The running attempt passed its deadline.
    TimeOut {
        /// Which attempt.
        attempt_id: Uuid,
        /// When the next attempt is due; `None` = failed for good.
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// The step will not run.
    Skip {
        /// Why.
        reason: String,
    },
    /// A caller asks a failed step of a failed run to run again.
    Retry,
}

/// Everything the `Workflow` aggregate accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    /// See [`SubmitWorkflow`].
    Submit(SubmitWorkflow),
    /// See [`CancelWorkflow`].
    Cancel(CancelWorkflow),
    /// See [`SendSignal`].
    Signal(SendSignal),
    /// See [`PauseWorkflow`].
    Pause(PauseWorkflow),
    /// Resume a paused run.
    Resume,
    /// The executor takes up the run.
    Start {
        /// Now.
        started_at: DateTime<Utc>,
    },
    /// Something about one step; see [`StepCommand`].
    Step {
        /// The step.
        step_id: String,
        /// What.
        command: StepCommand,
    },
    /// Every step is done: the run succeeded.
    Succeed,
    /// The run fails for good.
    Fail {
        /// Why.
        reason: String,
        /// The step that failed it, if one did.
        step_id: Option<String>,
    },
}

/// The object at `field` (`{}` when absent), checked against the accepted language.
fn object_or_empty(
    value: &Option<serde_json::Value>,
    field: &str,
    errors: &mut ValidationErrors,
) -> serde_json::Value {
    match value {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(object @ serde_json::Value::Object(_)) => {
            check_json(object, field, errors);
            object.clone()
        }
        Some(_) => {
            errors.push(field, "must be a JSON object");
            serde_json::Value::Null
        }
    }
}

/// Whether `value` is a valid step id or signal name (what submit and signals accept).
pub fn is_identifier(value: &str) -> bool {
    let mut checked = ValidationErrors::default();
    check_identifier(value, "", &mut checked);
    checked.0.is_empty()
}

fn check_identifier(value: &str, field: &str, errors: &mut ValidationErrors) {
    if value.trim().is_empty() {
        errors.push(field, "must not be empty");
    } else if value.chars().count() > MAX_ID_CHARS {
        errors.push(field, format!("must be at most {MAX_ID_CHARS} characters"));
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        errors.push(
            field,
            "may contain only ASCII letters, digits, '_', '-' and '.'",
        );
    }
}

impl SubmitWorkflow {
    /// Checks every rule and returns the event payload, or every refused field at once.
    pub fn validate(&self) -> Result<WorkflowSubmitted, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = self.name.trim();
        check_name(name, "name", MAX_NAME_CHARS, &mut errors);
        let input = object_or_empty(&self.input, "input", &mut errors);
        if let Some(subject) = &self.subject {
            check_name(subject, "subject", MAX_NAME_CHARS, &mut errors);
        }
        let timeout_ms = match self.timeout.as_deref().map(parse_duration) {
            None => None,
            Some(Ok(timeout)) if !timeout.is_zero() => Some(timeout.as_millis() as u64),
            Some(Ok(_)) => {
                errors.push("timeout", "must be longer than 0");
                None
            }
            Some(Err(message)) => {
                errors.push("timeout", message);
                None
            }
        };
        if self.steps.is_empty() {
            errors.push("steps", "must contain at least one step");
        } else if self.steps.len() > MAX_STEPS {
            errors.push("steps", format!("must contain at most {MAX_STEPS} steps"));
            // Checking each of a million steps would only find more of what is listed.
            return Err(errors);
        }

        let mut first_index: HashMap<&str, usize> = HashMap::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for (index, spec) in self.steps.iter().enumerate() {
            let at = format!("steps[{index}]");
            check_identifier(&spec.id, &format!("{at}.id"), &mut errors);
            if let Some(first) = first_index.insert(spec.id.as_str(), index) {
                first_index.insert(spec.id.as_str(), first);
                errors.push(
                    format!("{at}.id"),
                    format!(
                        "duplicate step id '{}' (also steps[{first}].id)",
                        shown(&spec.id)
                    ),
                );
            }
            let kind = StepKind::parse(&spec.kind);
            if kind.is_none() {
                let known: Vec<_> = StepKind::ALL.iter().map(|k| k.as_str()).collect();
                errors.push(
                    format!("{at}.kind"),
                    format!(
                        "unknown step kind '{}'; expected one of {}",
                        shown(&spec.kind),
                        known.join(", ")
                    ),
                );
            }
            let config = object_or_empty(&spec.config, &format!("{at}.config"), &mut errors);
            if let Some(kind) = kind
                && config.is_object()
                && let Err(policy_errors) =
                    StepPolicy::parse(kind, &config, &format!("{at}.config"))
            {
                errors.append(policy_errors);
            }
            if let Some(kind) = kind {
                check_indexed_names(kind, &config, &at, &mut errors);
                check_mcp_tool_settings(kind, &config, &at, &mut errors);
            }
            if kind == Some(StepKind::Llm) && config.is_object() {
                crate::llm::check_submitted(&config, &format!("{at}.config"), &mut errors);
            }
            steps.push((kind, config));
        }
        for (index, spec) in self.steps.iter().enumerate() {
            let mut seen = HashSet::new();
            for (dep_index, dependency) in spec.depends_on.iter().enumerate() {
                let field = format!("steps[{index}].depends_on[{dep_index}]");
                if !first_index.contains_key(dependency.as_str()) {
                    errors.push(
                        field,
                        format!("names a missing step '{}'", shown(dependency)),
                    );
                } else if dependency == &spec.id {
                    errors.push(field, "a step cannot depend on itself");
                } else if !seen.insert(dependency) {
                    errors.push(field, format!("repeats dependency '{}'", shown(dependency)));
                }
            }
        }
        if errors.is_empty()
            && let Some(cycle) = find_cycle(&self.steps)
        {
            errors.push("steps", format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        errors.into_result()?;

        Ok(WorkflowSubmitted {
            name: name.to_owned(),
            input,
            steps: self
                .steps
                .iter()
                .zip(steps)
                .map(|(spec, (kind, config))| StepDefinition {
                    id: spec.id.clone(),
                    kind: kind.expect("validated above"),
                    depends_on: spec.depends_on.clone(),
                    config,
                })
                .collect(),
            submitted_by: self.submitted_by.clone(),
            timeout_ms,
        })
    }
}

/// Returns one dependency cycle (first step repeated at the end), if the graph has any.
/// Assumes ids are unique and every dependency names an existing step.
fn find_cycle(steps: &[StepSpec]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut marks = vec![Mark::Unvisited; steps.len()];
    // Iterative depth-first search, so a long chain cannot overflow the stack.
    for start in 0..steps.len() {
        if marks[start] != Mark::Unvisited {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some((node, next_edge)) = path.last_mut() {
            let node = *node;
            if let Some(dependency) = steps[node].depends_on.get(*next_edge) {
                *next_edge += 1;
                let target = index[dependency.as_str()];
                match marks[target] {
                    Mark::Unvisited => {
                        marks[target] = Mark::OnPath;
                        path.push((target, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|(n, _)| *n == target)?;
                        let mut cycle: Vec<String> = path[from..]
                            .iter()
                            .map(|(n, _)| steps[*n].id.clone())
                            .collect();
                        cycle.push(steps[target].id.clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}

/// The config members that read models index (a step's model, its tool's server and
/// name) are names: bounded, no control characters.
fn check_indexed_names(
    kind: StepKind,
    config: &serde_json::Value,
    at: &str,
    errors: &mut ValidationErrors,
) {
    let indexed: &[&str] = match kind {
        StepKind::Llm => &["model"],
        StepKind::McpTool => &["server", "tool"],
        _ => &[],
    };
    for member in indexed {
        if let Some(serde_json::Value::String(name)) = config.get(member) {
            check_name(
                name,
                &format!("{at}.config.{member}"),
                MAX_NAME_CHARS,
                errors,
            );
        }
    }
}

/// An `mcp_tool` step names its server and tool (strings; templates are fine) and gives
/// the tool's arguments as an object, so a step that could never call anything is refused
/// at submit rather than failing at run time.
fn check_mcp_tool_settings(
    kind: StepKind,
    config: &serde_json::Value,
    at: &str,
    errors: &mut ValidationErrors,
) {
    if kind != StepKind::McpTool {
        return;
    }
    for (member, what) in [
        ("server", "the name of a configured MCP server"),
        ("tool", "the name of the tool to call"),
    ] {
        if !matches!(config.get(member), Some(serde_json::Value::String(_))) {
            errors.push(
                format!("{at}.config.{member}"),
                format!("is required for an mcp_tool step: {what}, a string"),
            );
        }
    }
    if !matches!(
        config.get("arguments"),
        None | Some(serde_json::Value::Null | serde_json::Value::Object(_))
    ) {
        errors.push(
            format!("{at}.config.arguments"),
            "must be an object: the tool's arguments (its strings are templates)",
        );
    }
}

impl SendSignal {
    /// Checks the signal's name and its payload (named `payload` in errors).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_identifier(&self.name, "name", &mut errors);
        check_json(&self.payload, "payload", &mut errors);
        errors.into_result()
    }
}

/// Checks the audit-trail `reason` of a cancel or a pause.
fn check_reason(reason: Option<&str>) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if let Some(reason) = reason {
        check_text(reason, "reason", MAX_TEXT_CHARS, &mut errors);
    }
    errors.into_result()
}

impl CancelWorkflow {
    /// Checks the reason.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        check_reason(self.reason.as_deref())
    }
}

impl PauseWorkflow {
    /// Checks the reason.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        check_reason(self.reason.as_deref())
    }
}
