//! Off-the-shelf JavaScript GraphQL clients from npm (`graphql-ws` over `ws`, and
//! `graphql-request`), driven through `tests/clients/js/client.mjs`, so the query-service is
//! checked against clients this project did not write. `scripts/test` installs them
//! (`npm ci`, pinned by the package-lock).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// How long a client may stay silent before the test gives up (a hang guard, not an
/// assertion about speed).
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn node(mode: &str, options: &Value) -> Command {
    let dir = client_dir();
    assert!(
        dir.join("node_modules/graphql-ws").exists(),
        "the npm test clients are missing: run scripts/test, or `npm ci` in {}",
        dir.display()
    );
    let mut command = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    command
        .current_dir(&dir)
        .arg("client.mjs")
        .arg(mode)
        .arg(with_credentials(options).to_string());
    command
}

/// `options` with the harness's credentials wherever the test named none: the
/// `authorization` connection parameter of a subscription and the `Authorization` header
/// of an HTTP request. A test sends none by naming it `null`.
fn with_credentials(options: &Value) -> Value {
    let mut options = options.clone();
    let Some(object) = options.as_object_mut() else {
        return options;
    };
    for (member, name) in [
        ("connectionParams", "authorization"),
        ("headers", "authorization"),
    ] {
        let members = object
            .entry(member)
            .or_insert_with(|| serde_json::json!({}));
        let Some(members) = members.as_object_mut() else {
            continue;
        };
        let named = members
            .keys()
            .find(|key| key.eq_ignore_ascii_case(name))
            .cloned();
        match named {
            Some(key) if members[&key].is_null() => {
                members.remove(&key);
            }
            Some(_) => {}
            None => {
                members.insert(name.into(), crate::auth::admin_bearer().into());
            }
        }
    }
    options
}

/// A `graphql-ws` client running one subscription in a Node process; killed on drop.
pub struct JsSubscription {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl JsSubscription {
    /// Subscribes with `{url, query, variables, connectionParams, headers}` (`url` is the
    /// `ws://…/graphql/ws` endpoint).
    pub fn start(options: &Value) -> Self {
        let mut child = node("subscribe", options)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs (Node 20+ is needed)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if sender.send(value).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line the client printed: `{"connected": true}`, `{"next": result}`,
    /// `{"error": …}` or `{"complete": true}`; `Null` once it exited.
    pub async fn line(&mut self) -> Value {
        tokio::time::timeout(SILENCE_LIMIT, self.lines.recv())
            .await
            .expect("the client printed nothing for a minute")
            .unwrap_or(Value::Null)
    }

    /// The next line the client prints within `wait`, if any (for what must not arrive).
    pub async fn line_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .map(|line| line.unwrap_or(Value::Null))
    }

    /// The next subscription result (`data` of the next `next` message), skipping the
    /// connection notice; panics on anything else.
    pub async fn next_data(&mut self) -> Value {
        loop {
            let line = self.line().await;
            if line.get("connected").is_some() {
                continue;
            }
            let next = line.get("next").unwrap_or_else(|| {
                panic!("expected a subscription result, got {line}");
            });
            assert!(next.get("errors").is_none(), "errors: {next}");
            return next["data"].clone();
        }
    }

    /// Stops the client.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JsSubscription {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one query with `graphql-request` (`{url, query, variables, headers}`); returns
/// `{"data": …}` or `{"error": …}`.
pub async fn js_query(options: &Value) -> Value {
    let mut command = node("query", options);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("node runs (Node 20+ is needed)");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "graphql-request client printed {text:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
