//! Plugin providers: the JSON-RPC 2.0 `chat` call of ZeptoClaw's provider plugins
//! (`seeds/003_*`), byte-compatible so existing plugin binaries work unchanged.
//!
//! Why it exists: a plugin is a local binary that reads one request line on stdin,
//! `{"jsonrpc":"2.0","id":1,"method":"chat","params":{"messages":[…],"tools":[…],"model":…,"options":{…}}}`,
//! and prints `{"jsonrpc":"2.0","id":1,"result":{"content","tool_calls","usage"}}` or
//! `{"jsonrpc":"2.0","id":1,"error":{"code","message"}}`; the last non-empty stdout line is
//! the answer. Messages use ZeptoClaw's shape (`role` system/user/assistant/tool, `content`,
//! `tool_calls` `[{id,name,arguments}]`, `tool_call_id`); tools are `{name,description,parameters}`.
//!
//! Plugins read their API key from their environment, so the **broker** runs them (the
//! only process that holds keys; `broker/src/plugin.rs`: no shell, cleared environment,
//! timeout killing the process group, capped output, non-zero exit reported with stderr).
//! This module is the gateway's half and does no I/O at all: [`request`] builds the
//! `provider_request` (POST `/`, the request line without its newline as body — the broker
//! adds the newline), and [`PluginReply`] collects the stdout the broker streams back and
//! turns the answer into the same events a streaming provider yields.
//!
//! What it must never do: buffer without bound (the collected stdout is capped), or accept
//! an answer it cannot attribute (garbage, an answer to another id, neither result nor
//! error) — each is a typed [`PluginError`] quoting at most a snippet of the output.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::{ChatRequest, Message};
use super::error::{bounded, snippet};
use super::event::{StopReason, StreamEvent, Usage};
use super::request::ProviderRequest;

/// The id of the one request a plugin run answers.
pub const REQUEST_ID: u64 = 1;
/// Default cap on the stdout collected from one run (the broker caps it at the same size).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 << 20;

/// Why a plugin's answer could not be used. Failures of the process itself (spawn, timeout,
/// non-zero exit) are reported by the broker as `error` replies instead.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("provider plugin '{plugin}' wrote more than {limit} bytes")]
    OutputTooLarge { plugin: String, limit: usize },
    #[error("provider plugin '{plugin}' produced no output")]
    NoOutput { plugin: String },
    #[error("provider plugin '{plugin}' returned invalid JSON-RPC ({reason}): {line}")]
    Garbage { plugin: String, reason: String, line: String },
    #[error("provider plugin '{plugin}' answered request id {got} instead of {REQUEST_ID}")]
    IdMismatch { plugin: String, got: String },
    #[error("provider plugin '{plugin}' error (code {code}): {message}")]
    Rpc { plugin: String, code: i64, message: String },
    #[error("provider plugin '{plugin}' returned neither result nor error")]
    Empty { plugin: String },
}

// ---- wire types (field order is the byte order of the protocol) ----

#[derive(Serialize)]
struct RpcRequest<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'static str,
    params: Params<'a>,
}

#[derive(Serialize)]
struct Params<'a> {
    messages: Vec<WireMessage<'a>>,
    tools: Vec<WireTool<'a>>,
    model: Option<&'a str>,
    options: Options,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<WireCall<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct Options {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Deserialize)]
struct RpcResponse {
    /// ZeptoClaw ignores it; an answer to another request is refused (see [`PluginError::IdMismatch`]).
    id: Option<Value>,
    result: Option<RpcResult>,
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct RpcResult {
    content: String,
    #[serde(default)]
    tool_calls: Value,
    #[serde(default)]
    usage: Option<RpcUsage>,
}

#[derive(Deserialize)]
struct RpcUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

#[derive(Deserialize)]
struct RpcToolCall {
    id: Option<String>,
    name: Option<String>,
    arguments: Option<Value>,
}

/// The request the broker runs the plugin with: POST `/`, the request line as body.
pub fn request(chat: &ChatRequest) -> ProviderRequest {
    ProviderRequest {
        method: "POST",
        path: "/".to_owned(),
        headers: vec![("content-type", "application/json".to_owned())],
        body: request_line(chat),
    }
}

/// The exact request line for `chat`, without the newline the broker writes after it.
pub fn request_line(chat: &ChatRequest) -> Vec<u8> {
    let mut messages = Vec::with_capacity(chat.messages.len() + 1);
    if let Some(system) = &chat.system {
        messages.push(WireMessage { role: "system", content: system, tool_calls: None, tool_call_id: None });
    }
    for message in &chat.messages {
        messages.push(match message {
            Message::User { text } => WireMessage { role: "user", content: text, tool_calls: None, tool_call_id: None },
            Message::Assistant { text, tool_calls } => WireMessage {
                role: "assistant",
                content: text,
                tool_calls: (!tool_calls.is_empty()).then(|| {
                    tool_calls
                        .iter()
                        .map(|call| WireCall { id: &call.id, name: &call.name, arguments: &call.arguments })
                        .collect()
                }),
                tool_call_id: None,
            },
            Message::ToolResult { call_id, content, .. } => {
                WireMessage { role: "tool", content, tool_calls: None, tool_call_id: Some(call_id) }
            }
        });
    }
    let request = RpcRequest {
        jsonrpc: "2.0",
        id: REQUEST_ID,
        method: "chat",
        params: Params {
            messages,
            tools: chat
                .tools
                .iter()
                .map(|tool| WireTool { name: &tool.name, description: &tool.description, parameters: &tool.parameters })
                .collect(),
            model: (!chat.model.is_empty()).then_some(chat.model.as_str()),
            options: Options { max_tokens: Some(chat.max_output_tokens), temperature: chat.temperature },
        },
    };
    serde_json::to_vec(&request).expect("plugin request always serializes")
}

/// The stdout of one plugin run, collected as the broker streams it (bounded), then parsed.
#[derive(Debug)]
pub struct PluginReply {
    plugin: String,
    limit: usize,
    stdout: Vec<u8>,
}

impl PluginReply {
    /// A collector for the reply of the plugin provider named `plugin` (used in errors).
    pub fn new(plugin: impl Into<String>) -> Self {
        Self { plugin: plugin.into(), limit: DEFAULT_MAX_OUTPUT_BYTES, stdout: Vec::new() }
    }

    /// Overrides the cap on collected stdout.
    pub fn with_max_output_bytes(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Adds one body chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), PluginError> {
        if self.stdout.len() + chunk.len() > self.limit {
            return Err(PluginError::OutputTooLarge { plugin: self.plugin.clone(), limit: self.limit });
        }
        self.stdout.extend_from_slice(chunk);
        Ok(())
    }

    /// The body ended: the answer (the last non-empty line) as events — text, whole tool
    /// calls, usage, done — or why it is unusable.
    pub fn finish(self) -> Result<Vec<StreamEvent>, PluginError> {
        let stdout = String::from_utf8_lossy(&self.stdout);
        let Some(answer) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
            return Err(PluginError::NoOutput { plugin: self.plugin });
        };
        parse_answer(&self.plugin, answer)
    }
}

fn parse_answer(plugin: &str, line: &str) -> Result<Vec<StreamEvent>, PluginError> {
    let response: RpcResponse = serde_json::from_str(line).map_err(|error| PluginError::Garbage {
        plugin: plugin.to_owned(),
        reason: error.to_string(),
        line: snippet(line).to_owned(),
    })?;
    match &response.id {
        None | Some(Value::Null) => {}
        Some(id) if id.as_u64() == Some(REQUEST_ID) => {}
        Some(other) => {
            return Err(PluginError::IdMismatch {
                plugin: plugin.to_owned(),
                got: snippet(&other.to_string()).to_owned(),
            });
        }
    }
    if let Some(error) = response.error {
        return Err(PluginError::Rpc { plugin: plugin.to_owned(), code: error.code, message: bounded(error.message) });
    }
    let result = response.result.ok_or_else(|| PluginError::Empty { plugin: plugin.to_owned() })?;
    let mut events = Vec::new();
    if !result.content.is_empty() {
        events.push(StreamEvent::TextDelta(result.content));
    }
    let mut any_call = false;
    for (position, entry) in result.tool_calls.as_array().into_iter().flatten().enumerate() {
        // ZeptoClaw skips entries it cannot read; so do we, loudly.
        let Ok(RpcToolCall { id, name: Some(name), arguments }) = serde_json::from_value::<RpcToolCall>(entry.clone())
        else {
            tracing::warn!(plugin, position, "skipping unreadable tool call");
            continue;
        };
        let id = id.unwrap_or_else(|| format!("call_{position}"));
        let arguments = match arguments {
            Some(Value::String(text)) => text,
            Some(value) => value.to_string(),
            None => "{}".to_owned(),
        };
        events.push(StreamEvent::ToolCallStart { id: id.clone(), name: name.clone() });
        events.push(StreamEvent::ToolCallArgsDelta { id: id.clone(), delta: arguments.clone() });
        events.push(StreamEvent::ToolCallEnd(super::ToolCall { id, name, arguments, signature: None }));
        any_call = true;
    }
    if let Some(usage) = result.usage {
        events.push(StreamEvent::Usage(Usage {
            input_tokens: u64::from(usage.input_tokens),
            output_tokens: u64::from(usage.output_tokens),
            ..Usage::default()
        }));
    }
    events.push(StreamEvent::Done { stop_reason: if any_call { StopReason::ToolUse } else { StopReason::EndTurn } });
    Ok(events)
}
