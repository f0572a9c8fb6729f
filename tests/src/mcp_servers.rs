//! The third-party MCP servers the tests and benchmarks call, installed pinned by
//! `scripts/lib.sh`: npm `@modelcontextprotocol/server-everything` (`ensure_mcp_servers`,
//! into `tests/mcp-servers`) and PyPI `mcp-server-time` (`ensure_python_venv`, whose
//! interpreter is `FLOWLINE_PYTHON`). A [`ServersFile`] names them for an executor; a
//! [`EverythingHttp`] runs server-everything's Streamable HTTP transport on a free port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

/// server-everything's entry point.
pub fn everything_script() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        path.exists(),
        "{} is missing: run `source scripts/lib.sh && ensure_mcp_servers` (scripts/test does)",
        path.display()
    );
    path
}

/// The venv's Python, which has `mcp-server-time`.
pub fn python() -> PathBuf {
    let python = std::env::var("FLOWLINE_PYTHON").map_or_else(
        |_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/flowline/venv/bin/python")
        },
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run `source scripts/lib.sh && ensure_python_venv` (scripts/test does)",
        python.display()
    );
    python
}

/// A servers file in a directory of its own (removed on drop) naming `everything` (stdio;
/// every start of its process is logged with its pid), `time` (mcp-server-time over stdio)
/// and, when given, `everything_http` (a Streamable HTTP URL).
pub struct ServersFile {
    /// The file.
    pub path: PathBuf,
    dir: PathBuf,
}

impl ServersFile {
    /// Writes the file; `extra` is appended (more servers, `[defaults]` must not be in it).
    pub fn write(everything_http: Option<&str>, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowline-mcp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let http = everything_http
            .map(|url| format!("[servers.everything_http]\nurl = \"{url}\"\n"))
            .unwrap_or_default();
        // `exec` keeps the logged pid the server's own.
        let text = format!(
            r#"[servers.everything]
command = "sh"
args = ["-c", "echo $$ >> starts.log; exec node \"$0\" stdio", "{everything}"]

[servers.time]
command = "{python}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]

{http}
{extra}
"#,
            everything = everything_script().display(),
            python = python().display(),
        );
        let path = dir.join("mcp-servers.toml");
        std::fs::write(&path, text).expect("servers file written");
        Self { path, dir }
    }

    /// The pids of the stdio `everything` server's processes, in start order.
    pub fn everything_starts(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("starts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }
}

impl Drop for ServersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// server-everything's Streamable HTTP transport on a free port, stopped on drop.
pub struct EverythingHttp {
    /// Its MCP endpoint.
    pub url: String,
    _child: tokio::process::Child,
}

impl EverythingHttp {
    /// Starts it and waits until it listens.
    pub async fn start() -> Self {
        let port = crate::free_port();
        let child = tokio::process::Command::new("node")
            .arg(everything_script())
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let listening = crate::eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(listening.is_some(), "server-everything did not listen");
        Self {
            url: format!("http://127.0.0.1:{port}/mcp"),
            _child: child,
        }
    }
}
