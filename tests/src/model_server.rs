//! A local model server speaking both wire APIs as the providers publish them: OpenAI Chat
//! Completions (`POST /v1/chat/completions`, SSE chunks, a usage chunk, `data: [DONE]`) and
//! Anthropic Messages (`POST /v1/messages`, `message_start` … `message_stop`). Each test
//! scripts the answers per model name (a queue of [`Reply`]s, then a default), and reads
//! back every request with its headers, so keys and versions can be asserted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// Tokens a scripted answer reports, in the normalised sense: `input` excludes cached
/// tokens and `output` excludes reasoning (the server renders each wire's own shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockUsage {
    /// Prompt tokens neither read from nor written to a cache.
    pub input: u64,
    /// Generated tokens, reasoning excluded.
    pub output: u64,
    /// Prompt tokens read from the cache.
    pub cache_read: u64,
    /// Prompt tokens written to the cache (Anthropic only).
    pub cache_write: u64,
    /// Reasoning tokens (OpenAI only).
    pub reasoning: u64,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A streamed answer: these text chunks, `delay` before each, then the usage.
    Text {
        /// The chunks.
        chunks: Vec<String>,
        /// Pause before each chunk.
        delay: Duration,
        /// Reported usage.
        usage: MockUsage,
    },
    /// An error status with an optional `Retry-After` and the wire's error body.
    Status {
        /// The status.
        code: u16,
        /// `Retry-After`, verbatim.
        retry_after: Option<String>,
        /// The error message in the body.
        message: String,
    },
    /// A 200 stream whose data is not JSON.
    Malformed,
    /// These chunks, then the connection breaks (no usage, no end marker).
    Cut {
        /// The chunks sent before the cut.
        chunks: Vec<String>,
    },
    /// Headers only after `delay` (past a client's timeout).
    Slow {
        /// The pause.
        delay: Duration,
    },
}

impl Reply {
    /// A streamed answer of `text` split into words, no delay, with `usage`.
    pub fn text(text: &str, usage: MockUsage) -> Self {
        Self::Text {
            chunks: split_words(text),
            delay: Duration::ZERO,
            usage,
        }
    }

    /// An error status.
    pub fn status(code: u16, retry_after: Option<&str>) -> Self {
        Self::Status {
            code,
            retry_after: retry_after.map(str::to_owned),
            message: format!("scripted status {code}"),
        }
    }
}

/// `text` in chunks of one word each (spaces kept), as a model streams it.
pub fn split_words(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct SeenModelRequest {
    /// `/v1/chat/completions` or `/v1/messages`.
    pub path: String,
    /// The `model` of the body.
    pub model: String,
    /// Its headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// Its body.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct Script {
    queued: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    seen: Vec<SeenModelRequest>,
}

/// The running server.
#[derive(Clone)]
pub struct ModelServer {
    /// Base URL (`http://127.0.0.1:PORT`), what a providers file names.
    pub url: String,
    script: Arc<Mutex<Script>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Openai,
    Anthropic,
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

fn openai_chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn openai_usage(usage: MockUsage) -> Value {
    json!({
        "prompt_tokens": usage.input + usage.cache_read,
        "completion_tokens": usage.output + usage.reasoning,
        "total_tokens": usage.input + usage.cache_read + usage.output + usage.reasoning,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    })
}

/// The stream's frames before the text chunks.
fn opening(wire: Wire, model: &str, usage: MockUsage) -> Vec<Bytes> {
    match wire {
        Wire::Openai => vec![sse(
            None,
            &openai_chunk(model, json!({"role": "assistant", "content": ""}), None),
        )],
        Wire::Anthropic => vec![
            sse(
                Some("message_start"),
                &json!({"type": "message_start", "message": {
                    "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null,
                    "usage": {"input_tokens": usage.input,
                              "cache_read_input_tokens": usage.cache_read,
                              "cache_creation_input_tokens": usage.cache_write,
                              "output_tokens": 1}}}),
            ),
            sse(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            ),
            sse(Some("ping"), &json!({"type": "ping"})),
        ],
    }
}

fn text_frame(wire: Wire, model: &str, text: &str) -> Bytes {
    match wire {
        Wire::Openai => sse(None, &openai_chunk(model, json!({"content": text}), None)),
        Wire::Anthropic => sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
        ),
    }
}

fn closing(wire: Wire, model: &str, usage: MockUsage) -> Vec<Bytes> {
    match wire {
        Wire::Openai => vec![
            sse(None, &openai_chunk(model, json!({}), Some("stop"))),
            sse(
                None,
                &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                        "model": model, "choices": [], "usage": openai_usage(usage)}),
            ),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ],
        Wire::Anthropic => vec![
            sse(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            sse(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": usage.output}}),
            ),
            sse(Some("message_stop"), &json!({"type": "message_stop"})),
        ],
    }
}

fn error_body(wire: Wire, code: u16, message: &str) -> Value {
    match wire {
        Wire::Openai => json!({"error": {"message": message, "type": "mock_error", "code": code}}),
        Wire::Anthropic => {
            let kind = match code {
                429 => "rate_limit_error",
                529 => "overloaded_error",
                500.. => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
}

fn event_stream(
    frames: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(frames))
        .unwrap()
}

async fn answer(
    wire: Wire,
    script: Arc<Mutex<Script>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = parsed["model"].as_str().unwrap_or("").to_owned();
    let reply = {
        let mut script = script.lock().unwrap();
        script.seen.push(SeenModelRequest {
            path: match wire {
                Wire::Openai => "/v1/chat/completions".into(),
                Wire::Anthropic => "/v1/messages".into(),
            },
            model: model.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: parsed,
            at: Instant::now(),
        });
        let queued = script.queued.get_mut(&model).and_then(VecDeque::pop_front);
        queued
            .or_else(|| script.defaults.get(&model).cloned())
            .unwrap_or_else(|| {
                Reply::text(
                    &format!("Hello from {model}"),
                    MockUsage {
                        input: 10,
                        output: 3,
                        ..MockUsage::default()
                    },
                )
            })
    };
    match reply {
        Reply::Text {
            chunks,
            delay,
            usage,
        } => {
            let first = futures::stream::iter(opening(wire, &model, usage));
            let text_model = model.clone();
            let texts = futures::stream::iter(chunks).then(move |chunk| {
                let model = text_model.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    text_frame(wire, &model, &chunk)
                }
            });
            let last = futures::stream::iter(closing(wire, &model, usage));
            event_stream(first.chain(texts).chain(last).map(Ok::<_, std::io::Error>))
        }
        Reply::Status {
            code,
            retry_after,
            message,
        } => {
            let mut response = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(error_body(wire, code, &message)),
            )
                .into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().unwrap());
            }
            response
        }
        Reply::Malformed => event_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from_static(b"event: content_block_delta\ndata: {this is not json\n\n"),
        )])),
        Reply::Cut { chunks } => {
            let usage = MockUsage::default();
            let mut frames = opening(wire, &model, usage);
            frames.extend(chunks.iter().map(|c| text_frame(wire, &model, c)));
            let frames = futures::stream::iter(frames.into_iter().map(Ok)).chain(
                futures::stream::once(async {
                    // Lets the frames reach the client before the connection breaks.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("connection cut by the script"))
                }),
            );
            event_stream(frames)
        }
        Reply::Slow { delay } => {
            tokio::time::sleep(delay).await;
            let usage = MockUsage {
                input: 1,
                output: 1,
                ..MockUsage::default()
            };
            let mut frames = opening(wire, &model, usage);
            frames.push(text_frame(wire, &model, "late"));
            frames.extend(closing(wire, &model, usage));
            event_stream(futures::stream::iter(
                frames.into_iter().map(Ok::<_, std::io::Error>),
            ))
        }
    }
}

impl ModelServer {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let router = Router::new()
            .route(
                "/v1/chat/completions",
                post(
                    |State(s): State<Arc<Mutex<Script>>>, headers: HeaderMap, body: Bytes| {
                        answer(Wire::Openai, s, headers, body)
                    },
                ),
            )
            .route(
                "/v1/messages",
                post(
                    |State(s): State<Arc<Mutex<Script>>>, headers: HeaderMap, body: Bytes| {
                        answer(Wire::Anthropic, s, headers, body)
                    },
                ),
            )
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, script }
    }

    /// Queues answers for requests of `model`, in order.
    pub fn script(&self, model: &str, replies: impl IntoIterator<Item = Reply>) {
        self.script
            .lock()
            .unwrap()
            .queued
            .entry(model.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The answer for `model` once its queue is empty (without one: "Hello from
    /// {model}", 10 input and 3 output tokens).
    pub fn always(&self, model: &str, reply: Reply) {
        self.script
            .lock()
            .unwrap()
            .defaults
            .insert(model.to_owned(), reply);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenModelRequest> {
        self.script.lock().unwrap().seen.clone()
    }

    /// The requests for `model`.
    pub fn requests_for(&self, model: &str) -> Vec<SeenModelRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.model == model)
            .collect()
    }
}
