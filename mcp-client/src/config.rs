//! The MCP servers file: which servers `mcp_tool` steps may call and how each is reached.
//!
//! ```toml
//! [defaults]                      # every server's limits, unless it sets its own
//! call_timeout = "60s"            # a call's limit when the step sets no shorter timeout
//! connect_timeout = "30s"         # starting the process or connecting, and the handshake
//! max_result_bytes = 4194304      # JSON size of a tool's result; larger fails the call
//!
//! [servers.everything]            # a child process speaking MCP on stdin/stdout
//! command = "node"
//! args = ["server.js", "stdio"]
//! cwd = ".."                      # relative to this file; default: this file's directory
//! env = { LOG_LEVEL = "info", API_KEY = { env = "EVERYTHING_API_KEY" } }
//!
//! [servers.time]
//! command = { env = "FLOWLINE_PYTHON" }   # any value may come from the environment
//! args = ["-m", "mcp_server_time"]
//!
//! [servers.remote]                # a Streamable HTTP endpoint
//! url = "https://mcp.example.com/mcp"
//! headers = { "X-Team" = "data", Authorization = { env = "REMOTE_MCP_TOKEN", prefix = "Bearer " } }
//! ```
//!
//! A value written `{ env = "NAME" }` is read from the executor's environment when a
//! session opens (keep secrets there, not in the file); an unset variable fails that
//! server's calls with `not_configured`, naming it. A child process gets a clean
//! environment: only `HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM`, `USER`, `LANG` and
//! `TMPDIR` of the executor's, plus what `env` lists (the executor's database URL and keys
//! are not handed to third-party servers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Variables a child process inherits from the executor (the MCP SDKs' default set).
pub const INHERITED_VARIABLES: [&str; 8] = [
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR",
];

/// Headers the Streamable HTTP transport sets itself.
const RESERVED_HEADERS: [&str; 4] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Why the servers file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("MCP servers file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("MCP servers file{}: {message}", at_path(.path))]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong, with its place in the file.
        message: String,
    },
}

fn at_path(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// A setting's value: written in the file, or read from an environment variable (with an
/// optional prefix, e.g. `Bearer `) when a session opens.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ValueSource {
    /// The value as written.
    Literal(String),
    /// Read from the executor's environment.
    FromEnv(EnvReference),
}

/// `{ env = "NAME", prefix = "Bearer " }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvReference {
    /// The variable.
    pub env: String,
    /// Put before the variable's value.
    #[serde(default)]
    pub prefix: String,
}

impl std::fmt::Debug for ValueSource {
    // Literal values may be secrets written in the file: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Literal(_) => f.write_str("<literal>"),
            Self::FromEnv(reference) => write!(f, "<from ${}>", reference.env),
        }
    }
}

impl ValueSource {
    /// The value, reading variables through `lookup`; `Err` names an unset variable.
    pub fn resolve(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            Self::Literal(value) => Ok(value.clone()),
            Self::FromEnv(reference) => lookup(&reference.env)
                .map(|value| format!("{}{value}", reference.prefix))
                .ok_or_else(|| format!("the environment variable {} is not set", reference.env)),
        }
    }

    /// Whether the value comes from the environment (treated as a secret).
    pub fn is_from_env(&self) -> bool {
        matches!(self, Self::FromEnv(_))
    }
}

/// A server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A call's limit when the step sets no shorter timeout.
    pub call_timeout: Duration,
    /// Starting the process or connecting, and the MCP handshake.
    pub connect_timeout: Duration,
    /// Largest JSON of a tool's result (its `structuredContent` or `content`).
    pub max_result_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            max_result_bytes: 4 * 1024 * 1024,
        }
    }
}

/// How a server is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportSpec {
    /// A child process speaking MCP over stdin/stdout.
    Stdio(StdioSpec),
    /// An MCP Streamable HTTP endpoint.
    StreamableHttp(HttpSpec),
}

/// A child-process server.
#[derive(Debug, Clone, PartialEq)]
pub struct StdioSpec {
    /// The program: a name looked up on `PATH`, or a path (relative ones against the
    /// file's directory; see [`StdioSpec::program`]).
    pub command: ValueSource,
    /// The file's directory.
    pub base_dir: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set for it, besides [`INHERITED_VARIABLES`].
    pub env: BTreeMap<String, ValueSource>,
    /// Its working directory.
    pub cwd: PathBuf,
}

impl StdioSpec {
    /// The program to start, its value read through `lookup`: a path with a `/` that is
    /// relative is taken against the file's directory; a bare name is looked up on `PATH`.
    pub fn program(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
        let command = self.command.resolve(lookup)?;
        if command.trim().is_empty() {
            return Err("the command is empty".into());
        }
        Ok(
            if command.contains('/') && Path::new(&command).is_relative() {
                self.base_dir.join(command)
            } else {
                PathBuf::from(command)
            },
        )
    }
}

/// A Streamable HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    /// The MCP endpoint.
    pub url: url::Url,
    /// Headers sent with every request.
    pub headers: BTreeMap<String, ValueSource>,
}

/// One configured server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    /// Its name (what a step's `config.server` says).
    pub name: String,
    /// How it is reached.
    pub transport: TransportSpec,
    /// Its limits.
    pub limits: ServerLimits,
}

/// Every configured server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServersConfig {
    /// By name.
    pub servers: BTreeMap<String, ServerSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    defaults: LimitsFormat,
    #[serde(default)]
    servers: BTreeMap<String, ServerFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFormat {
    call_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_result_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFormat {
    command: Option<ValueSource>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, ValueSource>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, ValueSource>,
    #[serde(flatten)]
    limits: LimitsFormat,
}

impl LimitsFormat {
    fn apply(&self, base: ServerLimits, at: &str) -> Result<ServerLimits, String> {
        let duration = |text: &Option<String>, key: &str, default: Duration| match text {
            None => Ok(default),
            Some(text) => match flowline_domain::policy::parse_duration(text) {
                Ok(duration) if !duration.is_zero() => Ok(duration),
                Ok(_) => Err(format!("{at}.{key}: must be longer than 0")),
                Err(message) => Err(format!("{at}.{key}: {message}")),
            },
        };
        let max_result_bytes = match self.max_result_bytes {
            None => base.max_result_bytes,
            Some(0) => return Err(format!("{at}.max_result_bytes: must be more than 0")),
            Some(bytes) => bytes,
        };
        Ok(ServerLimits {
            call_timeout: duration(&self.call_timeout, "call_timeout", base.call_timeout)?,
            connect_timeout: duration(
                &self.connect_timeout,
                "connect_timeout",
                base.connect_timeout,
            )?,
            max_result_bytes,
        })
    }
}

impl ServersConfig {
    /// No servers: every call fails with `mcp_unknown_server`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads the file at `path`; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(|dir| {
                if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
        Self::from_toml(&text, &base).map_err(|error| match error {
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses a servers file's text; relative paths are taken against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: None,
            message,
        };
        let file: FileFormat = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let defaults = file
            .defaults
            .apply(ServerLimits::default(), "defaults")
            .map_err(invalid)?;
        let mut servers = BTreeMap::new();
        for (name, entry) in file.servers {
            let at = format!("servers.{name}");
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "{at}: a server name must be non-empty, without control characters"
                )));
            }
            let limits = entry.limits.apply(defaults, &at).map_err(invalid)?;
            let transport = match (entry.command, entry.url) {
                (Some(command), None) => {
                    if !entry.headers.is_empty() {
                        return Err(invalid(format!(
                            "{at}.headers: only servers with a `url` send headers"
                        )));
                    }
                    if matches!(&command, ValueSource::Literal(c) if c.trim().is_empty()) {
                        return Err(invalid(format!("{at}.command: must not be empty")));
                    }
                    let cwd = match entry.cwd {
                        None => base_dir.to_owned(),
                        Some(cwd) if cwd.is_relative() => base_dir.join(cwd),
                        Some(cwd) => cwd,
                    };
                    TransportSpec::Stdio(StdioSpec {
                        command,
                        base_dir: base_dir.to_owned(),
                        args: entry.args,
                        env: entry.env,
                        cwd,
                    })
                }
                (None, Some(url)) => {
                    if !entry.args.is_empty() || !entry.env.is_empty() || entry.cwd.is_some() {
                        return Err(invalid(format!(
                            "{at}: `args`, `env` and `cwd` are for servers with a `command`"
                        )));
                    }
                    let url = url::Url::parse(&url)
                        .map_err(|e| invalid(format!("{at}.url: '{url}' is not a URL: {e}")))?;
                    if !matches!(url.scheme(), "http" | "https") {
                        return Err(invalid(format!(
                            "{at}.url: scheme '{}' is not http or https",
                            url.scheme()
                        )));
                    }
                    for header in entry.headers.keys() {
                        reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(
                            |_| invalid(format!("{at}.headers: '{header}' is not a header name")),
                        )?;
                        if RESERVED_HEADERS
                            .iter()
                            .any(|reserved| header.eq_ignore_ascii_case(reserved))
                        {
                            return Err(invalid(format!(
                                "{at}.headers: '{header}' is set by the MCP transport itself"
                            )));
                        }
                    }
                    TransportSpec::StreamableHttp(HttpSpec {
                        url,
                        headers: entry.headers,
                    })
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(format!(
                        "{at}: give either `command` (stdio) or `url` (Streamable HTTP), not both"
                    )));
                }
                (None, None) => {
                    return Err(invalid(format!(
                        "{at}: needs `command` (a stdio server) or `url` (a Streamable HTTP server)"
                    )));
                }
            };
            servers.insert(
                name.clone(),
                ServerSpec {
                    name,
                    transport,
                    limits,
                },
            );
        }
        Ok(Self { servers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [defaults]
        call_timeout = "10s"

        [servers.local]
        command = "bin/server"
        args = ["--stdio"]
        cwd = "work"
        env = { PLAIN = "1", SECRET = { env = "LOCAL_SECRET" } }
        max_result_bytes = 1000

        [servers.remote]
        url = "http://127.0.0.1:3001/mcp"
        headers = { "X-Team" = "data", Authorization = { env = "TOKEN", prefix = "Bearer " } }
        call_timeout = "2s"
    "#;

    #[test]
    fn reads_both_kinds_of_server_with_their_limits() {
        let config = ServersConfig::from_toml(EXAMPLE, Path::new("/etc/flowline")).unwrap();
        let local = &config.servers["local"];
        let TransportSpec::Stdio(stdio) = &local.transport else {
            panic!("stdio expected")
        };
        assert_eq!(
            stdio.program(|_| None).unwrap(),
            Path::new("/etc/flowline/bin/server")
        );
        assert_eq!(stdio.cwd, Path::new("/etc/flowline/work"));
        assert_eq!(local.limits.call_timeout, Duration::from_secs(10));
        assert_eq!(local.limits.max_result_bytes, 1000);
        let remote = &config.servers["remote"];
        let TransportSpec::StreamableHttp(http) = &remote.transport else {
            panic!("http expected")
        };
        assert_eq!(http.url.as_str(), "http://127.0.0.1:3001/mcp");
        assert_eq!(remote.limits.call_timeout, Duration::from_secs(2));
        assert_eq!(
            remote.limits.max_result_bytes,
            ServerLimits::default().max_result_bytes
        );
        let token = &http.headers["Authorization"];
        assert_eq!(
            token.resolve(|name| (name == "TOKEN").then(|| "t0k".to_owned())),
            Ok("Bearer t0k".to_owned())
        );
        assert_eq!(
            token.resolve(|_| None),
            Err("the environment variable TOKEN is not set".to_owned())
        );
    }

    #[test]
    fn debug_output_shows_no_values() {
        let config = ServersConfig::from_toml(EXAMPLE, Path::new("/")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("\"data\""), "{shown}");
        assert!(shown.contains("<from $TOKEN>"), "{shown}");
    }

    #[test]
    fn every_mistake_is_named() {
        let refused = |text: &str| {
            ServersConfig::from_toml(text, Path::new("/"))
                .unwrap_err()
                .to_string()
        };
        assert!(refused("[servers.a]\nargs = []").contains("servers.a: needs `command`"));
        assert!(refused("[servers.a]\ncommand = \"x\"\nurl = \"http://h\"").contains("not both"));
        assert!(refused("[servers.a]\nurl = \"ftp://h\"").contains("servers.a.url"));
        assert!(
            refused("[servers.a]\ncommand = \"x\"\ncall_timeout = \"soon\"")
                .contains("servers.a.call_timeout")
        );
        assert!(refused("[servers.a]\ncommand = \"x\"\ncolour = 1").contains("colour"));
        assert!(
            refused("[servers.a]\ncommand = \"x\"\nheaders = { A = \"b\" }")
                .contains("servers.a.headers")
        );
    }

    #[test]
    fn the_committed_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/mcp-servers.example.toml");
        let config = ServersConfig::load(&path).unwrap();
        assert!(config.servers.contains_key("everything"), "{config:?}");
        assert!(config.servers.contains_key("time"), "{config:?}");
    }
}
