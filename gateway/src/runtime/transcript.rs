//! The durable transcript: provider messages in the store, and the optional JSONL copy.
//!
//! Why it exists: a conversation must survive a restart and be readable by clients
//! (`/agents/self/chat/history.ndjson`, `session_history` counts). Messages are stored in
//! the provider-neutral shape of `providers::chat::Message` (role-tagged JSON), so a
//! conversation can continue on another provider. A compaction writes a `summary` message
//! that stands for everything up to `covers_through`; loading starts from the newest one.
//!
//! The JSONL copy (`SESSION_STORE_PATH`) follows the Codex WebSocket server's session log
//! (`seeds/002_*`): one `{timestamp, event_type, direction, message_data}` per line, in a
//! file per conversation. It is an export: a write failure is logged, never fatal.

use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::conversations::History;
use crate::providers::Message;
use crate::store::{ConversationKey, Store, StoreError, StoredMessage};

/// Most messages loaded for one model call (a conversation beyond this is compacted long
/// before; the bound keeps a corrupt or hostile database from exhausting memory).
pub const MAX_LOADED_MESSAGES: usize = 10_000;
/// Most messages `history.ndjson` shows.
pub const HISTORY_LIMIT: usize = 1_000;

/// The store role of a message.
pub fn role_of(message: &Message) -> &'static str {
    match message {
        Message::User { .. } => "user",
        Message::Assistant { .. } => "assistant",
        Message::ToolResult { .. } => "tool",
    }
}

/// Appends a message; returns its seq.
pub fn append(
    store: &dyn Store,
    conversation: &ConversationKey,
    message: &Message,
    job_id: &str,
) -> Result<u64, StoreError> {
    let body = serde_json::to_value(message).map_err(|e| StoreError::Database(e.to_string()))?;
    store.append_message(conversation, role_of(message), &body, Some(job_id), crate::plane::now_ms())
}

/// Stores a compaction summary standing for every message up to `covers_through`.
pub fn append_summary(
    store: &dyn Store,
    conversation: &ConversationKey,
    text: &str,
    covers_through: u64,
    job_id: &str,
) -> Result<u64, StoreError> {
    let body = json!({"text": text, "covers_through": covers_through});
    store.append_message(conversation, "summary", &body, Some(job_id), crate::plane::now_ms())
}

/// The messages a model call sees: the newest summary (as a user message) and everything
/// after what it covers. Returns the messages with their seqs (0 for the summary).
pub fn load(store: &dyn Store, conversation: &ConversationKey) -> Result<History, StoreError> {
    let summary = store.latest_message_with_role(conversation, "summary")?;
    let from = summary.as_ref().and_then(|s| s.body["covers_through"].as_u64()).map_or(1, |c| c + 1);
    let mut out = Vec::new();
    if let Some(summary) = &summary {
        let text = summary.body["text"].as_str().unwrap_or_default();
        out.push((0, Message::User { text: summary_message(text) }));
    }
    for stored in store.conversation_from(conversation, from, MAX_LOADED_MESSAGES)? {
        if stored.role == "summary" {
            continue;
        }
        match serde_json::from_value::<Message>(stored.body.clone()) {
            Ok(message) => out.push((stored.seq, message)),
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "message {} of session {}: {e}",
                    stored.seq, conversation.session_key
                )));
            }
        }
    }
    Ok(answer_dangling_calls(out))
}

/// Gives every tool call a result. A turn that stopped between a call and its result
/// (cancelled, gateway killed) leaves a call unanswered, and providers reject a
/// conversation like that; the model is told the call was interrupted instead.
fn answer_dangling_calls(messages: History) -> History {
    let mut out = Vec::with_capacity(messages.len());
    let mut pending: Vec<(String, String)> = Vec::new();
    let flush = |out: &mut Vec<(u64, Message)>, pending: &mut Vec<(String, String)>| {
        for (call_id, name) in pending.drain(..) {
            let content = "The tool call was interrupted before it finished; its effect is unknown.".to_owned();
            out.push((0, Message::ToolResult { call_id, name, content, is_error: true }));
        }
    };
    for (seq, message) in messages {
        match &message {
            Message::ToolResult { call_id, .. } => pending.retain(|(id, _)| id != call_id),
            Message::User { .. } | Message::Assistant { .. } => flush(&mut out, &mut pending),
        }
        if let Message::Assistant { tool_calls, .. } = &message {
            pending.extend(tool_calls.iter().map(|c| (c.id.clone(), c.name.clone())));
        }
        out.push((seq, message));
    }
    flush(&mut out, &mut pending);
    out
}

/// How a summary is shown to the model.
pub fn summary_message(text: &str) -> String {
    format!("[Summary of the earlier conversation, written when it outgrew the context window]\n{text}")
}

/// One line of `history.ndjson`.
pub fn history_line(stored: &StoredMessage) -> Value {
    let mut line =
        json!({"seq": stored.seq, "role": stored.role, "job": stored.job_id, "created_at_ms": stored.created_at_ms});
    let object = line.as_object_mut().expect("object literal");
    match serde_json::from_value::<Message>(stored.body.clone()) {
        Ok(Message::User { text }) => {
            object.insert("text".into(), json!(text));
        }
        Ok(Message::Assistant { text, tool_calls }) => {
            object.insert("text".into(), json!(text));
            if !tool_calls.is_empty() {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|c| json!({"call_id": c.id, "tool": c.name, "arguments": c.arguments}))
                    .collect();
                object.insert("tool_calls".into(), Value::Array(calls));
            }
        }
        Ok(Message::ToolResult { call_id, name, content, is_error }) => {
            object.insert("call_id".into(), json!(call_id));
            object.insert("tool".into(), json!(name));
            object.insert("content".into(), json!(content));
            object.insert("is_error".into(), json!(is_error));
        }
        Err(_) => {
            object.insert("text".into(), stored.body.get("text").cloned().unwrap_or(Value::Null));
        }
    }
    line
}

/// The conversation's JSONL log, when `session_store_path` is set.
pub fn session_log<'a>(runtime: &'a super::Runtime, origin: &'a super::Origin) -> Option<JsonlLog<'a>> {
    runtime.settings.session_store_path.as_deref().map(|dir| JsonlLog { dir, conversation: &origin.conversation })
}

/// Appends events to `<dir>/<agent>.<project>.<session>.jsonl` (ids are validated, so
/// they are safe file-name parts).
pub struct JsonlLog<'a> {
    pub dir: &'a Path,
    pub conversation: &'a ConversationKey,
}

impl JsonlLog<'_> {
    pub fn record(&self, event_type: &str, incoming: bool, message_data: Value) {
        let c = self.conversation;
        let path = self.dir.join(format!("{}.{}.{}.jsonl", c.agent_id, c.project_id, c.session_key));
        let line = json!({
            "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "event_type": event_type,
            "direction": if incoming { "incoming" } else { "outgoing" },
            "message_data": message_data,
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(self.dir)?;
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            // One write per line, so concurrent appenders never interleave inside a line.
            file.write_all(format!("{line}\n").as_bytes())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the session log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolCall;
    use crate::store::sqlite::SqliteStore;

    fn key() -> ConversationKey {
        ConversationKey { agent_id: "mother".into(), project_id: "p".into(), session_key: "main".into() }
    }

    #[test]
    fn a_summary_replaces_what_it_covers_and_keeps_the_rest() {
        let store = SqliteStore::open_in_memory().unwrap();
        let k = key();
        let first = append(&store, &k, &Message::User { text: "one".into() }, "job-1").unwrap();
        let call = ToolCall { id: "c1".into(), name: "file_list".into(), arguments: "{}".into(), signature: None };
        append(&store, &k, &Message::Assistant { text: String::new(), tool_calls: vec![call] }, "job-1").unwrap();
        let kept = append(&store, &k, &Message::User { text: "two".into() }, "job-2").unwrap();
        let before = load(&store, &k).unwrap();
        assert_eq!(before.len(), 4, "the interrupted call c1 gets a synthetic result before the next user message");
        assert!(matches!(&before[2].1, Message::ToolResult { call_id, is_error: true, .. } if call_id == "c1"));
        append_summary(&store, &k, "the user said one", first + 1, "job-2").unwrap();
        let loaded = load(&store, &k).unwrap();
        assert_eq!(loaded.len(), 2);
        assert!(matches!(&loaded[0].1, Message::User { text } if text.contains("the user said one")));
        assert_eq!(loaded[1], (kept, Message::User { text: "two".into() }));
        // The summary is not a message of the conversation for counting purposes.
        assert_eq!(store.message_count(&k).unwrap(), 3);
    }
}
