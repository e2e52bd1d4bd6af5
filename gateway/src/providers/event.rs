//! The normalized events every stream parser yields.
//!
//! Why it exists: the turn loop consumes one event vocabulary whatever the provider.
//! Ordering guarantees (tested per provider): a call's `ToolCallStart` precedes its
//! `ToolCallArgsDelta`s, which precede its `ToolCallEnd`; `Usage` comes once, right before
//! `Done`; `Done` is last. Errors are not events: they are the `Err` arm of
//! `feed`/`finish`, so nothing can follow them.

use super::ToolCall;

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the assistant's visible text.
    TextDelta(String),
    /// The model started a tool call; `id` pairs it with its args deltas and end.
    ToolCallStart { id: String, name: String },
    /// A piece of the call's JSON arguments (for live display only; `ToolCallEnd` has
    /// the assembled text).
    ToolCallArgsDelta { id: String, delta: String },
    /// The call is complete, with its assembled arguments.
    ToolCallEnd(ToolCall),
    /// Token counts for this reply.
    Usage(Usage),
    /// The reply ended normally.
    Done { stop_reason: StopReason },
}

/// Token counts of one reply. `input_tokens` counts every prompt token, cached or not;
/// `cached_input_tokens` and `cache_write_tokens` are the parts of it read from and
/// written to the provider's prompt cache (priced differently, see `catalog.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model finished its answer.
    EndTurn,
    /// The model wants tool results before going on.
    ToolUse,
    /// `max_output_tokens` was reached: the reply is cut.
    MaxTokens,
    /// A stop sequence matched.
    StopSequence,
    /// The provider's safety filter stopped the reply.
    ContentFilter,
    /// A reason this version does not know, verbatim.
    Other(String),
}
