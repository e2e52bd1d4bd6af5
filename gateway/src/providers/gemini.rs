//! Google Gemini (`POST {base}/models/{model}:streamGenerateContent?alt=sse`, base `…/v1beta`).
//!
//! Why it exists: Gemini's own format. Stream shape: every `data:` event is a whole
//! `GenerateContentResponse` (`candidates[0].content.parts[]` holding `text` or a complete
//! `functionCall {name, args}`, `finishReason` on the last, `usageMetadata`); there is no
//! terminal marker, so the reply is complete when the body ends after a `finishReason`.
//! Gemini 3 attaches a `thoughtSignature` to function-call parts that must be sent back
//! with the call; it travels in [`super::ToolCall::signature`]. Function calls carry no
//! id before Gemini 3, so ids are made up per reply and results are paired by name.

use serde::Deserialize;
use serde_json::{Value, json};
use sse_stream::Sse;

use super::chat::{ChatRequest, Message, TurnRole};
use super::error::plain_error;
use super::error::{ErrorKind, ProviderError, kind_from_status, mentions_context_overflow};
use super::event::{StopReason, StreamEvent, Usage};
use super::request::{BuildError, ProviderRequest, arguments_object};
use super::stream::{WireDecoder, incomplete, json_payload};
use super::tool_calls::ToolCallAssembler;

pub(crate) fn build(chat: &ChatRequest) -> Result<ProviderRequest, BuildError> {
    let mut contents = Vec::new();
    for turn in chat.turns() {
        let mut parts = Vec::new();
        for message in turn.messages {
            match message {
                Message::User { text } if !text.is_empty() => parts.push(json!({"text": text})),
                Message::User { .. } => {}
                Message::Assistant { text, tool_calls } => {
                    if !text.is_empty() {
                        parts.push(json!({"text": text}));
                    }
                    for call in tool_calls {
                        let mut part = json!({"functionCall": {
                            "name": call.name,
                            "args": arguments_object(call)?,
                        }});
                        if let Some(signature) = &call.signature {
                            part["thoughtSignature"] = json!(signature);
                        }
                        parts.push(part);
                    }
                }
                Message::ToolResult { name, content, is_error, .. } => {
                    let key = if *is_error { "error" } else { "output" };
                    parts.push(json!({"functionResponse": {
                        "name": name,
                        "response": { key: content },
                    }}));
                }
            }
        }
        if parts.is_empty() {
            continue;
        }
        let role = match turn.role {
            TurnRole::User => "user",
            TurnRole::Assistant => "model",
        };
        contents.push(json!({"role": role, "parts": parts}));
    }
    let mut body = serde_json::Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = chat.system.as_deref().filter(|s| !s.is_empty()) {
        body.insert("systemInstruction".into(), json!({"parts": [{"text": system}]}));
    }
    if !chat.tools.is_empty() {
        let declarations: Vec<Value> = chat
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                })
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    let mut generation = json!({"maxOutputTokens": chat.max_output_tokens});
    if let Some(temperature) = chat.temperature {
        generation["temperature"] = json!(temperature);
    }
    body.insert("generationConfig".into(), generation);
    Ok(ProviderRequest::post_json(
        format!("/models/{}:streamGenerateContent?alt=sse", chat.model),
        Vec::new(),
        &Value::Object(body),
    ))
}

#[derive(Default)]
pub(crate) struct Decoder {
    calls: ToolCallAssembler,
    next_call: u64,
    usage: Option<Usage>,
    stop_reason: Option<StopReason>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    function_call: Option<FunctionCall>,
    thought_signature: Option<String>,
}

#[derive(Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
}

impl WireDecoder for Decoder {
    fn on_event(&mut self, event: Sse, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if event.data.as_deref().is_none_or(str::is_empty) {
            return Ok(());
        }
        let chunk: Chunk = json_payload(&event)?;
        if let Some(error) = chunk.error {
            return Err(error_from_value(None, &json!({ "error": error })));
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            tracing::debug!(%reason, "gemini blocked the prompt");
            self.stop_reason = Some(StopReason::ContentFilter);
        }
        if let Some(candidate) = chunk.candidates.into_iter().next() {
            for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
                if let Some(call) = part.function_call {
                    let key = self.next_call;
                    self.next_call += 1;
                    let id = call.id.unwrap_or_else(|| format!("gemini_call_{key}"));
                    self.calls.start(key, id, call.name, out)?;
                    let arguments = call.args.unwrap_or_else(|| json!({})).to_string();
                    self.calls.append(key, &arguments, out)?;
                    if let Some(signature) = part.thought_signature {
                        self.calls.sign(key, signature)?;
                    }
                    self.calls.end(key, None, out)?;
                } else if let Some(text) = part.text.filter(|t| !t.is_empty() && !part.thought) {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
            if let Some(reason) = candidate.finish_reason {
                self.stop_reason = Some(stop_reason(&reason));
            }
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_token_count,
                output_tokens: usage.candidates_token_count + usage.thoughts_token_count,
                cached_input_tokens: usage.cached_content_token_count,
                cache_write_tokens: 0,
            });
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        false
    }

    fn on_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let Some(reason) = self.stop_reason.take() else {
            return Err(incomplete("a candidate with `finishReason`"));
        };
        if let Some(usage) = self.usage {
            out.push(StreamEvent::Usage(usage));
        }
        let stop_reason = match reason {
            StopReason::EndTurn if self.calls.any() => StopReason::ToolUse,
            other => other,
        };
        out.push(StreamEvent::Done { stop_reason });
        Ok(())
    }

    fn error_from_body(&self, status: u16, body: &[u8]) -> ProviderError {
        match serde_json::from_slice::<Value>(body) {
            // The streaming endpoints may wrap the error object in an array.
            Ok(Value::Array(items)) if !items.is_empty() => error_from_value(Some(status), &items[0]),
            Ok(value) => error_from_value(Some(status), &value),
            Err(_) => plain_error(status, body),
        }
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "STOP" => StopReason::EndTurn,
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::ContentFilter
        }
        other => StopReason::Other(other.to_owned()),
    }
}

/// Reads Google's error object `{"error":{"code","message","status","details":[…]}}`,
/// including `RetryInfo.retryDelay` and the `API_KEY_INVALID` reason (sent with a 400).
fn error_from_value(status: Option<u16>, value: &Value) -> ProviderError {
    let error = value.get("error").unwrap_or(value);
    let message = error.get("message").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_owned);
    let code = error.get("status").and_then(Value::as_str).unwrap_or_default();
    let details = error.get("details").and_then(Value::as_array).cloned().unwrap_or_default();
    let reason_is = |wanted: &str| details.iter().any(|d| d.get("reason").and_then(Value::as_str) == Some(wanted));
    let retry_after = details
        .iter()
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .find_map(|delay| delay.strip_suffix('s')?.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(std::time::Duration::from_secs_f64);
    let kind = match code {
        "UNAUTHENTICATED" => ErrorKind::Auth,
        _ if reason_is("API_KEY_INVALID") => ErrorKind::Auth,
        "PERMISSION_DENIED" => ErrorKind::PermissionDenied,
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
        "UNAVAILABLE" => ErrorKind::Overloaded,
        "INTERNAL" | "DEADLINE_EXCEEDED" => ErrorKind::Server,
        "NOT_FOUND" => ErrorKind::NotFound,
        _ if mentions_context_overflow(&message) => ErrorKind::ContextLengthExceeded,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => ErrorKind::BadRequest,
        _ => status.map_or(ErrorKind::Server, kind_from_status),
    };
    let shown = if code.is_empty() { message } else { format!("{message} [{code}]") };
    ProviderError { status, retry_after, ..ProviderError::new(kind, shown) }
}
