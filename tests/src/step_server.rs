//! A local HTTP server for `http` steps: it records every request (path, idempotency key,
//! when it began and ended, whether the client dropped it) and answers as the path says:
//! `/ok/{name}` echoes JSON, `/slow/{ms}` answers after a pause, `/status/{code}` answers
//! with that status, `/flaky/{key}/{failures}` fails with 503 that many times per key
//! then succeeds, `/limited/{key}` answers 429 with `Retry-After: 2` once per key, `/nul`
//! answers JSON with NUL characters, `/deep` JSON nested 100 deep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The path.
    pub path: String,
    /// Its `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// When it arrived.
    pub began: Instant,
    /// When the answer was sent (`None` while running or when dropped).
    pub ended: Option<Instant>,
    /// The client went away before the answer.
    pub dropped: bool,
    /// The request body.
    pub body: String,
}

#[derive(Default)]
struct Seen {
    requests: Vec<SeenRequest>,
    failures: HashMap<String, u32>,
}

/// The running server.
#[derive(Clone)]
pub struct StepServer {
    /// Base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    seen: Arc<Mutex<Seen>>,
}

/// Marks its request dropped unless it completed.
struct Watch {
    seen: Arc<Mutex<Seen>>,
    index: usize,
    completed: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        let request = &mut seen.requests[self.index];
        if self.completed {
            request.ended = Some(Instant::now());
        } else {
            request.dropped = true;
        }
    }
}

async fn answer(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let index = {
        let mut state = seen.lock().unwrap();
        state.requests.push(SeenRequest {
            path: format!("/{path}"),
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            began: Instant::now(),
            ended: None,
            dropped: false,
            body: body.clone(),
        });
        state.requests.len() - 1
    };
    let mut watch = Watch {
        seen: Arc::clone(&seen),
        index,
        completed: false,
    };
    let parts: Vec<&str> = path.split('/').collect();
    let response = match parts.as_slice() {
        ["slow", ms, ..] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            axum::Json(json!({"slept_ms": ms})).into_response()
        }
        ["status", code, ..] => {
            let status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
            (status, format!("status {code}")).into_response()
        }
        ["flaky", key, failures, ..] => {
            let failures: u32 = failures.parse().unwrap_or(2);
            let failed = {
                let mut state = seen.lock().unwrap();
                let count = state.failures.entry((*key).to_owned()).or_default();
                *count += 1;
                *count <= failures
            };
            if failed {
                (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
            } else {
                axum::Json(json!({"key": key})).into_response()
            }
        }
        ["nul", ..] => (
            [("content-type", "application/json")],
            "{\"text\": \"a\\u0000b\", \"k\\u0000\": 1}",
        )
            .into_response(),
        ["deep", ..] => (
            [("content-type", "application/json")],
            format!("{}1{}", "[".repeat(100), "]".repeat(100)),
        )
            .into_response(),
        ["limited", key, ..] => {
            let first = {
                let mut state = seen.lock().unwrap();
                let count = state.failures.entry(format!("limited/{key}")).or_default();
                *count += 1;
                *count == 1
            };
            if first {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "2")],
                    "slow down",
                )
                    .into_response()
            } else {
                axum::Json(json!({"key": key})).into_response()
            }
        }
        _ => {
            let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            axum::Json(json!({"path": path, "body": parsed})).into_response()
        }
    };
    watch.completed = true;
    response
}

impl StepServer {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let router = Router::new()
            .route("/{*path}", any(answer))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, seen }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}
