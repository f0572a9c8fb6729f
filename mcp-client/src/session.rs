//! One open MCP session with one server: a child process over stdio, or a Streamable HTTP
//! connection, initialised and kept for every call until its transport dies.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::ServiceExt;
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::McpCallError;
use crate::config::{HttpSpec, INHERITED_VARIABLES, ServerSpec, StdioSpec, TransportSpec};
use crate::progress::{ProgressRouter, SessionHandler};

/// Reads the executor's environment (injected, so tests need not change theirs).
pub(crate) type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Longest line of a server's stderr forwarded to the log.
const STDERR_LINE_CHARS: usize = 4096;

/// Largest message the transport reads: a result at the limit appears twice in a message
/// (as `content` and as `structuredContent`) and escaping can grow its text, so the
/// transport allows well past it and the exact limit is checked on the decoded result.
fn transport_message_limit(max_result_bytes: usize) -> usize {
    max_result_bytes
        .saturating_mul(4)
        .saturating_add(1024 * 1024)
}

/// Kills the server's whole process group when the session goes.
struct ChildGuard {
    child: Box<dyn ChildWrapper>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Closing stdin (the transport is dropped first) asks a stdio server to exit; the
        // session is gone either way, so whatever is left of its group is stopped now.
        let _ = self.child.start_kill();
    }
}

/// An initialised session.
pub(crate) struct Session {
    // Field order is drop order: the service (and its transport) before the process.
    service: RunningService<RoleClient, SessionHandler>,
    progress: ProgressRouter,
    child: Option<ChildGuard>,
}

impl Session {
    /// Starts or connects to the server and runs the MCP handshake, within the server's
    /// connect timeout.
    pub(crate) async fn open(spec: &ServerSpec, env: &EnvLookup) -> Result<Self, McpCallError> {
        let connect_timeout = spec.limits.connect_timeout;
        match tokio::time::timeout(connect_timeout, Self::open_unbounded(spec, env)).await {
            Ok(opened) => opened,
            Err(_) => Err(McpCallError::Connect {
                server: spec.name.clone(),
                message: format!("no session within the connect timeout of {connect_timeout:?}"),
                retryable: true,
            }),
        }
    }

    async fn open_unbounded(spec: &ServerSpec, env: &EnvLookup) -> Result<Self, McpCallError> {
        let progress = ProgressRouter::default();
        let handler = SessionHandler {
            progress: progress.clone(),
        };
        let limit = transport_message_limit(spec.limits.max_result_bytes);
        let handshake_failed =
            |error: rmcp::service::ClientInitializeError| McpCallError::Connect {
                server: spec.name.clone(),
                message: format!("MCP handshake: {error}"),
                retryable: true,
            };
        match &spec.transport {
            TransportSpec::Stdio(stdio) => {
                let (child, stdout, stdin) = spawn(spec, stdio, env)?;
                let transport =
                    AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(limit);
                let service = handler.serve(transport).await.map_err(handshake_failed)?;
                tracing::info!(server = %spec.name, pid = child.child.id(), "MCP session opened (stdio)");
                Ok(Self {
                    service,
                    progress,
                    child: Some(child),
                })
            }
            TransportSpec::StreamableHttp(http) => {
                let transport = http_transport(spec, http, env, limit)?;
                let service = handler.serve(transport).await.map_err(handshake_failed)?;
                tracing::info!(server = %spec.name, url = %http.url, "MCP session opened (Streamable HTTP)");
                Ok(Self {
                    service,
                    progress,
                    child: None,
                })
            }
        }
    }

    /// Whether the transport still runs (a dead process or a closed connection ends it).
    pub(crate) fn is_alive(&self) -> bool {
        !self.service.is_closed() && !self.service.peer().is_transport_closed()
    }

    /// Sends requests.
    pub(crate) fn peer(&self) -> &Peer<RoleClient> {
        self.service.peer()
    }

    /// Routes progress notifications.
    pub(crate) fn progress(&self) -> &ProgressRouter {
        &self.progress
    }

    /// The server process, for stdio sessions.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.child.id())
    }
}

type Spawned = (
    ChildGuard,
    tokio::process::ChildStdout,
    tokio::process::ChildStdin,
);

fn spawn(spec: &ServerSpec, stdio: &StdioSpec, env: &EnvLookup) -> Result<Spawned, McpCallError> {
    let program =
        stdio
            .program(|variable| env(variable))
            .map_err(|message| McpCallError::NotConfigured {
                server: spec.name.clone(),
                message: format!("command: {message}"),
            })?;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&stdio.args)
        .current_dir(&stdio.cwd)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in INHERITED_VARIABLES {
        if let Some(value) = env(name) {
            command.env(name, value);
        }
    }
    for (name, source) in &stdio.env {
        let value = source
            .resolve(|variable| env(variable))
            .map_err(|message| McpCallError::NotConfigured {
                server: spec.name.clone(),
                message: format!("env.{name}: {message}"),
            })?;
        command.env(name, value);
    }
    let mut wrapped = CommandWrap::from(command);
    wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
    let mut child = wrapped.spawn().map_err(|error| McpCallError::Connect {
        server: spec.name.clone(),
        message: format!(
            "could not start '{}' in {}: {error}",
            program.display(),
            stdio.cwd.display()
        ),
        // A missing or forbidden program stays so until someone changes the machine.
        retryable: !matches!(
            error.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
        ),
    })?;
    let stdout = child.stdout().take();
    let stdin = child.stdin().take();
    let stderr = child.stderr().take();
    let guard = ChildGuard { child };
    let (Some(stdout), Some(stdin)) = (stdout, stdin) else {
        return Err(McpCallError::Connect {
            server: spec.name.clone(),
            message: "the process has no stdin/stdout pipes".into(),
            retryable: true,
        });
    };
    if let Some(stderr) = stderr {
        let server = spec.name.clone();
        // A server's diagnostics go to the log (at debug), line by line and bounded.
        tokio::spawn(async move {
            let mut lines =
                FramedRead::new(stderr, LinesCodec::new_with_max_length(STDERR_LINE_CHARS));
            while let Some(line) = lines.next().await {
                match line {
                    Ok(line) => tracing::debug!(server = %server, "MCP server stderr: {line}"),
                    Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {}
                    Err(_) => break,
                }
            }
        });
    }
    Ok((guard, stdout, stdin))
}

fn http_transport(
    spec: &ServerSpec,
    http: &HttpSpec,
    env: &EnvLookup,
    limit: usize,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, McpCallError> {
    let not_configured = |message: String| McpCallError::NotConfigured {
        server: spec.name.clone(),
        message,
    };
    let mut headers = HashMap::new();
    for (name, source) in &http.headers {
        let value = source
            .resolve(|variable| env(variable))
            .map_err(|message| not_configured(format!("headers.{name}: {message}")))?;
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| not_configured(format!("headers.{name}: not a header name")))?;
        // The value itself is never shown: it may be a secret.
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            not_configured(format!(
                "headers.{name}: the value is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(spec.limits.connect_timeout)
        .user_agent(concat!("flowline-executor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| McpCallError::Connect {
            server: spec.name.clone(),
            message: format!("HTTP client: {e}"),
            retryable: false,
        })?;
    let config = StreamableHttpClientTransportConfig::with_uri(http.url.as_str())
        .custom_headers(headers)
        .max_json_response_size(limit)
        .max_sse_event_size(limit)
        .control_request_timeout(Duration::from_secs(5));
    Ok(StreamableHttpClientTransport::with_client(client, config))
}
