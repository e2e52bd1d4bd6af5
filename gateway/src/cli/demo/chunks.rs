//! A [`Reply`] as OpenAI Chat Completions stream chunks (`text/event-stream`).
//!
//! Why it exists: the demo provider must be indistinguishable on the wire from a real
//! OpenAI-compatible server, so the gateway's real parser and the broker's real egress path
//! are what the newcomer exercises. The shapes follow OpenAI's documented streaming format:
//! a first chunk with `delta.role`, text in `delta.content` pieces, a tool call whose first
//! fragment carries `id`, `type` and `function.name` and whose arguments arrive in pieces, a
//! chunk with `finish_reason`, a final chunk with empty `choices` and `usage`
//! (`stream_options.include_usage`), then `data: [DONE]`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::script::Reply;

/// Roughly how many characters one text delta carries (split on whitespace).
const TEXT_PIECE_CHARS: usize = 24;

/// Everything the server sends for `reply`, one SSE event per element.
pub fn sse_events(reply: &Reply, model: &str, id: &str, created: u64, prompt_tokens: u64) -> Vec<Bytes> {
    let chunk = |choice: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]});
    let mut events =
        vec![chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}))];
    for piece in text_pieces(&reply.text) {
        events.push(chunk(json!({"index": 0, "delta": {"content": piece}, "finish_reason": null})));
    }
    let finish_reason = match &reply.tool_call {
        Some((name, arguments)) => {
            let arguments = arguments.to_string();
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            let call_id = format!("call_{id}");
            events.push(chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": head}}]}, "finish_reason": null}),
            ));
            events.push(chunk(
                json!({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": tail}}]},
                "finish_reason": null}),
            ));
            "tool_calls"
        }
        None => "stop",
    };
    events.push(chunk(json!({"index": 0, "delta": {}, "finish_reason": finish_reason})));
    let completion_tokens = estimate_tokens(&reply.text)
        + reply.tool_call.as_ref().map_or(0, |(name, args)| estimate_tokens(name) + estimate_tokens(&args.to_string()));
    events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}}));
    let mut out: Vec<Bytes> = events.into_iter().map(|e| Bytes::from(format!("data: {e}\n\n"))).collect();
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// About four characters per token, as the providers' own rules of thumb say.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// `text` cut after whitespace into pieces of about [`TEXT_PIECE_CHARS`], so it streams.
fn text_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && i - start >= TEXT_PIECE_CHARS {
            pieces.push(&text[start..=i]);
            start = i + 1;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pieces_rejoin_to_the_text() {
        let text = "[demo provider] some words that make a sentence long enough to need several pieces ✓";
        let pieces = text_pieces(text);
        assert!(pieces.len() > 2);
        assert_eq!(pieces.concat(), text);
    }
}
