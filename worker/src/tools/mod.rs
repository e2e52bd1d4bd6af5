//! The five tools, run inside a confined worker against the workspace at `/workspace`.
//!
//! Each tool module parses its arguments (the structs of `spiderweb_proto::worker`, so the
//! schema a model sees is the parser that runs), applies the spec's defaults and caps
//! (`legacy-v1.md` §6.1), and answers with a result struct or a [`ToolError`] carrying one of
//! the spec's failure codes. Paths go through [`paths`], never through string checks. Tools
//! never start processes other than `bash` (shell_exec) and `rg` (search_code), and only
//! shell_exec streams output.

pub mod file_list;
pub mod file_read;
pub mod file_write;
pub mod paths;
pub mod search_code;
pub mod shell_exec;

use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use spiderweb_proto::worker::{FailureCode, OutputStream, ToolName, ToolOutcome};

use crate::plan::SearchBackend;

/// A failed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// Failure class.
    pub code: FailureCode,
    /// Reason.
    pub message: String,
}

impl ToolError {
    /// A failure.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        ToolError { code, message: message.into() }
    }

    /// `invalid_params`.
    pub fn invalid(message: impl Into<String>) -> Self {
        ToolError::new(FailureCode::InvalidParams, message)
    }
}

/// What a tool may use.
pub struct ToolContext<'a> {
    /// `/workspace`, opened before any tool ran.
    pub workspace: &'a OwnedFd,
    /// `search_code` implementation.
    pub search_backend: SearchBackend,
    /// Receives streamed output chunks.
    pub emit: &'a mut dyn FnMut(OutputStream, &[u8]),
    /// A login shell started before the call (warm workers), used by `shell_exec`.
    pub prestarted_shell: Option<shell_exec::PrestartedShell>,
}

/// Parses an arguments object: `missing required parameter: <name>` for absent required
/// keys (spec wording), `invalid parameter <name>: …` for mistyped ones.
pub fn parse_args<T: DeserializeOwned>(args: Value, required: &[&str]) -> Result<T, ToolError> {
    let Value::Object(map) = &args else {
        return Err(ToolError::invalid("arguments must be a JSON object"));
    };
    for key in required {
        if map.get(*key).is_none_or(Value::is_null) {
            return Err(ToolError::invalid(format!("missing required parameter: {key}")));
        }
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        ToolError::invalid(format!("invalid parameter {path}: {}", e.into_inner()))
    })
}

fn ok<T: Serialize>(result: Result<T, ToolError>) -> ToolOutcome {
    match result
        .and_then(|r| serde_json::to_value(r).map_err(|e| ToolError::new(FailureCode::ExecutionFailed, e.to_string())))
    {
        Ok(payload) => ToolOutcome::Ok { payload },
        Err(e) => ToolOutcome::Failed { code: e.code, message: e.message },
    }
}

/// Runs one tool call to its outcome.
pub fn dispatch(tool: &str, args: Value, ctx: &mut ToolContext<'_>) -> ToolOutcome {
    let Some(tool) = ToolName::parse(tool) else {
        return ToolOutcome::failed(FailureCode::ToolNotFound, format!("unknown tool: {tool}"));
    };
    match tool {
        ToolName::FileRead => ok(file_read::run(args, ctx)),
        ToolName::FileWrite => ok(file_write::run(args, ctx)),
        ToolName::FileList => ok(file_list::run(args, ctx)),
        ToolName::SearchCode => ok(search_code::run(args, ctx)),
        ToolName::ShellExec => ok(shell_exec::run(args, ctx)),
    }
}
