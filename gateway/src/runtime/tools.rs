//! One tool call: approval when policy asks for it, then the worker supervisor.
//!
//! Why it exists: between a model's tool call and its result sit two decisions that are
//! not the model's: whether a human must approve (`policy::approval`: mode, `ALWAYS`
//! memory bound to exact argv + cwd + session) and where it runs (the worker supervisor,
//! which confines a worker before it reads the request). This module asks the first and
//! performs the second, streaming output to the job's event stream.
//!
//! What it must never do: run a tool in this process, or run one that a human denied. A
//! supervisor that cannot be reached is retried (`tool_retry_max_attempts`); a tool that
//! ran and failed is reported to the model as a failed result, never retried (it may have
//! had effects).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use spiderweb_client::worker::{ToolCall as WorkerCall, ToolProgress};
use spiderweb_policy::approval::{self, CommandCall, Decision, Gate, Resolution};
use spiderweb_proto::worker::{ToolName, ToolOutcome, ToolRequest};

use super::job::{Job, JobState};
use super::model::{self, Streaming};
use super::transcript::session_log;
use super::{Origin, Runtime};
use crate::providers::{ChatRequest, Message, ToolCall, ToolSchema};

/// Explanations a human may ask for before answering one approval.
const MAX_EXPLAINS: u32 = 3;
/// Tool result text kept for the model (bigger results are cut, with a note).
const MAX_RESULT_CHARS: usize = 64 << 10;
/// Time beyond a command's own timeout that the supervisor gets to report it.
const LEASE_GRACE: Duration = Duration::from_secs(10);

/// What became of a call.
pub enum Outcome {
    /// Report this to the model.
    Result { content: String, is_error: bool },
    /// A human said `NO`: the turn ends.
    StopTurn,
}

/// The five tools as offered to the model. `shell_exec` gets two arguments the gateway
/// consumes: `require_approval` (the model asks a human first; what `on-request` mode
/// waits for) and `justification`. Generated once: every model call sends them.
pub fn schemas() -> &'static [ToolSchema] {
    static SCHEMAS: std::sync::OnceLock<Vec<ToolSchema>> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(generate_schemas)
}

fn generate_schemas() -> Vec<ToolSchema> {
    spiderweb_proto::worker::tool_schemas()
        .into_iter()
        .map(|schema| {
            let mut parameters = schema.parameters;
            if schema.name == ToolName::ShellExec.as_str()
                && let Some(properties) = parameters.get_mut("properties").and_then(Value::as_object_mut)
            {
                properties.insert(
                    "require_approval".into(),
                    json!({"type": "boolean", "description": "Ask the user to approve this command before it runs (do this for anything risky or outside the task)."}),
                );
                properties.insert(
                    "justification".into(),
                    json!({"type": "string", "description": "Why the command is needed, shown to the user with the approval request."}),
                );
            }
            ToolSchema { name: schema.name.into(), description: schema.description.into(), parameters }
        })
        .collect()
}

/// Runs one call to its outcome. `approval_seq` numbers approval ids within the job.
pub async fn run(
    runtime: &Arc<Runtime>,
    job: &Job,
    origin: &Origin,
    call: &ToolCall,
    approval_seq: &AtomicU32,
) -> Outcome {
    let now = crate::plane::now_ms;
    let arguments: Value = serde_json::from_str(&call.arguments).unwrap_or(Value::Null);
    job.emit(json!({"type": "tool_call", "call_id": call.id, "tool": call.name, "arguments": arguments}), false, now());
    let outcome = match prepare(call, arguments) {
        Err(message) => Outcome::Result { content: message, is_error: true },
        Ok(prepared) => match ask(runtime, job, origin, call, &prepared, approval_seq).await {
            Approval::Run => execute(runtime, job, origin, call, prepared).await,
            Approval::DeniedContinue => Outcome::Result {
                content: "The user denied this tool call. Do not retry it; continue without it or ask the user.".into(),
                is_error: true,
            },
            Approval::DeniedStop => Outcome::StopTurn,
        },
    };
    match &outcome {
        Outcome::Result { content, is_error } => job.emit(
            json!({"type": "tool_result", "call_id": call.id, "ok": !is_error, "content": content}),
            false,
            now(),
        ),
        Outcome::StopTurn => {
            job.emit(json!({"type": "tool_result", "call_id": call.id, "ok": false, "content": "denied"}), false, now())
        }
    }
    outcome
}

/// A call whose arguments parsed, split into what the worker gets and what the gateway keeps.
struct Prepared {
    tool: ToolName,
    args: Value,
    require_approval: bool,
    justification: Option<String>,
}

fn prepare(call: &ToolCall, arguments: Value) -> Result<Prepared, String> {
    let Some(tool) = ToolName::parse(&call.name) else {
        return Err(format!(
            "unknown tool {:?}; the tools are file_read, file_write, file_list, search_code, shell_exec",
            call.name
        ));
    };
    let Value::Object(mut args) = arguments else {
        return Err(format!("the arguments of {} must be a JSON object", call.name));
    };
    let require_approval = args.remove("require_approval").and_then(|v| v.as_bool()).unwrap_or(false);
    let justification = args.remove("justification").and_then(|v| v.as_str().map(str::to_owned));
    Ok(Prepared { tool, args: Value::Object(args), require_approval, justification })
}

/// What approval is about: the argv and cwd an `ALWAYS` is bound to. Read-only file tools
/// are never gated; `file_write` is gated like a command named after it.
fn subject(prepared: &Prepared) -> Option<(Vec<String>, String)> {
    let text = |key: &str| prepared.args.get(key).and_then(Value::as_str).map(str::to_owned);
    match prepared.tool {
        ToolName::ShellExec => {
            let command = text("command").unwrap_or_default();
            let argv = approval::shell_argv(&command);
            // A line with shell syntax has no simple argv: bind to the whole line.
            let argv = if argv.is_empty() { vec!["bash".into(), "-lc".into(), command] } else { argv };
            Some((argv, text("cwd").unwrap_or_else(|| ".".into())))
        }
        ToolName::FileWrite => Some((vec!["file_write".into(), text("path").unwrap_or_default()], ".".into())),
        ToolName::FileRead | ToolName::FileList | ToolName::SearchCode => None,
    }
}

enum Approval {
    Run,
    DeniedContinue,
    DeniedStop,
}

async fn ask(
    runtime: &Arc<Runtime>,
    job: &Job,
    origin: &Origin,
    call: &ToolCall,
    prepared: &Prepared,
    approval_seq: &AtomicU32,
) -> Approval {
    let Some((argv, cwd)) = subject(prepared) else { return Approval::Run };
    let session = &origin.conversation.session_key;
    let command = CommandCall { argv: &argv, cwd: &cwd, session, model_requested_approval: prepared.require_approval };
    let mode = runtime.settings.approval_mode;
    if runtime.with_approvals(&origin.conversation, |a| approval::gate(mode, &command, a)) == Gate::Run {
        return Approval::Run;
    }
    let mut explains = 0;
    loop {
        let approval_id = format!("ap-{}", approval_seq.fetch_add(1, Ordering::Relaxed) + 1);
        let receiver = job.await_approval(&approval_id);
        runtime.set_state(job, JobState::WaitingApproval);
        job.emit(
            json!({"type": "approval_request", "approval_id": approval_id, "call_id": call.id, "tool": call.name,
                   "arguments": prepared.args, "argv": argv, "cwd": cwd, "justification": prepared.justification}),
            false,
            crate::plane::now_ms(),
        );
        job.log(&format!("[approval] {approval_id} requested for {} {:?}", call.name, argv));
        if let Some(log) = session_log(runtime, origin) {
            let payload = json!({"command": argv, "applyPatch": null});
            log.record(
                "websocket_message_sent",
                false,
                json!({"id": approval_id, "type": "approval_request", "payload": payload}),
            );
        }
        // The job's cancellation (client gone, timeout) ends the wait: the outer select drops us.
        let decision = receiver.await.unwrap_or(Decision::No);
        runtime.set_state(job, JobState::Running);
        job.emit(
            json!({"type": "approval", "approval_id": approval_id, "decision": decision_name(decision)}),
            false,
            crate::plane::now_ms(),
        );
        job.log(&format!("[approval] {approval_id} answered {}", decision_name(decision)));
        if let Some(log) = session_log(runtime, origin) {
            let payload = json!({"review": decision_name(decision)});
            log.record(
                "websocket_message_received",
                true,
                json!({"id": approval_id, "type": "approval_response", "payload": payload}),
            );
        }
        match approval::resolve(decision, &command) {
            Resolution::Run => return Approval::Run,
            Resolution::RunAndRemember(key) => {
                if !runtime.with_approvals(&origin.conversation, |a| a.remember(key)) {
                    job.log("[approval] this session remembers too many approvals; ALWAYS acted as YES");
                }
                return Approval::Run;
            }
            Resolution::Deny { stop_turn: false } => return Approval::DeniedContinue,
            Resolution::Deny { stop_turn: true } => return Approval::DeniedStop,
            Resolution::Explain if explains >= MAX_EXPLAINS => return Approval::DeniedContinue,
            Resolution::Explain => {
                explains += 1;
                let text = explain(runtime, job, call).await;
                job.emit(
                    json!({"type": "explanation", "approval_id": approval_id, "text": text}),
                    false,
                    crate::plane::now_ms(),
                );
            }
        }
    }
}

/// Asks the model to explain a call it made, without tools; a failure becomes the text.
async fn explain(runtime: &Runtime, job: &Job, call: &ToolCall) -> String {
    let settings = &runtime.settings;
    let request = ChatRequest {
        model: settings.model.clone(),
        system: Some("You explain tool calls to the user who must approve them. Two or three sentences: what it does, why it is needed, what could go wrong.".into()),
        messages: vec![Message::User {
            text: format!("Explain this {} call: {}", call.name, call.arguments),
        }],
        tools: vec![],
        max_output_tokens: settings.max_output_tokens.min(512),
        temperature: None,
    };
    match model::call(runtime, job, &request, Streaming::Quiet).await {
        Ok(reply) if !reply.text.trim().is_empty() => reply.text,
        Ok(_) => "(the model gave no explanation)".into(),
        Err(e) => format!("(no explanation: {e})"),
    }
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Yes => "YES",
        Decision::No => "NO",
        Decision::NoContinue => "NO_CONTINUE",
        Decision::Always => "ALWAYS",
        Decision::Explain => "EXPLAIN",
    }
}

/// Parses a client's decision word.
pub fn parse_decision(text: &str) -> Option<Decision> {
    Some(match text {
        "YES" => Decision::Yes,
        "NO" => Decision::No,
        "NO_CONTINUE" => Decision::NoContinue,
        "ALWAYS" => Decision::Always,
        "EXPLAIN" => Decision::Explain,
        _ => return None,
    })
}

async fn execute(runtime: &Arc<Runtime>, job: &Job, origin: &Origin, call: &ToolCall, prepared: Prepared) -> Outcome {
    let settings = &runtime.settings;
    let conversation = &origin.conversation;
    let workspace = settings.workspace_root.join(&conversation.project_id);
    let own_timeout = prepared.args.get("timeout_ms").and_then(Value::as_u64).map(Duration::from_millis);
    let lease = settings.tool_lease_timeout.max(own_timeout.unwrap_or_default() + LEASE_GRACE);
    let mut last_error = String::new();
    for attempt in 1..=settings.tool_retry_max_attempts {
        let request = ToolRequest {
            request_id: format!("{}-{}-{attempt}", job.id, call.id),
            tenant: conversation.project_id.clone(),
            session: conversation.session_key.clone(),
            workspace: workspace.display().to_string(),
            profile: settings.sandbox_profile,
            tool: prepared.tool.as_str().to_owned(),
            args: prepared.args.clone(),
        };
        match tokio::time::timeout(lease, one_attempt(job, call, &settings.worker_socket, request)).await {
            Ok(Ok(outcome)) => return to_result(outcome),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => {
                // Dropping the attempt closed its connection; the supervisor kills the worker.
                return Outcome::Result {
                    content: format!(
                        "the tool did not finish within its lease of {} ms and was stopped",
                        lease.as_millis()
                    ),
                    is_error: true,
                };
            }
        }
        job.log(&format!("[tool retry] attempt={attempt} call={} reason={last_error}", call.id));
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Outcome::Result { content: format!("the tool could not be run: {last_error}"), is_error: true }
}

async fn one_attempt(
    job: &Job,
    call: &ToolCall,
    socket: &std::path::Path,
    request: ToolRequest,
) -> Result<ToolOutcome, spiderweb_client::worker::WorkerClientError> {
    let mut running = WorkerCall::start(socket, request).await?;
    loop {
        match running.next().await? {
            ToolProgress::Output { stream, data } => job.emit(
                json!({"type": "tool_output", "call_id": call.id, "stream": stream, "data": data}),
                true,
                crate::plane::now_ms(),
            ),
            ToolProgress::Done(outcome) => return Ok(outcome),
        }
    }
}

fn to_result(outcome: ToolOutcome) -> Outcome {
    match outcome {
        ToolOutcome::Ok { payload } => Outcome::Result { content: bounded(render_payload(payload)), is_error: false },
        ToolOutcome::Failed { code, message } => {
            let code = serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            Outcome::Result { content: bounded(format!("{code}: {message}")), is_error: true }
        }
    }
}

/// Tool payloads go to the model as JSON, except file contents and command output, which
/// read better as text.
fn render_payload(payload: Value) -> String {
    let Value::Object(map) = &payload else { return payload.to_string() };
    let field = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    if let (Some(stdout), Some(code)) = (field(map, "stdout"), map.get("exit_code")) {
        let stderr = field(map, "stderr").unwrap_or_default();
        return format!("exit code {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    }
    payload.to_string()
}

fn bounded(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_RESULT_CHARS) {
        text.truncate(cut);
        text.push_str("\n[… cut: the result was longer than 64 Ki characters]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(tool: &str, args: Value) -> Prepared {
        let call = ToolCall { id: "c".into(), name: tool.into(), arguments: args.to_string(), signature: None };
        prepare(&call, args).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn gateway_only_arguments_are_taken_out_before_the_worker_sees_them() {
        let p = prepared("shell_exec", json!({"command": "ls -la", "require_approval": true, "justification": "look"}));
        assert!(p.require_approval);
        assert_eq!(p.justification.as_deref(), Some("look"));
        assert_eq!(p.args, json!({"command": "ls -la"}));
        assert_eq!(subject(&p), Some((vec!["ls".into(), "-la".into()], ".".into())));
    }

    #[test]
    fn a_command_with_shell_syntax_is_bound_as_a_whole_line_and_reads_are_never_gated() {
        let p = prepared("shell_exec", json!({"command": "ls | wc -l", "cwd": "src"}));
        assert_eq!(subject(&p), Some((vec!["bash".into(), "-lc".into(), "ls | wc -l".into()], "src".into())));
        assert_eq!(subject(&prepared("file_read", json!({"path": "a"}))), None);
        assert!(subject(&prepared("file_write", json!({"path": "a", "content": ""}))).is_some());
    }

    #[test]
    fn unknown_tools_and_non_object_arguments_become_errors_for_the_model() {
        let call = ToolCall { id: "c".into(), name: "rm_rf".into(), arguments: "{}".into(), signature: None };
        assert!(prepare(&call, json!({})).is_err());
        let call = ToolCall { id: "c".into(), name: "file_read".into(), arguments: "[]".into(), signature: None };
        assert!(prepare(&call, json!([])).is_err());
    }

    #[test]
    fn the_offered_shell_exec_schema_has_the_approval_arguments() {
        let shell = schemas().iter().find(|s| s.name == "shell_exec").unwrap();
        assert!(shell.parameters["properties"]["require_approval"].is_object());
        assert_eq!(schemas().len(), 5);
        assert_eq!(parse_decision("NO_CONTINUE"), Some(Decision::NoContinue));
        assert_eq!(parse_decision("yes"), None);
    }
}
