//! Anthropic Messages (`POST /v1/messages`), also Kimi Coding (Anthropic-compatible).
//!
//! Why it exists: Anthropic's own format. Stream shape: `message_start` (input usage),
//! `content_block_start` per block (`text` or `tool_use` with id and name) at an `index`,
//! `content_block_delta` (`text_delta` or `input_json_delta` fragments),
//! `content_block_stop`, `message_delta` (stop reason, output usage), `message_stop`;
//! `ping` keeps the connection alive and `error` (e.g. `overloaded_error`) can arrive
//! mid-stream. The API wants strictly alternating user/assistant turns with tool results
//! first in the user turn that follows the calls, and no empty text blocks.

use serde::Deserialize;
use serde_json::{Value, json};
use sse_stream::Sse;

use super::chat::{ChatRequest, Message, TurnRole};
use super::error::{ErrorKind, ProviderError, json_or_plain_error, kind_from_status, mentions_context_overflow};
use super::event::{StopReason, StreamEvent, Usage};
use super::request::{BuildError, ProviderRequest, arguments_object};
use super::stream::{WireDecoder, incomplete, json_payload};
use super::tool_calls::ToolCallAssembler;

/// The API version this module's formats are written against.
pub(crate) const API_VERSION: &str = "2023-06-01";

pub(crate) fn build(chat: &ChatRequest) -> Result<ProviderRequest, BuildError> {
    let mut messages = Vec::new();
    for turn in chat.turns() {
        let mut results = Vec::new();
        let mut blocks = Vec::new();
        for message in turn.messages {
            match message {
                Message::User { text } if !text.is_empty() => {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                Message::User { .. } => {}
                Message::Assistant { text, tool_calls } => {
                    if !text.is_empty() {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                    for call in tool_calls {
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": arguments_object(call)?,
                        }));
                    }
                }
                Message::ToolResult { call_id, content, is_error, .. } => {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": call_id,
                        "content": content,
                    });
                    if *is_error {
                        block["is_error"] = json!(true);
                    }
                    results.push(block);
                }
            }
        }
        results.append(&mut blocks);
        if results.is_empty() {
            continue;
        }
        let role = match turn.role {
            TurnRole::User => "user",
            TurnRole::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": results}));
    }
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(chat.model));
    body.insert("max_tokens".into(), json!(chat.max_output_tokens));
    if let Some(system) = chat.system.as_deref().filter(|s| !s.is_empty()) {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !chat.tools.is_empty() {
        let tools: Vec<Value> = chat
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("stream".into(), json!(true));
    if let Some(temperature) = chat.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    Ok(ProviderRequest::post_json(
        "/messages".to_owned(),
        vec![("anthropic-version", API_VERSION.to_owned())],
        &Value::Object(body),
    ))
}

#[derive(Default)]
pub(crate) struct Decoder {
    calls: ToolCallAssembler,
    usage: Usage,
    stop_reason: Option<StopReason>,
    done: bool,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    index: Option<u64>,
    message: Option<MessageStart>,
    content_block: Option<ContentBlock>,
    delta: Option<Delta>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct MessageStart {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    name: Option<String>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    stop_reason: Option<String>,
}

/// Anthropic counts cache reads and writes apart from `input_tokens`; `message_delta`
/// may repeat any of them cumulatively.
#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl Decoder {
    fn absorb(&mut self, usage: WireUsage) {
        let uncached = self.usage.input_tokens - self.usage.cached_input_tokens - self.usage.cache_write_tokens;
        let uncached = usage.input_tokens.unwrap_or(uncached);
        if let Some(read) = usage.cache_read_input_tokens {
            self.usage.cached_input_tokens = read;
        }
        if let Some(written) = usage.cache_creation_input_tokens {
            self.usage.cache_write_tokens = written;
        }
        self.usage.input_tokens = uncached + self.usage.cached_input_tokens + self.usage.cache_write_tokens;
        if let Some(output) = usage.output_tokens {
            self.usage.output_tokens = output;
        }
    }

    fn index(payload: &Payload) -> Result<u64, ProviderError> {
        payload.index.ok_or_else(|| ProviderError::malformed(format!("{} without index", payload.kind)))
    }
}

impl WireDecoder for Decoder {
    fn on_event(&mut self, event: Sse, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if event.data.as_deref().is_none_or(str::is_empty) {
            return Ok(());
        }
        let payload: Payload = json_payload(&event)?;
        match payload.kind.as_str() {
            "message_start" => {
                if let Some(usage) = payload.message.and_then(|m| m.usage) {
                    self.absorb(usage);
                }
            }
            "content_block_start" => {
                let index = Self::index(&payload)?;
                let block = payload
                    .content_block
                    .ok_or_else(|| ProviderError::malformed("content_block_start without block"))?;
                match block.kind.as_str() {
                    "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::TextDelta(text));
                        }
                    }
                    "tool_use" => {
                        let (Some(id), Some(name)) = (block.id, block.name) else {
                            return Err(ProviderError::malformed("tool_use block without id or name"));
                        };
                        self.calls.start(index, id, name, out)?;
                    }
                    // Thinking and server-tool blocks are not shown.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = Self::index(&payload)?;
                let delta =
                    payload.delta.ok_or_else(|| ProviderError::malformed("content_block_delta without delta"))?;
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::TextDelta(text));
                        }
                    }
                    Some("input_json_delta") => {
                        self.calls.append(index, delta.partial_json.as_deref().unwrap_or_default(), out)?;
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = Self::index(&payload)?;
                if self.calls.is_open(index) {
                    self.calls.end(index, None, out)?;
                }
            }
            "message_delta" => {
                if let Some(reason) = payload.delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(stop_reason(&reason));
                }
                if let Some(usage) = payload.usage {
                    self.absorb(usage);
                }
            }
            "message_stop" => {
                self.calls.end_all(out);
                out.push(StreamEvent::Usage(self.usage));
                let fallback = if self.calls.any() { StopReason::ToolUse } else { StopReason::EndTurn };
                out.push(StreamEvent::Done { stop_reason: self.stop_reason.take().unwrap_or(fallback) });
                self.done = true;
            }
            "error" => {
                let value: Value = json_payload(&event)?;
                return Err(error_from_value(None, &value));
            }
            // `ping`, and event types added after this version.
            _ => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn on_end(&mut self, _: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        Err(incomplete("`message_stop`"))
    }

    fn error_from_body(&self, status: u16, body: &[u8]) -> ProviderError {
        json_or_plain_error(status, body, error_from_value)
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "end_turn" => StopReason::EndTurn,
        "tool_use" => StopReason::ToolUse,
        "max_tokens" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "refusal" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Reads Anthropic's documented error object `{"type":"error","error":{"type","message"}}`.
fn error_from_value(status: Option<u16>, value: &Value) -> ProviderError {
    let error = value.get("error").unwrap_or(value);
    let kind_name = error.get("type").and_then(Value::as_str).unwrap_or_default();
    let message = error.get("message").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_owned);
    let kind = match kind_name {
        "authentication_error" => ErrorKind::Auth,
        "permission_error" => ErrorKind::PermissionDenied,
        "not_found_error" => ErrorKind::NotFound,
        "rate_limit_error" => ErrorKind::RateLimited,
        "overloaded_error" => ErrorKind::Overloaded,
        "api_error" => ErrorKind::Server,
        "billing_error" => ErrorKind::QuotaExceeded,
        "request_too_large" => ErrorKind::BadRequest,
        _ if mentions_context_overflow(&message) => ErrorKind::ContextLengthExceeded,
        "invalid_request_error" => ErrorKind::BadRequest,
        _ => status.map_or(ErrorKind::Server, kind_from_status),
    };
    let shown = if kind_name.is_empty() { message } else { format!("{message} [{kind_name}]") };
    ProviderError { status, ..ProviderError::new(kind, shown) }
}
