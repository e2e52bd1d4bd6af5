//! The normalized chat request every provider kind is built from.
//!
//! Why it exists: the turn loop keeps one transcript shape and never learns a provider's
//! wire format; each builder (`openai_chat.rs`, `anthropic.rs`, …) translates from here.
//! It must never hold credentials or transport details (base URLs, keys): those belong to
//! the broker.

use serde::{Deserialize, Serialize};

/// One model call: everything a provider needs to produce the next assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model id as the provider names it (for Azure: the deployment name).
    pub model: String,
    /// System prompt; providers that take it out of band (Anthropic, Gemini, Responses)
    /// get it there, the others as a leading `system` message.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSchema>,
    /// Upper bound on the reply's tokens (required by Anthropic, so always set).
    pub max_output_tokens: u32,
    pub temperature: Option<f32>,
}

/// One transcript entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    User {
        text: String,
    },
    /// A model reply: its text (may be empty) and the tool calls it asked for.
    Assistant {
        text: String,
        #[serde(default)]
        tool_calls: Vec<ToolCall>,
    },
    /// The outcome of one tool call, paired with the call by `call_id`.
    ToolResult {
        call_id: String,
        /// Tool name; Gemini pairs results by name, not id.
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as assembled from the stream (`{}` when the
    /// model sent none). Builders for providers that want an object (Anthropic, Gemini)
    /// parse it, so the turn loop must only store calls whose arguments are valid JSON.
    pub arguments: String,
    /// Opaque provider state that must be echoed back with this call in later requests
    /// (Gemini's `thoughtSignature`); `None` for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A tool offered to the model, with its JSON schema (`{"type":"object",...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

impl ChatRequest {
    /// Groups consecutive messages that a strictly alternating API (Anthropic, Gemini)
    /// must receive as one turn: tool results and user text both become a `user` turn.
    pub(crate) fn turns(&self) -> Vec<Turn<'_>> {
        let mut turns: Vec<Turn<'_>> = Vec::new();
        for message in &self.messages {
            let role = match message {
                Message::Assistant { .. } => TurnRole::Assistant,
                Message::User { .. } | Message::ToolResult { .. } => TurnRole::User,
            };
            match turns.last_mut() {
                Some(turn) if turn.role == role => turn.messages.push(message),
                _ => turns.push(Turn {
                    role,
                    messages: vec![message],
                }),
            }
        }
        turns
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnRole {
    User,
    Assistant,
}

/// Consecutive messages of one side of the conversation.
pub(crate) struct Turn<'a> {
    pub role: TurnRole,
    pub messages: Vec<&'a Message>,
}
