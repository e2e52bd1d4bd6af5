//! OpenAI Chat Completions (`POST /chat/completions`): OpenAI itself, Azure OpenAI and any
//! OpenAI-compatible server (Ollama, vLLM, llama.cpp).
//!
//! Why it exists: the most widely copied wire format. Stream shape: `data: {chunk}` lines,
//! `choices[0].delta.content` text, `choices[0].delta.tool_calls[]` fragments keyed by
//! `index` (several calls may be open at once), `finish_reason` on the last content
//! chunk, then (with `stream_options.include_usage`) a chunk with empty `choices` and the
//! `usage`, then `data: [DONE]`. A stream that ends without `[DONE]` is incomplete.

use serde::Deserialize;
use serde_json::{Value, json};
use sse_stream::Sse;

use super::chat::{ChatRequest, Message};
use super::error::{ErrorKind, ProviderError, json_or_plain_error, kind_from_status, mentions_context_overflow};
use super::event::{StopReason, StreamEvent, Usage};
use super::request::{BuildError, ProviderRequest};
use super::stream::{WireDecoder, incomplete, json_payload};
use super::tool_calls::ToolCallAssembler;

/// Which server speaks Chat Completions; they differ in path and token-limit field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flavour {
    OpenAi,
    /// The model names the deployment, which goes in the path.
    Azure {
        api_version: String,
    },
    /// Older servers only know `max_tokens`, not `max_completion_tokens`.
    Compatible,
}

pub(crate) fn build(flavour: &Flavour, chat: &ChatRequest) -> Result<ProviderRequest, BuildError> {
    let mut messages = Vec::with_capacity(chat.messages.len() + 1);
    if let Some(system) = &chat.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &chat.messages {
        messages.push(match message {
            Message::User { text } => json!({"role": "user", "content": text}),
            Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({"role": "assistant", "content": text})
            }
            Message::Assistant { text, tool_calls } => json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { json!(text) },
                "tool_calls": tool_calls.iter().map(|call| json!({
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                })).collect::<Vec<_>>(),
            }),
            Message::ToolResult { call_id, content, .. } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        });
    }
    let mut body = serde_json::Map::new();
    if !matches!(flavour, Flavour::Azure { .. }) {
        body.insert("model".into(), json!(chat.model));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !chat.tools.is_empty() {
        let tools: Vec<Value> = chat
            .tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                }})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    let limit_field = match flavour {
        Flavour::Compatible => "max_tokens",
        _ => "max_completion_tokens",
    };
    body.insert(limit_field.into(), json!(chat.max_output_tokens));
    if let Some(temperature) = chat.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    let path = match flavour {
        Flavour::Azure { api_version } => {
            format!("/openai/deployments/{}/chat/completions?api-version={api_version}", chat.model)
        }
        _ => "/chat/completions".to_owned(),
    };
    Ok(ProviderRequest::post_json(path, Vec::new(), &Value::Object(body)))
}

#[derive(Default)]
pub(crate) struct Decoder {
    calls: ToolCallAssembler,
    stop_reason: Option<StopReason>,
    usage: Option<Usage>,
    done: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    /// A refusal is what the user gets to read instead of an answer.
    refusal: Option<String>,
    tool_calls: Option<Vec<ToolCallFragment>>,
}

#[derive(Deserialize)]
struct ToolCallFragment {
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionFragment>,
}

#[derive(Deserialize)]
struct FunctionFragment {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl WireDecoder for Decoder {
    fn on_event(&mut self, event: Sse, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if event.data.as_deref().is_none_or(str::is_empty) {
            return Ok(());
        }
        if event.data.as_deref() == Some("[DONE]") {
            self.calls.end_all(out);
            if let Some(usage) = self.usage {
                out.push(StreamEvent::Usage(usage));
            }
            // Some compatible servers (Ollama) say "stop" even after tool calls.
            let stop_reason = match self.stop_reason.take() {
                None | Some(StopReason::EndTurn) if self.calls.any() => StopReason::ToolUse,
                None => StopReason::EndTurn,
                Some(reason) => reason,
            };
            out.push(StreamEvent::Done { stop_reason });
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = json_payload(&event)?;
        if let Some(error) = chunk.error {
            return Err(error_from_value(None, &json!({ "error": error })));
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            for text in [choice.delta.content, choice.delta.refusal] {
                if let Some(text) = text.filter(|text| !text.is_empty()) {
                    out.push(StreamEvent::TextDelta(text));
                }
            }
            for (position, fragment) in choice.delta.tool_calls.into_iter().flatten().enumerate() {
                let key = fragment.index.unwrap_or(position as u64);
                let (name, arguments) = match fragment.function {
                    Some(function) => (function.name, function.arguments),
                    None => (None, None),
                };
                if !self.calls.is_open(key) {
                    let id = fragment.id.unwrap_or_else(|| format!("call_{key}"));
                    let name =
                        name.ok_or_else(|| ProviderError::malformed(format!("tool call {key} starts without a name")))?;
                    self.calls.start(key, id, name, out)?;
                }
                self.calls.append(key, arguments.as_deref().unwrap_or_default(), out)?;
            }
            if let Some(reason) = choice.finish_reason {
                self.calls.end_all(out);
                self.stop_reason = Some(stop_reason(&reason));
            }
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                cached_input_tokens: usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
                cache_write_tokens: 0,
            });
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn on_end(&mut self, _: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        Err(incomplete("`data: [DONE]`"))
    }

    fn error_from_body(&self, status: u16, body: &[u8]) -> ProviderError {
        json_or_plain_error(status, body, error_from_value)
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "stop" => StopReason::EndTurn,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "length" => StopReason::MaxTokens,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Reads OpenAI's documented error object `{"error":{"message","type","param","code"}}`
/// (also used by Azure, the Responses API and most compatible servers; Ollama's native
/// `{"error":"text"}` is accepted too).
pub(crate) fn error_from_value(status: Option<u16>, value: &Value) -> ProviderError {
    let error = value.get("error").unwrap_or(value);
    let field = |name: &str| match error.get(name) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    };
    let message = error.as_str().map(str::to_owned).or_else(|| field("message")).unwrap_or_else(|| value.to_string());
    let code = field("code").unwrap_or_default();
    let kind_name = field("type").unwrap_or_default();
    let kind = match (code.as_str(), kind_name.as_str()) {
        ("context_length_exceeded", _) => ErrorKind::ContextLengthExceeded,
        ("insufficient_quota", _) | (_, "insufficient_quota") => ErrorKind::QuotaExceeded,
        ("rate_limit_exceeded", _) | (_, "rate_limit_error" | "requests" | "tokens" | "usage_limit_reached") => {
            ErrorKind::RateLimited
        }
        ("invalid_api_key", _) | (_, "authentication_error") => ErrorKind::Auth,
        ("model_not_found" | "DeploymentNotFound", _) => ErrorKind::NotFound,
        ("server_error", _) | (_, "server_error") => ErrorKind::Server,
        _ if mentions_context_overflow(&message) => ErrorKind::ContextLengthExceeded,
        _ => status.map_or(ErrorKind::Server, kind_from_status),
    };
    // The Codex backend says when a plan's usage limit resets.
    let resets_in = error.get("resets_in_seconds").and_then(Value::as_u64).map(std::time::Duration::from_secs);
    let shown = if code.is_empty() { message } else { format!("{message} [{code}]") };
    ProviderError { status, retry_after: resets_in, ..ProviderError::new(kind, shown) }
}
