//! Anthropic Messages, streamed: `POST {base}/v1/messages` with `x-api-key` and
//! `anthropic-version: 2023-06-01`; events `message_start` (model and input usage),
//! `content_block_delta` (text), `message_delta` (stop reason and cumulative output usage),
//! `message_stop`, `ping`, and `error`.
//!
//! Usage: `input_tokens` already excludes `cache_read_input_tokens` and
//! `cache_creation_input_tokens`; they map one to one. Messages has no JSON mode: a step's
//! JSON schema is put in the system prompt and the answer validated afterwards.

use flowline_domain::TokenUsage;
use serde_json::{Value, json};

use crate::error::{CallError, FailureKind};
use crate::{ChatRequest, StreamState};

/// The request path under the base URL.
pub const PATH: &str = "/v1/messages";

/// The `anthropic-version` header's value.
pub const VERSION: &str = "2023-06-01";

/// The request body.
pub fn body(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut system = request.system.clone().unwrap_or_default();
    if let Some(schema) = &request.json_schema {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(
            "Answer with one JSON document and nothing else (no prose, no code fence) that \
             conforms to this JSON Schema:\n",
        );
        system.push_str(&schema.to_string());
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    body
}

fn count(usage: &Value, field: &str) -> Option<u64> {
    usage.get(field).and_then(Value::as_u64)
}

/// Normalises an Anthropic `usage` object (on top of `previous`: `message_delta` repeats
/// only what changed).
pub fn usage(usage: &Value, previous: TokenUsage) -> TokenUsage {
    TokenUsage {
        input_tokens: count(usage, "input_tokens").unwrap_or(previous.input_tokens),
        output_tokens: count(usage, "output_tokens").unwrap_or(previous.output_tokens),
        cache_read_tokens: count(usage, "cache_read_input_tokens")
            .unwrap_or(previous.cache_read_tokens),
        cache_write_tokens: count(usage, "cache_creation_input_tokens")
            .unwrap_or(previous.cache_write_tokens),
        reasoning_tokens: 0,
    }
}

/// The message of an Anthropic error body (`{"type":"error","error":{"type","message"}}`).
pub fn error_message(body: &Value) -> Option<String> {
    let message = body.pointer("/error/message").and_then(Value::as_str)?;
    Some(match body.pointer("/error/type").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {message}"),
        None => message.to_owned(),
    })
}

/// Reads one SSE event into `state`.
pub fn on_event(
    state: &mut StreamState,
    event: &str,
    data: &str,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<(), CallError> {
    let payload: Value = serde_json::from_str(data).map_err(|e| {
        CallError::new(
            FailureKind::Malformed,
            false,
            format!("the data of a '{event}' event is not JSON ({e})"),
        )
    })?;
    let kind = payload
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(event)
        .to_owned();
    match kind.as_str() {
        "message_start" => {
            if let Some(model) = payload.pointer("/message/model").and_then(Value::as_str) {
                state.model = Some(model.to_owned());
            }
            if let Some(reported) = payload.pointer("/message/usage") {
                state.usage = Some(usage(reported, TokenUsage::default()));
            }
        }
        "content_block_delta" => {
            if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str)
                && !text.is_empty()
            {
                state.push_text(text, on_text);
            }
        }
        "message_delta" => {
            if let Some(reason) = payload
                .pointer("/delta/stop_reason")
                .and_then(Value::as_str)
            {
                state.finish_reason = Some(reason.to_owned());
            }
            if let Some(reported) = payload.get("usage") {
                state.usage = Some(usage(reported, state.usage.unwrap_or_default()));
            }
        }
        "message_stop" => state.done = true,
        "error" => {
            let message = error_message(&payload).unwrap_or_else(|| data.to_owned());
            let error_type = payload.pointer("/error/type").and_then(Value::as_str);
            let (kind, retryable) = match error_type {
                Some("overloaded_error" | "api_error" | "timeout_error") => {
                    (FailureKind::Unavailable, true)
                }
                Some("rate_limit_error") => (FailureKind::RateLimited, true),
                _ => (FailureKind::Refused, false),
            };
            return Err(CallError::new(
                kind,
                retryable,
                format!("error in the stream: {message}"),
            ));
        }
        // ping, content_block_start, content_block_stop, and event types added later.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_maps_one_to_one_and_output_is_cumulative() {
        let mut state = StreamState::default();
        let mut sink = |_: &str| {};
        on_event(
            &mut state,
            "message_start",
            r#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":200,"cache_read_input_tokens":800,"cache_creation_input_tokens":100,"output_tokens":1}}}"#,
            &mut sink,
        )
        .unwrap();
        on_event(
            &mut state,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            &mut sink,
        )
        .unwrap();
        on_event(
            &mut state,
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}"#,
            &mut sink,
        )
        .unwrap();
        on_event(
            &mut state,
            "message_stop",
            r#"{"type":"message_stop"}"#,
            &mut sink,
        )
        .unwrap();
        assert_eq!(
            state.usage.unwrap(),
            TokenUsage {
                input_tokens: 200,
                output_tokens: 42,
                cache_read_tokens: 800,
                cache_write_tokens: 100,
                reasoning_tokens: 0,
            }
        );
        assert_eq!(state.text, "Hi");
        assert_eq!(state.finish_reason.as_deref(), Some("end_turn"));
        assert!(state.done);
    }

    #[test]
    fn an_overloaded_error_event_is_retryable() {
        let mut state = StreamState::default();
        let error = on_event(
            &mut state,
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(error.kind, FailureKind::Unavailable);
        assert!(error.retryable);
        assert!(error.message.contains("Overloaded"));
    }

    #[test]
    fn a_schema_goes_into_the_system_prompt() {
        let request = ChatRequest {
            model: "m".into(),
            system: Some("Be brief.".into()),
            messages: vec![crate::Message::user("hi")],
            max_tokens: 10,
            temperature: None,
            json_schema: Some(json!({"type": "object"})),
        };
        let body = body(&request);
        let system = body["system"].as_str().unwrap();
        assert!(system.starts_with("Be brief."));
        assert!(system.contains(r#"{"type":"object"}"#));
        assert_eq!(body["stream"], json!(true));
    }
}
