//! The one port through which workflow steps call MCP tools ([`ToolCaller`]), and its
//! implementation over the rmcp client ([`McpClient`]).
//!
//! The executor's `mcp_tool` runner knows only the port: a server name, a tool, its
//! arguments, a timeout and a progress callback in; the tool's output or a classified
//! [`McpCallError`] out. Everything about reaching a server (which servers exist, how they
//! are started or reached, sessions and their reuse) sits behind it, so the MCP gateway can
//! later put pooling, load balancing and circuit breakers behind the same trait without
//! the executor changing. See `docs/adr/0023-mcp-client-port.md`.

pub mod client;
pub mod config;
mod progress;
mod session;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use client::McpClient;
pub use config::{ConfigError, ServersConfig};

/// One progress notification of a running tool call (MCP `notifications/progress`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolProgress {
    /// How far the call is; grows with every notification.
    pub progress: f64,
    /// The value `progress` reaches at the end, when the server knows it.
    pub total: Option<f64>,
    /// What the server says it is doing.
    pub message: Option<String>,
}

/// Receives a call's progress notifications, in the order the server sent them. Called on
/// the client's own tasks: it must not block.
pub type ProgressCallback = Arc<dyn Fn(ToolProgress) + Send + Sync>;

/// A tool call.
#[derive(Clone)]
pub struct ToolCall {
    /// The configured server's name.
    pub server: String,
    /// The tool's name on that server.
    pub tool: String,
    /// The tool's arguments.
    pub arguments: Map<String, Value>,
    /// How long the caller waits at most; the server's configured call timeout applies
    /// when it is shorter or when this is `None`.
    pub timeout: Option<Duration>,
    /// Where progress notifications go.
    pub progress: Option<ProgressCallback>,
}

impl std::fmt::Debug for ToolCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolCall")
            .field("server", &self.server)
            .field("tool", &self.tool)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

/// What a successful tool call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// The tool's `structuredContent` when it sent one, else its `content` blocks (a JSON
    /// array).
    pub output: Value,
    /// Whether `output` is the tool's `structuredContent`.
    pub structured: bool,
}

/// Why a tool call failed, classified for the step's retry policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum McpCallError {
    /// No server of this name is configured.
    #[error("no MCP server named '{server}' is configured (known: {known})")]
    UnknownServer {
        /// The name asked for.
        server: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// The server is configured but cannot be used as configured (a variable its
    /// settings name is unset, a bad header value).
    #[error("MCP server '{server}' is not usable: {message}")]
    NotConfigured {
        /// The server.
        server: String,
        /// What is missing.
        message: String,
    },
    /// No session could be opened: the process did not start, the URL did not answer,
    /// or the handshake failed.
    #[error("could not open a session with MCP server '{server}': {message}")]
    Connect {
        /// The server.
        server: String,
        /// What failed.
        message: String,
        /// Whether trying again could help (a missing program will stay missing).
        retryable: bool,
    },
    /// The session ended while the call was in flight (the process died, the connection
    /// broke). The next call opens a fresh session.
    #[error("the session with MCP server '{server}' was lost during the call: {message}")]
    SessionLost {
        /// The server.
        server: String,
        /// What the transport said.
        message: String,
    },
    /// The tool ran and reported an error (`isError: true`).
    #[error("tool '{tool}' of MCP server '{server}' returned an error: {message}")]
    ToolError {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
        /// The text of the tool's content.
        message: String,
        /// The tool's whole result content, for whoever wants more than the text.
        content: Value,
    },
    /// The server answered with a JSON-RPC error or something that is not a tool result
    /// (an unknown tool, arguments the server refused).
    #[error("MCP server '{server}' refused the call: {message}")]
    Protocol {
        /// The server.
        server: String,
        /// The JSON-RPC error or what was unexpected.
        message: String,
    },
    /// No answer within the call's timeout. The server is told to cancel the request and
    /// the session stays open.
    #[error("tool '{tool}' of MCP server '{server}' did not answer within {after:?}")]
    Timeout {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The result is larger than the server's `max_result_bytes`.
    #[error(
        "tool '{tool}' of MCP server '{server}' returned {bytes} bytes of JSON, more than the \
         {limit} allowed"
    )]
    ResultTooLarge {
        /// The server.
        server: String,
        /// The tool.
        tool: String,
        /// The result's size (at least; the transport may stop counting early).
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl McpCallError {
    /// A stable name of the failure (what a step's `retry.non_retryable` lists).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownServer { .. } => "mcp_unknown_server",
            Self::NotConfigured { .. } => "not_configured",
            Self::Connect { .. } => "mcp_connect",
            Self::SessionLost { .. } => "mcp_session_lost",
            Self::ToolError { .. } => "mcp_tool_error",
            Self::Protocol { .. } => "mcp_protocol",
            Self::Timeout { .. } => "timed_out",
            Self::ResultTooLarge { .. } => "mcp_result_too_large",
        }
    }

    /// Whether another attempt could succeed: a lost session, a timeout or a failed
    /// connection (when the cause can pass) yes; a tool's own error, a refused call, an
    /// unknown server or an oversized result no.
    pub fn retryable(&self) -> bool {
        match self {
            Self::SessionLost { .. } | Self::Timeout { .. } => true,
            Self::Connect { retryable, .. } => *retryable,
            Self::UnknownServer { .. }
            | Self::NotConfigured { .. }
            | Self::ToolError { .. }
            | Self::Protocol { .. }
            | Self::ResultTooLarge { .. } => false,
        }
    }
}

/// The port: calls a tool of a configured MCP server.
///
/// Implementations own their sessions; the returned future holds what it needs, and
/// dropping it (a cancelled run, an attempt's deadline) abandons the call without harming
/// other calls on the same server.
pub trait ToolCaller: Send + Sync {
    /// Calls `call.tool` on `call.server`.
    fn call_tool(&self, call: ToolCall) -> BoxFuture<'static, Result<ToolOutcome, McpCallError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passing_causes_are_retryable() {
        let lost = McpCallError::SessionLost {
            server: "s".into(),
            message: "closed".into(),
        };
        let tool = McpCallError::ToolError {
            server: "s".into(),
            tool: "t".into(),
            message: "boom".into(),
            content: Value::Null,
        };
        assert!(lost.retryable());
        assert_eq!(lost.kind(), "mcp_session_lost");
        assert!(!tool.retryable());
        assert_eq!(tool.kind(), "mcp_tool_error");
    }
}
