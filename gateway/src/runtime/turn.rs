//! The turn loop: model call → tool calls → results → model call … until the model answers.
//!
//! Why it exists: this is the agent. One job runs one turn for one prompt: the prompt is
//! stored, the conversation loaded (compacted if it outgrew the window), and then each step
//! asks the model, records its reply and usage, and runs the tool calls it made (at most
//! `max_inflight_tool_calls_per_run` at once, each through approval policy and the worker
//! supervisor) until a reply has no tool calls.
//!
//! Stops, each with a clear code: `max_run_steps`, `budget_exceeded`, `runtime_timeout`
//! (`chat_operation_timeout_ms`), `runtime_cancelled` (the client that started the job
//! left, or the gateway is stopping — the provider request is aborted and the workers are
//! killed because their futures are dropped), `approval_denied` (a human answered `NO`),
//! and the provider's own failures (`provider_*`, see `model.rs`).
//!
//! Durability: every message and usage record is in the store before the event that tells
//! the client about it, and a tool call always gets a stored result (a synthetic one if
//! the turn stopped first), so a conversation can always be continued.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use futures_util::future::join_all;
use serde_json::json;

use super::conversations::{History, Turn};
use super::job::{Job, JobState};
use super::model::{self, Streaming};
use super::tools::{self, Outcome};
use super::transcript::{self, session_log};
use super::{Origin, Runtime, budget, compaction};
use crate::providers::{ChatRequest, Message, ToolCall, Usage};
use crate::store::{ConversationKey, StoreError, UsageRecord};
use tokio::task::JoinHandle;

type Failure = (String, String);

fn failure(code: &str, message: impl Into<String>) -> Failure {
    (code.to_owned(), message.into())
}

/// Runs the job's turn to its end and records the outcome.
pub async fn run(runtime: Arc<Runtime>, job: Arc<Job>, prompt: String, origin: Origin, mut conversation: Turn) {
    runtime.set_state(&job, JobState::Running);
    let timeout = runtime.settings.chat_timeout;
    // This select polls every branch each time a streamed chunk wakes the turn: the
    // gateway-wide shutdown token behind one lock for all turns would be taken by every turn at
    // every chunk, so the turn watches a child token of its own.
    let shutdown = runtime.shutdown.child_token();
    let outcome = tokio::select! {
        outcome = turn(&runtime, &job, prompt, &origin, &mut conversation) => outcome,
        _ = job.cancel.cancelled() => Err(failure(
            "runtime_cancelled",
            "the client that started this job disconnected; the provider request was aborted and running tools were stopped",
        )),
        _ = shutdown.cancelled() => Err(failure("runtime_cancelled", "the gateway is shutting down")),
        _ = tokio::time::sleep(timeout) => Err(failure(
            "runtime_timeout",
            format!("the job ran longer than chat_operation_timeout_ms ({} ms)", timeout.as_millis()),
        )),
    };
    if let Some(log) = session_log(&runtime, &origin) {
        match &outcome {
            Ok(_) => log.record(
                "websocket_message_sent",
                false,
                json!({"id": job.id, "type": "agent_finished", "payload": {"responseId": job.id}}),
            ),
            Err((code, message)) => log.record(
                "websocket_message_sent",
                false,
                json!({"id": job.id, "type": "error", "payload": {"message": message, "details": {"code": code}}}),
            ),
        }
    }
    job.finish(outcome, crate::plane::now_ms());
}

fn stored(e: StoreError) -> Failure {
    failure("storage_error", format!("cannot store the conversation: {e}"))
}

/// Stores a message (on the blocking pool: a commit waits for the disk).
async fn append(
    runtime: &Runtime,
    conversation: &ConversationKey,
    message: &Message,
    job: &Job,
) -> Result<u64, Failure> {
    let (conversation, message, job_id) = (conversation.clone(), message.clone(), job.id.clone());
    runtime.blocking(move |store| transcript::append(store, &conversation, &message, &job_id)).await.map_err(stored)
}

/// Commits the job and its prompt in one transaction, beside the first model call: the
/// commit waits for the disk (milliseconds), the provider for longer. Text deltas of the
/// first reply may stream before it completes — they are previews; every message, tool
/// call, result and usage record is written after it, and each before its own event.
fn commit_start(runtime: &Arc<Runtime>, job: &Job, prompt: &Message) -> PendingStart {
    let record = job.record();
    let body = serde_json::to_value(prompt).unwrap_or_default();
    let runtime = runtime.clone();
    Some(tokio::spawn(async move {
        let now = crate::plane::now_ms();
        runtime.blocking(move |store| store.start_turn(&record, &body, now)).await.map_err(stored)
    }))
}

/// The prompt's commit while it runs; it yields the prompt's seq.
type PendingStart = Option<JoinHandle<Result<u64, Failure>>>;

/// Waits for [`commit_start`]; every later write comes after the prompt. The prompt is the
/// last entry of `history` until then (nothing is added before the first wait), and gets
/// its seq here.
async fn durable(start: &mut PendingStart, history: &mut History) -> Result<(), Failure> {
    let Some(handle) = start.take() else { return Ok(()) };
    let seq = handle.await.unwrap_or_else(|e| Err(failure("storage_error", format!("the commit task failed: {e}"))))?;
    if let Some((prompt_seq, Message::User { .. })) = history.last_mut() {
        *prompt_seq = seq;
    }
    Ok(())
}

/// The conversation so far: what its previous turn left in memory, else the store's copy.
async fn history_of(runtime: &Runtime, key: &ConversationKey, conversation: &mut Turn) -> Result<History, Failure> {
    let load = |key: ConversationKey| runtime.blocking(move |store| transcript::load(store, &key));
    let Some(cached) = conversation.take_history() else {
        return load(key.clone()).await.map_err(stored);
    };
    // Debug builds (every test run) check the cache against the store on each use.
    if cfg!(debug_assertions) {
        let stored_copy = load(key.clone()).await.map_err(stored)?;
        if stored_copy != cached {
            return Err(failure(
                "internal_error",
                format!(
                    "the cached transcript of {} differs from the store: {cached:?} vs {stored_copy:?}",
                    key.session_key
                ),
            ));
        }
    }
    Ok(cached)
}

async fn turn(
    runtime: &Arc<Runtime>,
    job: &Arc<Job>,
    prompt: String,
    origin: &Origin,
    cache: &mut Turn,
) -> Result<String, Failure> {
    let settings = &runtime.settings;
    let conversation = &origin.conversation;

    // Reads do not wait for the disk; the prompt's commit runs beside the first model call.
    let mut history = history_of(runtime, conversation, cache).await?;
    let user = Message::User { text: prompt.clone() };
    let mut start = commit_start(runtime, job, &user);
    history.push((0, user));
    if let Some(log) = session_log(runtime, origin) {
        log.record(
            "websocket_message_received",
            true,
            json!({"id": job.id, "type": "user_input", "payload": {"input": [{"type": "input_text", "text": prompt}]}}),
        );
    }
    let tool_schemas = tools::schemas();
    let approval_seq = AtomicU32::new(0);
    let mut compacted_after_error = false;
    let mut step = 0;
    loop {
        if step >= settings.max_run_steps {
            return Err(failure(
                "max_run_steps",
                format!("the turn made {step} model calls (max_run_steps) without reaching a final answer"),
            ));
        }
        step += 1;
        if budget::is_limited(&settings.budget) {
            let (budget, key, user) = (settings.budget.clone(), conversation.clone(), origin.user.clone());
            let verdict = runtime.blocking(move |store| budget::check(&budget, store, &key, &user)).await;
            if let Err(reason) = verdict.map_err(stored)? {
                return Err(failure("budget_exceeded", reason));
            }
        }
        let mut chat = ChatRequest {
            model: settings.model.clone(),
            system: Some(settings.system_prompt.clone()),
            messages: history.iter().map(|(_, m)| m.clone()).collect(),
            tools: tool_schemas.to_vec(),
            max_output_tokens: settings.max_output_tokens,
            temperature: settings.temperature,
        };
        if compaction::needs_compaction(&chat, settings.model_info.info.context_window) {
            durable(&mut start, &mut history).await?;
            history = compact(runtime, job, origin, history, &chat).await?;
            chat.messages = history.iter().map(|(_, m)| m.clone()).collect();
        }
        let reply = match model::call(runtime, job, &chat, Streaming::ToClient).await {
            Ok(reply) => reply,
            Err(e) if e.context_too_long && !compacted_after_error => {
                compacted_after_error = true;
                durable(&mut start, &mut history).await?;
                history = compact(runtime, job, origin, history, &chat).await?;
                continue;
            }
            Err(e) => return Err(failure(e.code, e.message)),
        };
        durable(&mut start, &mut history).await?;
        record_usage(runtime, job, origin, &reply.usage).await?;

        // A call whose arguments are not JSON is stored with `{}` (providers that resend
        // calls as objects would reject the conversation otherwise) and answered with an error.
        let mut malformed = Vec::new();
        let calls: Vec<ToolCall> = reply
            .tool_calls
            .into_iter()
            .map(|mut call| {
                if serde_json::from_str::<serde_json::Value>(&call.arguments).is_err() {
                    malformed.push(call.id.clone());
                    call.arguments = "{}".into();
                }
                call
            })
            .collect();
        let assistant = Message::Assistant { text: reply.text.clone(), tool_calls: calls.clone() };
        let seq = append(runtime, conversation, &assistant, job).await?;
        history.push((seq, assistant));
        if let Some(log) = session_log(runtime, origin) {
            if !reply.text.is_empty() {
                log.record("websocket_message_sent", false, json!({"id": job.id, "type": "response_item", "payload": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": reply.text}]}}));
            }
            for call in &calls {
                log.record("websocket_message_sent", false, json!({"id": job.id, "type": "response_item", "payload": {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}}));
            }
        }
        if calls.is_empty() {
            cache.keep(history);
            return Ok(reply.text);
        }

        let mut stop = false;
        for batch in calls.chunks(settings.max_inflight_tool_calls.max(1)) {
            let outcomes = join_all(batch.iter().map(|call| async {
                if malformed.contains(&call.id) {
                    return Outcome::Result {
                        content: "the arguments were not valid JSON; send a JSON object".into(),
                        is_error: true,
                    };
                }
                tools::run(runtime, job, origin, call, &approval_seq).await
            }))
            .await;
            for (call, outcome) in batch.iter().zip(outcomes) {
                let (content, is_error) = match outcome {
                    Outcome::Result { content, is_error } => (content, is_error),
                    Outcome::StopTurn => {
                        stop = true;
                        ("The user denied this tool call and stopped the turn.".to_owned(), true)
                    }
                };
                let result =
                    Message::ToolResult { call_id: call.id.clone(), name: call.name.clone(), content, is_error };
                let seq = append(runtime, conversation, &result, job).await?;
                if let (Some(log), Message::ToolResult { content, .. }) = (session_log(runtime, origin), &result) {
                    log.record("websocket_message_sent", false, json!({"id": job.id, "type": "response_item", "payload": {"type": "function_call_output", "call_id": call.id, "output": content}}));
                }
                history.push((seq, result));
            }
            if stop {
                break;
            }
        }
        if stop {
            return Err(failure("approval_denied", "a tool call was denied (NO) and the turn was stopped"));
        }
    }
}

async fn record_usage(runtime: &Runtime, job: &Job, origin: &Origin, usage: &Usage) -> Result<(), Failure> {
    let settings = &runtime.settings;
    let cost_usd = settings.model_info.info.pricing.cost_usd(usage);
    let record = UsageRecord {
        conversation: origin.conversation.clone(),
        user: origin.user.clone(),
        job_id: job.id.clone(),
        model: settings.model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd,
        created_at_ms: crate::plane::now_ms(),
    };
    runtime
        .blocking(move |store| store.record_usage(&record))
        .await
        .map_err(|e| failure("storage_error", format!("cannot record usage: {e}")))?;
    job.emit(
        json!({"type": "usage", "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cost_usd": cost_usd}),
        false,
        crate::plane::now_ms(),
    );
    Ok(())
}

/// Replaces the older part of `history` by a model-written summary (stored first).
async fn compact(
    runtime: &Arc<Runtime>,
    job: &Job,
    origin: &Origin,
    history: History,
    template: &ChatRequest,
) -> Result<History, Failure> {
    let settings = &runtime.settings;
    let window = settings.model_info.info.context_window;
    let messages: Vec<Message> = history.iter().map(|(_, m)| m.clone()).collect();
    let Some(cut) = compaction::split_point(&messages, window) else {
        return Err(failure(
            "context_too_long",
            "the latest message alone does not fit the model's context window; send a shorter message",
        ));
    };
    let covers_through = history[..cut].iter().map(|(seq, _)| *seq).max().unwrap_or(0);
    // About 60% of the window in characters (3 bytes per token estimate) for the transcript.
    let max_bytes = window as usize * 3 * 60 / 100;
    let request = compaction::summary_request(template, &messages[..cut], max_bytes);
    let reply = model::call(runtime, job, &request, Streaming::Quiet).await.map_err(|e| failure(e.code, e.message))?;
    record_usage(runtime, job, origin, &reply.usage).await?;
    let (key, text, job_id) = (origin.conversation.clone(), reply.text.clone(), job.id.clone());
    runtime
        .blocking(move |store| transcript::append_summary(store, &key, &text, covers_through, &job_id))
        .await
        .map_err(|e| failure("storage_error", format!("cannot store the summary: {e}")))?;
    job.emit(
        json!({"type": "compaction", "summarised_messages": cut, "kept_messages": history.len() - cut}),
        false,
        crate::plane::now_ms(),
    );
    job.log(&format!("[compaction] summarised {cut} messages through seq {covers_through}"));
    let mut compacted = vec![(0, Message::User { text: transcript::summary_message(&reply.text) })];
    compacted.extend(history.into_iter().skip(cut));
    Ok(compacted)
}
