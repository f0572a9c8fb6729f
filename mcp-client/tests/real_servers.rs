//! The rmcp client against a real third-party MCP server, npm
//! `@modelcontextprotocol/server-everything` (installed pinned by `scripts/lib.sh`
//! `ensure_mcp_servers`), over stdio and over Streamable HTTP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline_mcp_client::{
    McpCallError, McpClient, ServersConfig, ToolCall, ToolCaller, ToolProgress,
};
use serde_json::{Value, json};

fn everything() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    assert!(
        path.exists(),
        "{} is missing: run `source scripts/lib.sh && ensure_mcp_servers`",
        path.display()
    );
    path
}

fn stdio_client(extra: &str) -> McpClient {
    let text = format!(
        "[servers.everything]\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n{extra}",
        everything().display()
    );
    let config = ServersConfig::from_toml(&text, Path::new("/")).expect("config");
    McpClient::new(config)
}

fn call(tool: &str, arguments: Value) -> ToolCall {
    ToolCall {
        server: "everything".into(),
        tool: tool.into(),
        arguments: arguments.as_object().cloned().unwrap_or_default(),
        timeout: None,
        progress: None,
    }
}

fn kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn calls_reuse_one_session_and_return_structured_content_or_content() {
    let client = stdio_client("");
    let echoed = client
        .call_tool(call("echo", json!({"message": "hi"})))
        .await
        .unwrap();
    assert_eq!(echoed.output, json!([{"type": "text", "text": "Echo: hi"}]));
    assert!(!echoed.structured);
    let pid = client
        .server_pid("everything")
        .await
        .expect("a stdio session");
    let weather = client
        .call_tool(call(
            "get-structured-content",
            json!({"location": "Chicago"}),
        ))
        .await
        .unwrap();
    assert!(weather.structured);
    assert_eq!(weather.output["conditions"], "Light rain / drizzle");
    let calls = (0..8).map(|i| client.call_tool(call("get-sum", json!({"a": i, "b": 1}))));
    for (i, outcome) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let text = outcome.unwrap().output[0]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.ends_with(&format!("is {}.", i + 1)), "{text}");
    }
    assert_eq!(client.sessions_opened("everything"), Some(1));
    assert_eq!(client.server_pid("everything").await, Some(pid));
}

#[tokio::test]
async fn refused_arguments_fail_for_good() {
    let client = stdio_client("");
    let error = client
        .call_tool(call("get-sum", json!({"a": "one", "b": 2})))
        .await
        .unwrap_err();
    // The server's SDK answers bad arguments with an `isError` result naming the field.
    let McpCallError::ToolError { message, .. } = &error else {
        panic!("a tool error expected: {error:?}")
    };
    assert!(message.contains("expected number"), "{message}");
    assert!(!error.retryable());
    let error = client
        .call_tool(call("no-such-tool", json!({})))
        .await
        .unwrap_err();
    assert!(!error.retryable(), "{error:?}");
    // The session is still good.
    client
        .call_tool(call("echo", json!({"message": "still here"})))
        .await
        .unwrap();
    assert_eq!(client.sessions_opened("everything"), Some(1));
}

#[tokio::test]
async fn progress_notifications_reach_the_callback_in_order() {
    let client = stdio_client("");
    let seen: Arc<Mutex<Vec<ToolProgress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let outcome = client
        .call_tool(ToolCall {
            progress: Some(Arc::new(move |p| sink.lock().unwrap().push(p))),
            ..call(
                "trigger-long-running-operation",
                json!({"duration": 1, "steps": 4}),
            )
        })
        .await
        .unwrap();
    assert!(
        outcome.output[0]["text"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{:?}",
        outcome.output
    );
    // Notifications are handled on tasks of their own: the last may land just after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen: Vec<(f64, Option<f64>)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|p| (p.progress, p.total))
        .collect();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert_eq!(seen.last(), Some(&(4.0, Some(4.0))));
}

#[tokio::test]
async fn a_server_killed_mid_call_loses_that_call_and_the_next_gets_a_fresh_session() {
    let client = stdio_client("");
    client
        .call_tool(call("echo", json!({"message": "warm"})))
        .await
        .unwrap();
    let pid = client.server_pid("everything").await.unwrap();
    let long = tokio::spawn(client.call_tool(call(
        "trigger-long-running-operation",
        json!({"duration": 10, "steps": 10}),
    )));
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(pid);
    let error = tokio::time::timeout(Duration::from_secs(5), long)
        .await
        .expect("the call ends when its server dies")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), "mcp_session_lost", "{error:?}");
    assert!(error.retryable());
    let echoed = client
        .call_tool(call("echo", json!({"message": "again"})))
        .await
        .unwrap();
    assert_eq!(echoed.output[0]["text"], "Echo: again");
    assert_eq!(client.sessions_opened("everything"), Some(2));
    assert_ne!(client.server_pid("everything").await, Some(pid));
}

#[tokio::test]
async fn a_timed_out_or_dropped_call_leaves_the_session_to_the_others() {
    let client = stdio_client("");
    let error = client
        .call_tool(ToolCall {
            timeout: Some(Duration::from_millis(300)),
            ..call(
                "trigger-long-running-operation",
                json!({"duration": 5, "steps": 5}),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "timed_out");
    let dropped = client.call_tool(call(
        "trigger-long-running-operation",
        json!({"duration": 5, "steps": 5}),
    ));
    let _ = tokio::time::timeout(Duration::from_millis(200), dropped).await;
    let echoed = client
        .call_tool(call("echo", json!({"message": "after"})))
        .await
        .unwrap();
    assert_eq!(echoed.output[0]["text"], "Echo: after");
    assert_eq!(client.sessions_opened("everything"), Some(1));
}

#[tokio::test]
async fn an_oversized_result_fails_cleanly() {
    let client = stdio_client("max_result_bytes = 500");
    let error = client
        .call_tool(call("echo", json!({"message": "x".repeat(2000)})))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "mcp_result_too_large", "{error:?}");
    assert!(!error.retryable());
    client
        .call_tool(call("echo", json!({"message": "small"})))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_child_gets_its_configured_environment_and_not_the_executors() {
    // SAFETY-free: the variable is only read, by this process's children through the lookup.
    let config = ServersConfig::from_toml(
        &format!(
            "[servers.everything]\ncommand = \"node\"\nargs = [\"{}\", \"stdio\"]\n\
             env = {{ PLAIN = \"p\", FROM_ENV = {{ env = \"MCP_TEST_SECRET\", prefix = \"s-\" }} }}",
            everything().display()
        ),
        Path::new("/"),
    )
    .unwrap();
    let client = McpClient::with_env(config, |name| match name {
        "MCP_TEST_SECRET" => Some("42".into()),
        "DATABASE_URL" => Some("postgres://secret".into()),
        other => std::env::var(other).ok(),
    });
    let env = client.call_tool(call("get-env", json!({}))).await.unwrap();
    let text = env.output[0]["text"].as_str().unwrap();
    let env: Value = serde_json::from_str(text).unwrap();
    assert_eq!(env["PLAIN"], "p");
    assert_eq!(env["FROM_ENV"], "s-42");
    assert!(env.get("DATABASE_URL").is_none(), "{env}");
    assert!(env.get("PATH").is_some(), "{env}");
}

/// server-everything's Streamable HTTP transport, on a free port.
struct HttpServer {
    child: tokio::process::Child,
    url: String,
}

impl HttpServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("node")
            .arg(everything())
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

#[tokio::test]
async fn streamable_http_calls_share_a_session_and_report_progress() {
    let mut server = HttpServer::start().await;
    let config = ServersConfig::from_toml(
        &format!(
            "[servers.everything]\nurl = \"{}\"\nheaders = {{ \"X-Flowline-Test\" = {{ env = \"MCP_TEST_TOKEN\" }} }}",
            server.url
        ),
        Path::new("/"),
    )
    .unwrap();
    let client = McpClient::with_env(config, |name| {
        (name == "MCP_TEST_TOKEN").then(|| "t".to_owned())
    });
    let sum = client
        .call_tool(call("get-sum", json!({"a": 2, "b": 3})))
        .await
        .unwrap();
    assert_eq!(sum.output[0]["text"], "The sum of 2 and 3 is 5.");
    let seen: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    client
        .call_tool(ToolCall {
            progress: Some(Arc::new(move |p| sink.lock().unwrap().push(p.progress))),
            ..call(
                "trigger-long-running-operation",
                json!({"duration": 1, "steps": 3}),
            )
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*seen.lock().unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(client.sessions_opened("everything"), Some(1));

    // The server goes away: the call fails as retryable, and once it is back a fresh
    // session serves.
    server.child.kill().await.unwrap();
    let error = client
        .call_tool(call("echo", json!({"message": "gone"})))
        .await
        .unwrap_err();
    assert!(error.retryable(), "{error:?}");
}

#[tokio::test]
async fn the_example_servers_file_reaches_its_servers() {
    everything();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mcp-servers.example.toml");
    let client = McpClient::with_env(ServersConfig::load(&path).unwrap(), |name| {
        std::env::var(name).ok().or_else(|| {
            // What scripts/lib.sh's ensure_python_venv exports.
            (name == "FLOWLINE_PYTHON").then(|| {
                format!(
                    "{}/.cache/flowline/venv/bin/python",
                    std::env::var("HOME").unwrap_or_default()
                )
            })
        })
    });
    let echoed = client
        .call_tool(call("echo", json!({"message": "example"})))
        .await
        .unwrap();
    assert_eq!(echoed.output[0]["text"], "Echo: example");
    let time = client
        .call_tool(ToolCall {
            server: "time".into(),
            ..call("get_current_time", json!({"timezone": "UTC"}))
        })
        .await
        .unwrap();
    assert!(time.structured, "{time:?}");
    assert_eq!(time.output["timezone"], "UTC");
}
