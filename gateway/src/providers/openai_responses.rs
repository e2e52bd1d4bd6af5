//! OpenAI Responses API (`POST /responses`), also the ChatGPT Codex backend.
//!
//! Why it exists: OpenAI's newer API and the only one the Codex backend (Codex OAuth,
//! base URL `https://chatgpt.com/backend-api/codex`) speaks. Stream shape: typed events
//! (`response.output_item.added` opens a `function_call` item at an `output_index`,
//! `response.function_call_arguments.delta` fragments it, `response.output_item.done`
//! closes it with the full arguments; `response.output_text.delta` is text), ending with
//! `response.completed` / `response.incomplete` (usage inside) or `response.failed` /
//! `error`. Requests are stateless (`store: false`), so the whole transcript is sent.
//! The Codex backend requires `instructions` and rejects `max_output_tokens` and
//! `temperature`, so they are left out there; its account header is the broker's.

use serde::Deserialize;
use serde_json::{Value, json};
use sse_stream::Sse;

use super::chat::{ChatRequest, Message};
use super::error::{ProviderError, json_or_plain_error};
use super::event::{StopReason, StreamEvent, Usage};
use super::openai_chat::error_from_value;
use super::request::{BuildError, ProviderRequest};
use super::stream::{WireDecoder, incomplete, json_payload};
use super::tool_calls::ToolCallAssembler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    OpenAi,
    Codex,
}

pub(crate) fn build(flavour: Flavour, chat: &ChatRequest) -> Result<ProviderRequest, BuildError> {
    let mut input = Vec::with_capacity(chat.messages.len());
    for message in &chat.messages {
        match message {
            Message::User { text } => input.push(json!({
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            })),
            Message::Assistant { text, tool_calls } => {
                if !text.is_empty() {
                    input.push(json!({
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text}],
                    }));
                }
                input.extend(tool_calls.iter().map(|call| {
                    json!({
                        "type": "function_call",
                        "call_id": call.id,
                        "name": call.name,
                        "arguments": call.arguments,
                    })
                }));
            }
            Message::ToolResult { call_id, content, .. } => input.push(json!({
                "type": "function_call_output",
                "call_id": call_id,
                "output": content,
            })),
        }
    }
    let mut body = serde_json::Map::new();
    body.insert("model".into(), json!(chat.model));
    body.insert("instructions".into(), json!(chat.system.as_deref().unwrap_or_default()));
    body.insert("input".into(), Value::Array(input));
    if !chat.tools.is_empty() {
        let tools: Vec<Value> = chat
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                    "strict": false,
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        body.insert("tool_choice".into(), json!("auto"));
        body.insert("parallel_tool_calls".into(), json!(true));
    }
    body.insert("stream".into(), json!(true));
    body.insert("store".into(), json!(false));
    let mut headers = Vec::new();
    match flavour {
        Flavour::OpenAi => {
            body.insert("max_output_tokens".into(), json!(chat.max_output_tokens));
            if let Some(temperature) = chat.temperature {
                body.insert("temperature".into(), json!(temperature));
            }
        }
        Flavour::Codex => headers.push(("openai-beta", "responses=experimental".to_owned())),
    }
    Ok(ProviderRequest::post_json("/responses".to_owned(), headers, &Value::Object(body)))
}

#[derive(Default)]
pub(crate) struct Decoder {
    calls: ToolCallAssembler,
    done: bool,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    output_index: Option<u64>,
    delta: Option<String>,
    item: Option<Item>,
    response: Option<ResponseObject>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "type")]
    kind: String,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ResponseObject {
    usage: Option<WireUsage>,
    incomplete_details: Option<IncompleteDetails>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct IncompleteDetails {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    input_tokens_details: Option<InputDetails>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl Decoder {
    fn output_index(payload: &Payload) -> Result<u64, ProviderError> {
        payload.output_index.ok_or_else(|| ProviderError::malformed(format!("{} without output_index", payload.kind)))
    }

    fn finish(&mut self, response: Option<ResponseObject>, out: &mut Vec<StreamEvent>) {
        self.calls.end_all(out);
        let response = response.unwrap_or(ResponseObject { usage: None, incomplete_details: None, error: None });
        if let Some(usage) = response.usage {
            out.push(StreamEvent::Usage(Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cached_input_tokens: usage.input_tokens_details.map_or(0, |d| d.cached_tokens),
                cache_write_tokens: 0,
            }));
        }
        let stop_reason = match response.incomplete_details.and_then(|d| d.reason).as_deref() {
            Some("max_output_tokens") => StopReason::MaxTokens,
            Some("content_filter") => StopReason::ContentFilter,
            Some(other) => StopReason::Other(other.to_owned()),
            None if self.calls.any() => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        out.push(StreamEvent::Done { stop_reason });
        self.done = true;
    }
}

impl WireDecoder for Decoder {
    fn on_event(&mut self, event: Sse, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if event.data.as_deref().is_none_or(str::is_empty) {
            return Ok(());
        }
        let payload: Payload = json_payload(&event)?;
        match payload.kind.as_str() {
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(delta) = payload.delta.filter(|d| !d.is_empty()) {
                    out.push(StreamEvent::TextDelta(delta));
                }
            }
            "response.output_item.added" => {
                let index = Self::output_index(&payload)?;
                if let Some(item) = payload.item.filter(|item| item.kind == "function_call") {
                    let id =
                        item.call_id.ok_or_else(|| ProviderError::malformed("function_call item without call_id"))?;
                    let name = item.name.ok_or_else(|| ProviderError::malformed("function_call item without name"))?;
                    self.calls.start(index, id, name, out)?;
                    self.calls.append(index, item.arguments.as_deref().unwrap_or_default(), out)?;
                }
            }
            "response.function_call_arguments.delta" => {
                let index = Self::output_index(&payload)?;
                self.calls.append(index, payload.delta.as_deref().unwrap_or_default(), out)?;
            }
            "response.output_item.done" => {
                let index = Self::output_index(&payload)?;
                if let Some(item) = payload.item.filter(|item| item.kind == "function_call") {
                    self.calls.end(index, item.arguments, out)?;
                }
            }
            "response.completed" | "response.incomplete" => self.finish(payload.response, out),
            "response.failed" => {
                let error = payload.response.and_then(|r| r.error).unwrap_or(Value::Null);
                return Err(error_from_value(None, &json!({ "error": error })));
            }
            "error" => {
                let value: Value = json_payload(&event)?;
                return Err(error_from_value(None, &value));
            }
            // Lifecycle and content-part bookkeeping, reasoning summaries: nothing to show.
            _ => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn on_end(&mut self, _: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        Err(incomplete("`response.completed`"))
    }

    fn error_from_body(&self, status: u16, body: &[u8]) -> ProviderError {
        json_or_plain_error(status, body, error_from_value)
    }
}
