//! [`McpClient`]: the [`ToolCaller`] over rmcp, with one lazily opened, shared session per
//! configured server.
//!
//! A call takes the server's session (opening one if there is none or the last one's
//! transport died; one opening at a time per server, the others wait for it), sends
//! `tools/call` and waits for the answer. Sessions are shared: concurrent calls to one
//! server are concurrent requests on one session. A call that is dropped or times out
//! tells the server to cancel its request (`notifications/cancelled`) and leaves the
//! session to the others. A call whose transport fails drops that session, so the next
//! call opens a fresh one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotification,
    CancelledNotificationParam, ClientRequest, RequestId, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient, ServiceError};
use serde_json::Value;

use crate::config::ServerSpec;
use crate::config::ServersConfig;
use crate::session::{EnvLookup, Session};
use crate::{McpCallError, ToolCall, ToolCaller, ToolOutcome};

/// How long a call's progress subscription outlives its result.
const PROGRESS_GRACE: Duration = Duration::from_millis(250);

/// Longest tool error text put in a failure's message.
const ERROR_TEXT_CHARS: usize = 2000;

struct ServerSlot {
    spec: ServerSpec,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    sessions_opened: AtomicU64,
}

impl ServerSlot {
    /// The live session, opening one when there is none.
    async fn session(&self, env: &EnvLookup) -> Result<Arc<Session>, McpCallError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref() {
            if session.is_alive() {
                return Ok(Arc::clone(session));
            }
            tracing::info!(server = %self.spec.name, "MCP session ended; opening a fresh one");
        }
        *current = None;
        let session = Arc::new(Session::open(&self.spec, env).await?);
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        *current = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Drops `session` if it is still the current one (another call may have replaced it).
    async fn forget(&self, session: &Arc<Session>) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
        }
    }
}

struct Inner {
    servers: BTreeMap<String, ServerSlot>,
    env: Box<EnvLookup>,
}

/// Calls tools of the configured MCP servers over rmcp; cheap to clone (clones share the
/// sessions). Sessions close, and stdio servers are stopped, when the last clone drops.
#[derive(Clone)]
pub struct McpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("servers", &self.inner.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl McpClient {
    /// A client of `config`'s servers, reading `{ env = … }` values from the process
    /// environment. Nothing is started until a call needs it.
    pub fn new(config: ServersConfig) -> Self {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// The same, reading `{ env = … }` values (and the variables a child process inherits)
    /// through `env`.
    pub fn with_env(
        config: ServersConfig,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let servers = config
            .servers
            .into_iter()
            .map(|(name, spec)| {
                let slot = ServerSlot {
                    spec,
                    session: tokio::sync::Mutex::new(None),
                    sessions_opened: AtomicU64::new(0),
                };
                (name, slot)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                servers,
                env: Box::new(env),
            }),
        }
    }

    /// The configured servers' names.
    pub fn servers(&self) -> Vec<String> {
        self.inner.servers.keys().cloned().collect()
    }

    /// How many sessions with `server` this client has opened (`None`: no such server).
    pub fn sessions_opened(&self, server: &str) -> Option<u64> {
        self.inner
            .servers
            .get(server)
            .map(|slot| slot.sessions_opened.load(Ordering::Relaxed))
    }

    /// The process id of `server`'s current stdio session, if one is open.
    pub async fn server_pid(&self, server: &str) -> Option<u32> {
        let slot = self.inner.servers.get(server)?;
        let current = slot.session.lock().await;
        current
            .as_ref()
            .filter(|s| s.is_alive())
            .and_then(|s| s.pid())
    }

    async fn call(inner: Arc<Inner>, call: ToolCall) -> Result<ToolOutcome, McpCallError> {
        let Some(slot) = inner.servers.get(&call.server) else {
            let known: Vec<&str> = inner.servers.keys().map(String::as_str).collect();
            return Err(McpCallError::UnknownServer {
                server: call.server,
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        let limit = slot.spec.limits.call_timeout;
        let timeout = call.timeout.map_or(limit, |t| t.min(limit));
        match tokio::time::timeout(timeout, Self::call_on_session(slot, &inner.env, &call)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(McpCallError::Timeout {
                server: call.server.clone(),
                tool: call.tool.clone(),
                after: timeout,
            }),
        }
    }

    async fn call_on_session(
        slot: &ServerSlot,
        env: &EnvLookup,
        call: &ToolCall,
    ) -> Result<ToolOutcome, McpCallError> {
        let session = slot.session(env).await?;
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(
            CallToolRequestParams::new(call.tool.clone()).with_arguments(call.arguments.clone()),
        ));
        let sent = session
            .peer()
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await;
        let handle = match sent {
            Ok(handle) => handle,
            Err(error) => return Err(Self::failed(slot, &session, call, error).await),
        };
        let progress = call.progress.as_ref().map(|callback| {
            session
                .progress()
                .subscribe(handle.progress_token.clone(), Arc::clone(callback))
        });
        let mut abandon = CancelOnDrop {
            peer: Some(session.peer().clone()),
            id: handle.id.clone(),
        };
        let answer = handle.await_response().await;
        abandon.peer = None;
        if let Some(progress) = progress {
            // rmcp handles each notification on a task of its own, so the last ones sent
            // before the result may still be on their way: they are let through a moment
            // longer.
            tokio::spawn(async move {
                tokio::time::sleep(PROGRESS_GRACE).await;
                drop(progress);
            });
        }
        match answer {
            Ok(ServerResult::CallToolResult(result)) => {
                tool_outcome(result, call, slot.spec.limits.max_result_bytes)
            }
            Ok(ServerResult::EmptyResult(_)) => Ok(ToolOutcome {
                output: Value::Array(Vec::new()),
                structured: false,
            }),
            Ok(_) => Err(McpCallError::Protocol {
                server: call.server.clone(),
                message: "the answer to tools/call is not a tool result".into(),
            }),
            Err(error) => Err(Self::failed(slot, &session, call, error).await),
        }
    }

    /// Classifies a request's failure; a failed transport takes its session with it.
    async fn failed(
        slot: &ServerSlot,
        session: &Arc<Session>,
        call: &ToolCall,
        error: ServiceError,
    ) -> McpCallError {
        let server = call.server.clone();
        match error {
            ServiceError::McpError(error) => McpCallError::Protocol {
                server,
                message: format!("JSON-RPC error {}: {}", error.code.0, error.message),
            },
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                slot.forget(session).await;
                McpCallError::SessionLost {
                    server,
                    message: error.to_string(),
                }
            }
            ServiceError::Cancelled { reason } => McpCallError::SessionLost {
                server,
                message: format!(
                    "the server cancelled the request: {}",
                    reason.as_deref().unwrap_or("no reason given")
                ),
            },
            ServiceError::Timeout { timeout } => McpCallError::Timeout {
                server,
                tool: call.tool.clone(),
                after: timeout,
            },
            other => McpCallError::Protocol {
                server,
                message: other.to_string(),
            },
        }
    }
}

impl ToolCaller for McpClient {
    fn call_tool(&self, call: ToolCall) -> BoxFuture<'static, Result<ToolOutcome, McpCallError>> {
        Box::pin(Self::call(Arc::clone(&self.inner), call))
    }
}

/// Tells the server to stop a request whose caller went away (a deadline, a cancelled
/// run); the session itself stays for other calls.
struct CancelOnDrop {
    peer: Option<Peer<RoleClient>>,
    id: RequestId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let notification = CancelledNotification::new(CancelledNotificationParam::new(
            Some(self.id.clone()),
            Some("the caller stopped waiting".into()),
        ));
        runtime.spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                peer.send_notification(notification.into()),
            )
            .await;
        });
    }
}

/// Counts bytes without keeping them.
struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_size(value: &impl serde::Serialize) -> usize {
    let mut counter = CountingWriter(0);
    // Serialising a JSON value into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

fn tool_outcome(
    result: CallToolResult,
    call: &ToolCall,
    limit: usize,
) -> Result<ToolOutcome, McpCallError> {
    let too_large = |bytes| McpCallError::ResultTooLarge {
        server: call.server.clone(),
        tool: call.tool.clone(),
        bytes,
        limit,
    };
    if result.is_error == Some(true) {
        let text: String = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|text| text.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        let message = if text.is_empty() {
            "(no text in the error result)".to_owned()
        } else if text.chars().count() > ERROR_TEXT_CHARS {
            format!(
                "{}…",
                text.chars().take(ERROR_TEXT_CHARS).collect::<String>()
            )
        } else {
            text
        };
        let content = if json_size(&result.content) > limit {
            Value::Null
        } else {
            serde_json::to_value(&result.content).unwrap_or(Value::Null)
        };
        return Err(McpCallError::ToolError {
            server: call.server.clone(),
            tool: call.tool.clone(),
            message,
            content,
        });
    }
    let (output, structured) = match result.structured_content {
        Some(structured) => {
            let bytes = json_size(&structured);
            if bytes > limit {
                return Err(too_large(bytes));
            }
            (structured, true)
        }
        None => {
            let bytes = json_size(&result.content);
            if bytes > limit {
                return Err(too_large(bytes));
            }
            let content =
                serde_json::to_value(&result.content).map_err(|e| McpCallError::Protocol {
                    server: call.server.clone(),
                    message: format!("the tool's content is not JSON: {e}"),
                })?;
            (content, false)
        }
    };
    Ok(ToolOutcome { output, structured })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;

    fn call() -> ToolCall {
        ToolCall {
            server: "s".into(),
            tool: "t".into(),
            arguments: Default::default(),
            timeout: None,
            progress: None,
        }
    }

    fn result(value: Value) -> CallToolResult {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn structured_content_wins_over_content() {
        let outcome = tool_outcome(
            result(json!({"content": [{"type": "text", "text": "{\"t\":1}"}],
                          "structuredContent": {"t": 1}})),
            &call(),
            1000,
        )
        .unwrap();
        assert_eq!(outcome.output, json!({"t": 1}));
        assert!(outcome.structured);
        let outcome = tool_outcome(
            result(json!({"content": [{"type": "text", "text": "hi"}]})),
            &call(),
            1000,
        )
        .unwrap();
        assert_eq!(outcome.output, json!([{"type": "text", "text": "hi"}]));
    }

    #[test]
    fn an_error_result_and_an_oversized_result_fail() {
        let error = tool_outcome(
            result(json!({"content": [{"type": "text", "text": "no such city"}], "isError": true})),
            &call(),
            1000,
        )
        .unwrap_err();
        assert_eq!(error.kind(), "mcp_tool_error");
        assert!(error.to_string().contains("no such city"));
        let error = tool_outcome(
            result(json!({"content": [{"type": "text", "text": "x".repeat(2000)}]})),
            &call(),
            1000,
        )
        .unwrap_err();
        assert_eq!(error.kind(), "mcp_result_too_large");
    }

    #[tokio::test]
    async fn an_unknown_server_is_named_with_the_known_ones() {
        let config =
            ServersConfig::from_toml("[servers.a]\ncommand = \"true\"", Path::new("/")).unwrap();
        let client = McpClient::new(config);
        let error = client
            .call_tool(ToolCall {
                server: "b".into(),
                ..call()
            })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "mcp_unknown_server");
        assert!(error.to_string().contains("known: a"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_program_fails_for_good_and_a_missing_secret_names_its_variable() {
        let config = ServersConfig::from_toml(
            "[servers.gone]\ncommand = \"/nonexistent/mcp-server\"\n\
             [servers.secret]\ncommand = \"true\"\nenv = { KEY = { env = \"FLOWLINE_TEST_UNSET_KEY\" } }",
            Path::new("/"),
        )
        .unwrap();
        let client = McpClient::with_env(config, |_| None);
        let error = client
            .call_tool(ToolCall {
                server: "gone".into(),
                ..call()
            })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "mcp_connect");
        assert!(!error.retryable(), "{error}");
        let error = client
            .call_tool(ToolCall {
                server: "secret".into(),
                ..call()
            })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "not_configured");
        assert!(
            error.to_string().contains("FLOWLINE_TEST_UNSET_KEY"),
            "{error}"
        );
    }
}
