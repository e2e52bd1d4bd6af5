//! Plugin providers: a local binary answering one JSON-RPC 2.0 `chat` call on
//! stdin/stdout, byte-compatible with ZeptoClaw's provider plugins (`seeds/003_*`).
//!
//! Why it exists: existing plugin binaries must work unchanged. Protocol: one request
//! line on stdin,
//! `{"jsonrpc":"2.0","id":1,"method":"chat","params":{"messages":[…],"tools":[…],"model":…,"options":{…}}}`,
//! then stdin is closed; the plugin prints `{"jsonrpc":"2.0","id":1,"result":{"content",
//! "tool_calls","usage"}}` or `{"jsonrpc":"2.0","id":1,"error":{"code","message"}}` and
//! exits. The last non-empty stdout line is the answer; a non-zero exit is an error
//! carrying stderr (or stdout when stderr is empty). Messages use ZeptoClaw's shape
//! (`role` system/user/assistant/tool, `content`, `tool_calls` `[{id,name,arguments}]`,
//! `tool_call_id`); tools are `{name,description,parameters}`.
//!
//! What it must never do: wait forever (a timeout kills the plugin's whole process
//! group), buffer without bound (stdout is capped, stderr is kept up to
//! [`MAX_STDERR_BYTES`] and the rest drained), or run through a shell.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::chat::{ChatRequest, Message};
use super::error::{bounded, snippet};
use super::event::{StopReason, StreamEvent, Usage};

/// Default time a plugin has to answer (ZeptoClaw's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default cap on a plugin's stdout.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Stderr kept for error messages.
pub const MAX_STDERR_BYTES: usize = 64 << 10;

/// One configured plugin binary.
#[derive(Debug, Clone)]
pub struct PluginProvider {
    name: String,
    command: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    max_output_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("provider plugin '{plugin}' could not be started ({command}): {source}")]
    Spawn {
        plugin: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("provider plugin '{plugin}': {stage} failed: {source}")]
    Io {
        plugin: String,
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("provider plugin '{plugin}' timed out after {}s and was killed", after.as_secs_f64())]
    Timeout { plugin: String, after: Duration },
    #[error("provider plugin '{plugin}' {status}: {detail}")]
    Exit {
        plugin: String,
        status: ExitStatus,
        detail: String,
    },
    #[error("provider plugin '{plugin}' wrote more than {limit} bytes and was killed")]
    OutputTooLarge { plugin: String, limit: usize },
    #[error("provider plugin '{plugin}' produced no output")]
    NoOutput { plugin: String },
    #[error("provider plugin '{plugin}' returned invalid JSON-RPC ({reason}): {line}")]
    Garbage {
        plugin: String,
        reason: String,
        line: String,
    },
    #[error("provider plugin '{plugin}' error (code {code}): {message}")]
    Rpc {
        plugin: String,
        code: i64,
        message: String,
    },
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

impl PluginProvider {
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            args,
            timeout: DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max_output_bytes(mut self, limit: usize) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// The exact request line (newline included) sent for `chat`.
    pub fn request_line(chat: &ChatRequest) -> Vec<u8> {
        let mut messages = Vec::with_capacity(chat.messages.len() + 1);
        if let Some(system) = &chat.system {
            messages.push(WireMessage {
                role: "system",
                content: system,
                tool_calls: None,
                tool_call_id: None,
            });
        }
        for message in &chat.messages {
            messages.push(match message {
                Message::User { text } => WireMessage {
                    role: "user",
                    content: text,
                    tool_calls: None,
                    tool_call_id: None,
                },
                Message::Assistant { text, tool_calls } => WireMessage {
                    role: "assistant",
                    content: text,
                    tool_calls: (!tool_calls.is_empty()).then(|| {
                        tool_calls
                            .iter()
                            .map(|call| WireCall {
                                id: &call.id,
                                name: &call.name,
                                arguments: &call.arguments,
                            })
                            .collect()
                    }),
                    tool_call_id: None,
                },
                Message::ToolResult {
                    call_id, content, ..
                } => WireMessage {
                    role: "tool",
                    content,
                    tool_calls: None,
                    tool_call_id: Some(call_id),
                },
            });
        }
        let request = RpcRequest {
            jsonrpc: "2.0",
            id: 1,
            method: "chat",
            params: Params {
                messages,
                tools: chat
                    .tools
                    .iter()
                    .map(|tool| WireTool {
                        name: &tool.name,
                        description: &tool.description,
                        parameters: &tool.parameters,
                    })
                    .collect(),
                model: (!chat.model.is_empty()).then_some(chat.model.as_str()),
                options: Options {
                    max_tokens: Some(chat.max_output_tokens),
                    temperature: chat.temperature,
                },
            },
        };
        let mut line = serde_json::to_vec(&request).expect("plugin request always serializes");
        line.push(b'\n');
        line
    }

    /// Runs the plugin once for `chat` and returns the reply as the same events a
    /// streaming provider yields (text, whole tool calls, usage, done).
    pub async fn chat(&self, chat: &ChatRequest) -> Result<Vec<StreamEvent>, PluginError> {
        let line = Self::request_line(chat);
        let mut child = Command::new(&self.command)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| PluginError::Spawn {
                plugin: self.name.clone(),
                command: self.command.display().to_string(),
                source,
            })?;
        // From here until the leader is reaped, dropping this future (a cancelled turn)
        // or any failure kills the plugin and everything it started.
        let mut group = ProcessGroup::led_by(&child);
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let run = async {
            let write = async {
                let result = stdin.write_all(&line).await;
                drop(stdin);
                result
            };
            let read_answer = async {
                let output = read_bounded(stdout, self.max_output_bytes, false).await;
                if matches!(output, Ok((_, true))) {
                    // Stop it now: it would block on a full pipe until the timeout.
                    group.kill();
                }
                output
            };
            let (written, output, errors) = tokio::join!(
                write,
                read_answer,
                read_bounded(stderr, MAX_STDERR_BYTES, true),
            );
            (written, output, errors, child.wait().await)
        };
        let Ok((written, output, errors, status)) = tokio::time::timeout(self.timeout, run).await
        else {
            group.kill();
            let _ = child.wait().await;
            group.reaped();
            return Err(PluginError::Timeout {
                plugin: self.name.clone(),
                after: self.timeout,
            });
        };
        let io = |stage, source| PluginError::Io {
            plugin: self.name.clone(),
            stage,
            source,
        };
        let status = status.map_err(|e| io("waiting for exit", e))?;
        group.reaped();
        let (stdout, stdout_overflow) = output.map_err(|e| io("reading stdout", e))?;
        if stdout_overflow {
            return Err(PluginError::OutputTooLarge {
                plugin: self.name.clone(),
                limit: self.max_output_bytes,
            });
        }
        let (stderr, _) = errors.map_err(|e| io("reading stderr", e))?;
        let stdout = String::from_utf8_lossy(&stdout);
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let detail = if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            };
            return Err(PluginError::Exit {
                plugin: self.name.clone(),
                status,
                detail: bounded(detail.trim().to_owned()),
            });
        }
        // A plugin that exits 0 without reading its request is still judged by its
        // answer; only when it gave none does the failed write explain anything.
        let Some(answer) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
            return Err(match written {
                Err(source) => io("writing the request", source),
                Ok(()) => PluginError::NoOutput {
                    plugin: self.name.clone(),
                },
            });
        };
        self.parse_answer(answer)
    }

    fn parse_answer(&self, line: &str) -> Result<Vec<StreamEvent>, PluginError> {
        let response: RpcResponse =
            serde_json::from_str(line).map_err(|error| PluginError::Garbage {
                plugin: self.name.clone(),
                reason: error.to_string(),
                line: snippet(line).to_owned(),
            })?;
        if let Some(error) = response.error {
            return Err(PluginError::Rpc {
                plugin: self.name.clone(),
                code: error.code,
                message: bounded(error.message),
            });
        }
        let result = response.result.ok_or_else(|| PluginError::Empty {
            plugin: self.name.clone(),
        })?;
        let mut events = Vec::new();
        if !result.content.is_empty() {
            events.push(StreamEvent::TextDelta(result.content));
        }
        let mut any_call = false;
        for (position, entry) in result
            .tool_calls
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            // ZeptoClaw skips entries it cannot read; so do we, loudly.
            let Ok(RpcToolCall {
                id,
                name: Some(name),
                arguments,
            }) = serde_json::from_value::<RpcToolCall>(entry.clone())
            else {
                tracing::warn!(plugin = %self.name, position, "skipping unreadable tool call");
                continue;
            };
            let id = id.unwrap_or_else(|| format!("call_{position}"));
            let arguments = match arguments {
                Some(Value::String(text)) => text,
                Some(value) => value.to_string(),
                None => "{}".to_owned(),
            };
            events.push(StreamEvent::ToolCallStart {
                id: id.clone(),
                name: name.clone(),
            });
            events.push(StreamEvent::ToolCallArgsDelta {
                id: id.clone(),
                delta: arguments.clone(),
            });
            events.push(StreamEvent::ToolCallEnd(super::ToolCall {
                id,
                name,
                arguments,
                signature: None,
            }));
            any_call = true;
        }
        if let Some(usage) = result.usage {
            events.push(StreamEvent::Usage(Usage {
                input_tokens: u64::from(usage.input_tokens),
                output_tokens: u64::from(usage.output_tokens),
                ..Usage::default()
            }));
        }
        events.push(StreamEvent::Done {
            stop_reason: if any_call {
                StopReason::ToolUse
            } else {
                StopReason::EndTurn
            },
        });
        Ok(events)
    }
}

/// Reads up to `limit` bytes and returns them with whether there was more. With
/// `drain_excess` the rest is read and dropped (so the writer never blocks on it).
async fn read_bounded(
    mut reader: impl AsyncRead + Unpin,
    limit: usize,
    drain_excess: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut reader)
        .take(limit as u64)
        .read_to_end(&mut kept)
        .await?;
    let mut probe = [0u8; 1];
    let overflow = reader.read(&mut probe).await? > 0;
    if overflow && drain_excess {
        tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    }
    Ok((kept, overflow))
}

/// The plugin's process group (it leads its own, see `process_group(0)`), SIGKILLed on
/// drop unless its leader was reaped first, so children the plugin spawned die with it.
/// After the reap the group id could in principle be reused, so it is then left alone.
struct ProcessGroup {
    leader: Option<i32>,
}

impl ProcessGroup {
    fn led_by(child: &tokio::process::Child) -> Self {
        Self {
            leader: child.id().and_then(|pid| i32::try_from(pid).ok()),
        }
    }

    fn kill(&self) {
        if let Some(pid) = self.leader {
            // SAFETY: kill(2) with a negative pid signals a process group and touches no
            // memory; the group is the plugin's because its leader is not reaped yet.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }

    fn reaped(&mut self) {
        self.leader = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}
