//! Keeping a conversation inside the model's context window.
//!
//! Why it exists: a long conversation must go on rather than fail with "context length
//! exceeded". Before each model call the prompt size is estimated; when it would leave less
//! than the reply's room, the older part of the conversation is summarised by the model
//! itself and replaced by that summary (stored as a `summary` message, see `transcript.rs`),
//! keeping the most recent turns verbatim. A provider that still answers "too long"
//! triggers the same compaction once more.
//!
//! The estimate is deliberately rough and pessimistic (a token per 3 bytes of JSON): no
//! tokenizer is exact for every provider, and over-estimating only compacts a little early.

use crate::providers::{ChatRequest, Message};

/// Bytes of request JSON per estimated token.
const BYTES_PER_TOKEN: usize = 3;
/// Share of the window the kept (verbatim) part may use after compaction, in percent.
const KEEP_PERCENT: usize = 40;

/// Estimated prompt tokens of a request.
pub fn estimate_tokens(chat: &ChatRequest) -> usize {
    let bytes = chat.system.as_ref().map_or(0, String::len)
        + serde_json::to_string(&chat.messages).map_or(0, |s| s.len())
        + serde_json::to_string(&chat.tools).map_or(0, |s| s.len());
    bytes / BYTES_PER_TOKEN + 16 * chat.messages.len()
}

/// Whether the prompt leaves the reply too little room.
pub fn needs_compaction(chat: &ChatRequest, context_window: u32) -> bool {
    estimate_tokens(chat) + chat.max_output_tokens as usize > context_window as usize
}

/// Where to cut: the index of the first message kept verbatim. The kept part starts at a
/// user message (never between a tool call and its result) and fits in
/// [`KEEP_PERCENT`] of the window; at least the last user message is kept. `None` when
/// there is nothing older to summarise.
pub fn split_point(messages: &[Message], context_window: u32) -> Option<usize> {
    let budget = context_window as usize * KEEP_PERCENT / 100;
    let mut kept_tokens = 0;
    let mut cut = None;
    for (i, message) in messages.iter().enumerate().rev() {
        kept_tokens += serde_json::to_string(message).map_or(0, |s| s.len()) / BYTES_PER_TOKEN + 16;
        if matches!(message, Message::User { .. }) {
            if kept_tokens > budget && cut.is_some() {
                break;
            }
            cut = Some(i);
        }
    }
    cut.filter(|&i| i > 0)
}

/// The request that asks the model for a summary of `older`, rendered as plain text so
/// that no tool-call pairing rules apply. At most `max_bytes` of transcript are sent (the
/// newest part of `older` is the one kept).
pub fn summary_request(template: &ChatRequest, older: &[Message], max_bytes: usize) -> ChatRequest {
    let mut text = String::new();
    for message in older {
        match message {
            Message::User { text: t } => text.push_str(&format!("USER: {t}\n")),
            Message::Assistant { text: t, tool_calls } => {
                text.push_str(&format!("ASSISTANT: {t}\n"));
                for call in tool_calls {
                    text.push_str(&format!("TOOL CALL {}: {}\n", call.name, call.arguments));
                }
            }
            Message::ToolResult { name, content, is_error, .. } => {
                let status = if *is_error { "failed" } else { "ok" };
                text.push_str(&format!("TOOL RESULT {name} ({status}): {content}\n"));
            }
        }
    }
    if text.len() > max_bytes {
        let mut start = text.len() - max_bytes;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text = format!("[… older part omitted …]\n{}", &text[start..]);
    }
    ChatRequest {
        model: template.model.clone(),
        system: Some(
            "You summarise conversations between a user and a coding agent so the agent can continue the work. \
             Keep every fact, decision, file name, command and open question that later turns may need. Be concise."
                .into(),
        ),
        messages: vec![Message::User { text: format!("Summarise this conversation:\n\n{text}") }],
        tools: vec![],
        max_output_tokens: template.max_output_tokens.min(2048),
        temperature: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolCall;

    fn user(n: usize) -> Message {
        Message::User { text: "u".repeat(n) }
    }

    #[test]
    fn the_cut_keeps_recent_turns_whole_and_starts_at_a_user_message() {
        let call = ToolCall { id: "c".into(), name: "file_list".into(), arguments: "{}".into(), signature: None };
        let messages = vec![
            user(3000),
            Message::Assistant { text: "a".repeat(3000), tool_calls: vec![call] },
            Message::ToolResult {
                call_id: "c".into(),
                name: "file_list".into(),
                content: "x".repeat(3000),
                is_error: false,
            },
            user(300),
            Message::Assistant { text: "short".into(), tool_calls: vec![] },
            user(300),
        ];
        let cut = split_point(&messages, 2000).unwrap();
        assert!(matches!(messages[cut], Message::User { .. }));
        assert_eq!(cut, 3, "the two recent short turns fit in 40% of the window; the long first turn goes");
        assert_eq!(split_point(&messages[..1], 2000), None, "a lone message has nothing older to summarise");
    }

    #[test]
    fn an_oversized_prompt_needs_compaction_and_the_summary_request_is_bounded() {
        let chat = ChatRequest {
            model: "m".into(),
            system: None,
            messages: vec![user(30_000)],
            tools: vec![],
            max_output_tokens: 1000,
            temperature: None,
        };
        assert!(needs_compaction(&chat, 8000));
        assert!(!needs_compaction(&chat, 200_000));
        let request = summary_request(&chat, &chat.messages, 1000);
        let Message::User { text } = &request.messages[0] else { panic!() };
        assert!(text.len() < 1200 && text.contains("omitted"));
        assert!(request.tools.is_empty());
    }
}
