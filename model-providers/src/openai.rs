//! OpenAI Chat Completions, streamed: `POST {base}/v1/chat/completions` with
//! `stream: true` and `stream_options.include_usage` (the usage then comes in a last chunk
//! with no choices, before `data: [DONE]`).
//!
//! Usage: `prompt_tokens` includes `prompt_tokens_details.cached_tokens` and
//! `completion_tokens` includes `completion_tokens_details.reasoning_tokens`; both are
//! split out so that nothing is counted twice.

use flowline_domain::TokenUsage;
use serde_json::{Value, json};

use crate::error::{CallError, FailureKind};
use crate::{ChatRequest, StreamState};

/// The request path under the base URL.
pub const PATH: &str = "/v1/chat/completions";

/// The request body.
pub fn body(request: &ChatRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        messages.push(json!({"role": message.role, "content": message.content}));
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(schema) = &request.json_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": false},
        });
    }
    body
}

/// Normalises an OpenAI `usage` object.
pub fn usage(usage: &Value) -> TokenUsage {
    let count = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    let prompt = count(usage.get("prompt_tokens"));
    let completion = count(usage.get("completion_tokens"));
    let cached = count(usage.pointer("/prompt_tokens_details/cached_tokens")).min(prompt);
    let reasoning =
        count(usage.pointer("/completion_tokens_details/reasoning_tokens")).min(completion);
    TokenUsage {
        input_tokens: prompt - cached,
        output_tokens: completion - reasoning,
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
    }
}

/// The message of an OpenAI error body (`{"error": {"message": ...}}`).
pub fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Reads one SSE event's data into `state`.
pub fn on_event(
    state: &mut StreamState,
    data: &str,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<(), CallError> {
    if data.trim() == "[DONE]" {
        state.done = true;
        return Ok(());
    }
    let chunk: Value = serde_json::from_str(data).map_err(|e| {
        CallError::new(
            FailureKind::Malformed,
            false,
            format!("a streamed chunk is not JSON ({e})"),
        )
    })?;
    if let Some(message) = error_message(&chunk) {
        return Err(CallError::new(
            FailureKind::Unavailable,
            true,
            format!("error in the stream: {message}"),
        ));
    }
    if !chunk.is_object() {
        return Err(CallError::new(
            FailureKind::Malformed,
            false,
            "a streamed chunk is not a chat.completion.chunk object",
        ));
    }
    if let Some(model) = chunk.get("model").and_then(Value::as_str) {
        state.model.get_or_insert_with(|| model.to_owned());
    }
    if let Some(choice) = chunk.pointer("/choices/0") {
        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !text.is_empty()
        {
            state.push_text(text, on_text);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            state.finish_reason = Some(reason.to_owned());
        }
    }
    if let Some(reported) = chunk.get("usage").filter(|u| u.is_object()) {
        state.usage = Some(usage(reported));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_and_reasoning_tokens_are_split_out() {
        let normalised = usage(&json!({
            "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 200}
        }));
        assert_eq!(
            normalised,
            TokenUsage {
                input_tokens: 200,
                output_tokens: 100,
                cache_read_tokens: 800,
                cache_write_tokens: 0,
                reasoning_tokens: 200,
            }
        );
        assert_eq!(normalised.total(), 1300);
    }

    #[test]
    fn a_stream_accumulates_text_finish_reason_and_usage() {
        let mut state = StreamState::default();
        let mut seen = Vec::new();
        let mut sink = |t: &str| seen.push(t.to_owned());
        for data in [
            r#"{"model":"gpt-x","choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            on_event(&mut state, data, &mut sink).unwrap();
        }
        assert_eq!(seen, ["Hel", "lo"]);
        assert_eq!(state.text, "Hello");
        assert_eq!(state.model.as_deref(), Some("gpt-x"));
        assert_eq!(state.finish_reason.as_deref(), Some("stop"));
        assert_eq!(state.usage.unwrap().input_tokens, 5);
        assert!(state.done);
        let error = on_event(&mut state, "{not json", &mut |_| {}).unwrap_err();
        assert_eq!(error.kind, FailureKind::Malformed);
    }
}
