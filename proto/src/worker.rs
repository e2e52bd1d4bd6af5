//! The worker supervisor's protocol: tool requests in, streamed output and one final result
//! out, over [`crate::frame`] frames on a Unix socket.
//!
//! Two hops use these types:
//! - gateway ⇄ supervisor (`spiderweb-worker supervise`): the gateway writes [`ToolRequest`]
//!   frames and reads [`SupervisorReply`] frames. Requests may be pipelined on one connection;
//!   every reply carries the `request_id` of its request, and each request ends with exactly
//!   one [`SupervisorReply::Result`]. Closing the connection cancels the calls still running
//!   on it (their workers are killed), so keep it open until the results are in.
//! - supervisor ⇄ confined worker (stdin/stdout of the worker process): the worker reads one
//!   [`WorkerTask`] *after* it has confined itself and writes [`WorkerEvent`]s.
//!
//! The tool argument and result shapes are those of spec `legacy-v1.md` §6.1; the argument
//! structs derive JSON Schemas ([`tool_schemas`]) that the gateway hands to models, so the
//! schema a model sees and the parser the worker runs can never disagree.
//!
//! This module holds shapes only: no defaults are applied and no limit is enforced here (the
//! worker does both), except the published constants both sides need.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest frame on either hop. A `file_read` result carries up to 8 MiB of text, which JSON
/// escaping can grow up to six-fold (`\u0000`), so the bound sits above that.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Cap on each of `stdout` and `stderr` of `shell_exec` (spec §6.1), also applied to the
/// streamed [`WorkerEvent::Output`] chunks of one call.
pub const MAX_STREAM_BYTES: usize = 1024 * 1024;

/// A sandbox profile as named on the wire and in configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SandboxProfile {
    /// The workspace and system paths are read-only; no network.
    #[serde(rename = "read-only")]
    ReadOnly,
    /// The workspace is writable except protected paths; no network.
    #[default]
    #[serde(rename = "workspace-write")]
    WorkspaceWrite,
    /// As `workspace-write`, plus TCP/UDP networking.
    #[serde(rename = "workspace-write+network")]
    WorkspaceWriteNetwork,
}

impl SandboxProfile {
    /// Every profile, for tables and tests.
    pub const ALL: [SandboxProfile; 3] =
        [SandboxProfile::ReadOnly, SandboxProfile::WorkspaceWrite, SandboxProfile::WorkspaceWriteNetwork];

    /// The configuration / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxProfile::ReadOnly => "read-only",
            SandboxProfile::WorkspaceWrite => "workspace-write",
            SandboxProfile::WorkspaceWriteNetwork => "workspace-write+network",
        }
    }
}

impl fmt::Display for SandboxProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown profile name.
#[derive(Debug, thiserror::Error)]
#[error("unknown sandbox profile `{0}` (expected read-only, workspace-write or workspace-write+network)")]
pub struct UnknownProfile(pub String);

impl FromStr for SandboxProfile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, UnknownProfile> {
        SandboxProfile::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// The five tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    /// Read a file of the workspace.
    FileRead,
    /// Write (or append to) a file of the workspace.
    FileWrite,
    /// List a directory of the workspace.
    FileList,
    /// Search file contents with a regular expression.
    SearchCode,
    /// Run a command with `bash -lc` in the workspace.
    ShellExec,
}

impl ToolName {
    /// Every tool, in the order schemas are published.
    pub const ALL: [ToolName; 5] =
        [ToolName::FileRead, ToolName::FileWrite, ToolName::FileList, ToolName::SearchCode, ToolName::ShellExec];

    /// The tool's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::FileRead => "file_read",
            ToolName::FileWrite => "file_write",
            ToolName::FileList => "file_list",
            ToolName::SearchCode => "search_code",
            ToolName::ShellExec => "shell_exec",
        }
    }

    /// Looks a wire name up; `None` is answered with [`FailureCode::ToolNotFound`].
    pub fn parse(name: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// gateway → supervisor: run one tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolRequest {
    /// Chosen by the gateway, echoed by every reply to this request.
    pub request_id: String,
    /// The tenant; selects the uid the worker runs as (when the supervisor may switch uids).
    pub tenant: String,
    /// The agent session the call belongs to (recorded, and part of approval keys upstream).
    pub session: String,
    /// Absolute path of the workspace directory on the supervisor's host.
    pub workspace: String,
    /// The sandbox profile, as chosen by `spiderweb_policy::sandbox` for the tenant/project.
    #[serde(default)]
    pub profile: SandboxProfile,
    /// Tool name as the model gave it (unknown names get [`FailureCode::ToolNotFound`]).
    pub tool: String,
    /// The tool's arguments object, unparsed (validated by the worker).
    #[serde(default = "empty_object")]
    pub args: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Which stream a chunk of `shell_exec` output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The final outcome of a tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ToolOutcome {
    /// The tool ran; `payload` is its result object (spec §6.1 "success payload").
    Ok {
        /// One of the `*Result` structs of this module, as JSON.
        payload: Value,
    },
    /// The tool failed or was refused.
    Failed {
        /// Machine-readable class.
        code: FailureCode,
        /// Human-readable reason.
        message: String,
    },
}

impl ToolOutcome {
    /// A failure with a message.
    pub fn failed(code: FailureCode, message: impl Into<String>) -> Self {
        ToolOutcome::Failed { code, message: message.into() }
    }
}

/// Failure codes: spec §6.2 plus the ones only a confined worker can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// Missing or mistyped argument.
    InvalidParams,
    /// The path is outside the workspace, protected, or the sandbox refused the access.
    PermissionDenied,
    /// The tool or the worker ran out of wall-clock time.
    Timeout,
    /// The operation failed (OS error name in the message).
    ExecutionFailed,
    /// No such tool.
    ToolNotFound,
    /// The tool's program could not be started.
    ToolNotExecutable,
    /// The worker could not confine itself (the message names the missing kernel feature);
    /// the tool did not run.
    SandboxUnavailable,
    /// The request was refused before a worker started (bad workspace, unknown tenant,
    /// supervisor at capacity).
    Rejected,
}

/// supervisor → gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SupervisorReply {
    /// A chunk of `shell_exec` output, in order, before the result.
    Output {
        /// The request this belongs to.
        request_id: String,
        /// stdout or stderr.
        stream: OutputStream,
        /// The chunk (invalid UTF-8 replaced).
        data: String,
    },
    /// The last frame for a request.
    Result {
        /// The request this answers.
        request_id: String,
        /// What happened.
        #[serde(flatten)]
        outcome: ToolOutcome,
    },
    /// A frame that could not be read as a [`ToolRequest`]; no request id is known. The
    /// connection stays open.
    Malformed {
        /// Parser position and category (never payload bytes).
        message: String,
    },
}

/// supervisor → confined worker (stdin), read only after confinement is complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerTask {
    /// Tool wire name.
    pub tool: String,
    /// Arguments object.
    pub args: Value,
}

/// confined worker → supervisor (stdout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Confinement is complete; the worker is about to read its task. Lets the supervisor
    /// refuse to send request data to a worker that did not get this far.
    Confined,
    /// A chunk of output.
    Output {
        /// stdout or stderr.
        stream: OutputStream,
        /// The chunk.
        data: String,
    },
    /// The final outcome; the worker exits after writing it.
    Done {
        /// What happened.
        #[serde(flatten)]
        outcome: ToolOutcome,
    },
}

// ---- tool arguments (spec legacy-v1 §6.1) -------------------------------------------------

/// `file_read` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileReadArgs {
    /// Path of the file, relative to the workspace (or absolute beneath `/workspace`).
    pub path: String,
    /// Maximum bytes to return (default 1048576, capped at 8388608).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Block until the file can be read (default true); false opens non-blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until_ready: Option<bool>,
}

/// `file_write` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileWriteArgs {
    /// Path of the file, relative to the workspace.
    pub path: String,
    /// Text to write.
    pub content: String,
    /// Append instead of replacing (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
    /// Create missing parent directories (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_parents: Option<bool>,
    /// Block until the file can be written (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until_ready: Option<bool>,
}

/// `file_list` arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileListArgs {
    /// Directory to list, relative to the workspace (default ".").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// List subdirectories too; names are then relative paths like `a/b` (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursive: Option<bool>,
    /// Maximum entries to return (default 500, capped at 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
}

/// `search_code` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchCodeArgs {
    /// Regular expression (Rust/ripgrep syntax).
    pub query: String,
    /// Directory or file to search, relative to the workspace (default ".").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Match case exactly (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
    /// Maximum matches to return (default 200, capped at 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u64>,
}

/// `shell_exec` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShellExecArgs {
    /// Command line, run with `bash -lc`.
    pub command: String,
    /// Time limit in milliseconds (default 30000, capped at 300000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Directory to run in, relative to the workspace (default: the workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

// ---- tool results (spec legacy-v1 §6.1 "success payload") ---------------------------------

/// `file_read` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileReadResult {
    /// The path as requested.
    pub path: String,
    /// Bytes returned in `content`.
    pub bytes: u64,
    /// The file was longer than `max_bytes` (content cut back to a UTF-8 boundary).
    pub truncated: bool,
    /// The text (invalid UTF-8 replaced).
    pub content: String,
    /// False when a non-blocking read would have blocked.
    pub ready: bool,
    /// Echo of the argument.
    pub wait_until_ready: bool,
}

/// `file_write` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileWriteResult {
    /// The path as requested.
    pub path: String,
    /// Bytes written.
    pub bytes_written: u64,
    /// Echo of the argument.
    pub append: bool,
    /// False when a non-blocking write would have blocked.
    pub ready: bool,
    /// Echo of the argument.
    pub wait_until_ready: bool,
}

/// The type of a listed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// Regular file.
    File,
    /// Directory.
    Directory,
    /// Symbolic link (not followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// One `file_list` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Name, or relative path when recursive.
    pub name: String,
    /// Entry type.
    #[serde(rename = "type")]
    pub kind: EntryType,
}

/// `file_list` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileListResult {
    /// The path as requested.
    pub path: String,
    /// Entries, sorted by name.
    pub entries: Vec<ListEntry>,
    /// More entries existed than were returned (or the time limit was hit).
    pub truncated: bool,
}

/// `search_code` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchCodeResult {
    /// The path as requested.
    pub path: String,
    /// The query.
    pub query: String,
    /// `file:line:text`, sorted.
    pub matches: Vec<String>,
    /// `matches.len()`.
    pub count: u64,
    /// More matches existed than were returned.
    pub truncated: bool,
}

/// `shell_exec` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShellExecResult {
    /// Exit status, or the signal number if the command was killed by a signal.
    pub exit_code: i32,
    /// Standard output (at most [`MAX_STREAM_BYTES`]).
    pub stdout: String,
    /// Standard error (at most [`MAX_STREAM_BYTES`]).
    pub stderr: String,
}

/// A tool as offered to a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    /// The tool's name.
    pub name: &'static str,
    /// What it does, for the model.
    pub description: &'static str,
    /// JSON Schema of its arguments object.
    pub parameters: Value,
}

/// The five tools' descriptions and argument schemas, generated from the argument structs.
pub fn tool_schemas() -> Vec<ToolSchema> {
    ToolName::ALL.into_iter().map(tool_schema).collect()
}

/// One tool's description and argument schema.
pub fn tool_schema(tool: ToolName) -> ToolSchema {
    let (description, schema) = match tool {
        ToolName::FileRead => ("Read a text file of the workspace.", schemars::schema_for!(FileReadArgs)),
        ToolName::FileWrite => {
            ("Write or append text to a file of the workspace.", schemars::schema_for!(FileWriteArgs))
        }
        ToolName::FileList => ("List a directory of the workspace.", schemars::schema_for!(FileListArgs)),
        ToolName::SearchCode => {
            ("Search file contents of the workspace with a regular expression.", schemars::schema_for!(SearchCodeArgs))
        }
        ToolName::ShellExec => {
            ("Run a shell command (bash -lc) in the workspace.", schemars::schema_for!(ShellExecArgs))
        }
    };
    ToolSchema { name: tool.as_str(), description, parameters: schema.to_value() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn profiles_round_trip_by_name_and_default_to_workspace_write() {
        for p in SandboxProfile::ALL {
            assert_eq!(p.as_str().parse::<SandboxProfile>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), json!(p.as_str()));
        }
        assert_eq!(SandboxProfile::default(), SandboxProfile::WorkspaceWrite);
        assert!("network".parse::<SandboxProfile>().is_err());
        let req: ToolRequest = serde_json::from_value(json!({
            "request_id": "r1", "tenant": "t", "session": "s", "workspace": "/w", "tool": "file_list"
        }))
        .unwrap();
        assert_eq!(req.profile, SandboxProfile::WorkspaceWrite);
        assert_eq!(req.args, json!({}));
    }

    #[test]
    fn tool_names_are_the_spec_names() {
        let names: Vec<_> = ToolName::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["file_read", "file_write", "file_list", "search_code", "shell_exec"]);
        for t in ToolName::ALL {
            assert_eq!(ToolName::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
        assert_eq!(ToolName::parse("rm_rf"), None);
    }

    #[test]
    fn replies_have_a_flat_shape_the_gateway_can_match_on() {
        let done = SupervisorReply::Result {
            request_id: "r9".into(),
            outcome: ToolOutcome::failed(FailureCode::Timeout, "command timed out"),
        };
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"type":"result","request_id":"r9","status":"failed","code":"timeout","message":"command timed out"})
        );
        let out = SupervisorReply::Output { request_id: "r9".into(), stream: OutputStream::Stderr, data: "x".into() };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"type":"output","request_id":"r9","stream":"stderr","data":"x"})
        );
        let ok = WorkerEvent::Done { outcome: ToolOutcome::Ok { payload: json!({"exit_code":0}) } };
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(text, r#"{"type":"done","status":"ok","payload":{"exit_code":0}}"#);
        assert_eq!(serde_json::from_str::<WorkerEvent>(&text).unwrap(), ok);
    }

    #[test]
    fn schemas_name_required_parameters_as_the_spec_does() {
        let schemas = tool_schemas();
        assert_eq!(schemas.len(), 5);
        let required = |name: &str| -> Vec<String> {
            let s = schemas.iter().find(|s| s.name == name).unwrap();
            assert_eq!(s.parameters["type"], "object", "{name}");
            serde_json::from_value(s.parameters.get("required").cloned().unwrap_or(json!([]))).unwrap()
        };
        assert_eq!(required("file_read"), ["path"]);
        assert_eq!(required("file_write"), ["path", "content"]);
        assert!(required("file_list").is_empty());
        assert_eq!(required("search_code"), ["query"]);
        assert_eq!(required("shell_exec"), ["command"]);
        let shell = schemas.iter().find(|s| s.name == "shell_exec").unwrap();
        assert!(shell.parameters["properties"]["timeout_ms"].is_object());
    }
}
