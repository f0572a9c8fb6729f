//! `mcp_tool` steps: `config` {`server`, `tool`, `arguments`} (rendered); the output is
//! the tool's `structuredContent` when it sends one, else its `content` blocks.
//!
//! Calls go through the [`ToolCaller`] port of `flowline-mcp-client` and nothing else: the
//! servers, their sessions and their reuse live behind it (ADR 0023). A tool's own error
//! (`isError`) fails the step for good; a lost session or a timeout is retryable; the
//! tool's progress notifications are the step's live progress. With no servers file
//! configured every attempt fails at once with `not_configured`.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use flowline_mcp_client::{
    McpCallError, McpClient, ProgressCallback, ServersConfig, ToolCall, ToolCaller,
};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{AttemptFailure, AttemptInput, StepOutput, StepRunner};

/// `mcp_tool` step settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct McpSettings {
    /// The MCP servers file: which servers `mcp_tool` steps may call (stdio commands,
    /// Streamable HTTP URLs with headers) and their limits; see
    /// `config/mcp-servers.example.toml`. Unset: none, and `mcp_tool` steps fail with
    /// `not_configured`.
    #[arg(long = "mcp-servers-file", env = "MCP_SERVERS_FILE")]
    pub servers_file: Option<PathBuf>,
}

/// Runs `mcp_tool` steps.
#[derive(Clone)]
pub struct McpToolRunner {
    caller: Option<Arc<dyn ToolCaller>>,
}

impl std::fmt::Debug for McpToolRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpToolRunner")
            .field("configured", &self.caller.is_some())
            .finish()
    }
}

impl McpToolRunner {
    /// Calls through `caller`.
    pub fn new(caller: Arc<dyn ToolCaller>) -> Self {
        Self {
            caller: Some(caller),
        }
    }

    /// The runner `settings` ask for: an rmcp client of the servers file, or none. A
    /// servers file that cannot be read or parsed is an error (the executor does not start
    /// half-configured).
    pub fn from_settings(settings: &McpSettings) -> Result<Self, String> {
        match &settings.servers_file {
            None => Ok(Self { caller: None }),
            Some(path) => {
                let config = ServersConfig::load(path).map_err(|e| e.to_string())?;
                tracing::info!(
                    file = %path.display(),
                    servers = ?config.servers.keys().collect::<Vec<_>>(),
                    "MCP servers configured"
                );
                Ok(Self::new(Arc::new(McpClient::new(config))))
            }
        }
    }
}

struct CallSettings {
    server: String,
    tool: String,
    arguments: Map<String, Value>,
}

fn call_settings(config: &Value) -> Result<CallSettings, AttemptFailure> {
    let invalid = |message: &str| AttemptFailure::permanent("invalid_config", message);
    let text = |member: &str| match config.get(member) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
        _ => Err(invalid(&format!(
            "an mcp_tool step needs `config.{member}`, a non-empty string"
        ))),
    };
    let arguments = match config.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(arguments)) => arguments.clone(),
        Some(_) => return Err(invalid("config.arguments must be an object")),
    };
    Ok(CallSettings {
        server: text("server")?,
        tool: text("tool")?,
        arguments,
    })
}

fn failure(error: McpCallError) -> AttemptFailure {
    let message = error.to_string();
    if error.retryable() {
        AttemptFailure::transient(error.kind(), message)
    } else {
        AttemptFailure::permanent(error.kind(), message)
    }
}

/// One attempt: the call, within what is left of the attempt's deadline.
async fn run_attempt(
    caller: Arc<dyn ToolCaller>,
    attempt: AttemptInput,
) -> Result<StepOutput, AttemptFailure> {
    let settings = call_settings(&attempt.input)?;
    let live = attempt.live.clone();
    let progress: ProgressCallback =
        Arc::new(move |p| live.progress(p.progress, p.total, p.message));
    let timeout = attempt
        .deadline
        .map(|deadline| (deadline - Utc::now()).to_std().unwrap_or_default());
    let call = ToolCall {
        server: settings.server,
        tool: settings.tool,
        arguments: settings.arguments,
        timeout,
        progress: Some(progress),
    };
    caller
        .call_tool(call)
        .await
        .map(|outcome| StepOutput::from(outcome.output))
        .map_err(failure)
}

impl StepRunner for McpToolRunner {
    fn run(&self, attempt: AttemptInput) -> BoxFuture<'static, Result<StepOutput, AttemptFailure>> {
        let Some(caller) = self.caller.clone() else {
            return Box::pin(async {
                Err(AttemptFailure::permanent(
                    "not_configured",
                    "no MCP servers are configured in this executor: set MCP_SERVERS_FILE \
                     (--mcp-servers-file) to a servers file (see config/mcp-servers.example.toml)",
                ))
            });
        };
        Box::pin(run_attempt(caller, attempt))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn settings_name_what_is_missing() {
        let error = call_settings(&json!({"tool": "t"})).err().unwrap();
        assert_eq!(error.kind, "invalid_config");
        assert!(error.message.contains("config.server"), "{}", error.message);
        let settings = call_settings(&json!({"server": "s", "tool": "t"})).unwrap();
        assert!(settings.arguments.is_empty());
    }

    #[tokio::test]
    async fn without_a_servers_file_steps_fail_at_once_naming_the_setting() {
        let runner = McpToolRunner::from_settings(&McpSettings::default()).unwrap();
        let failure = runner
            .run(AttemptInput {
                workflow_id: uuid::Uuid::nil(),
                tenant: "t".into(),
                step_id: "s".into(),
                attempt: 1,
                attempt_id: uuid::Uuid::nil(),
                input: json!({"server": "s", "tool": "t"}),
                deadline: None,
                last_attempt: true,
                live: crate::live::LiveSink::disabled(),
            })
            .await
            .unwrap_err();
        assert_eq!(failure.kind, "not_configured");
        assert!(!failure.retryable);
        assert!(failure.message.contains("MCP_SERVERS_FILE"));
    }
}
