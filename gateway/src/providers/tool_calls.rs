//! Assembles streamed tool calls, several at once, from argument fragments.
//!
//! Why it exists: every provider streams a tool call as a start (id, name), argument
//! fragments keyed by a per-reply index, and an end, and parallel calls may interleave.
//! Keeping one assembler means the ordering guarantees of `event.rs` hold everywhere.
//! It never reorders: calls end in the order the provider ends them (or, when it ends
//! them all at once, in the order they started).

use super::ToolCall;
use super::error::{ErrorKind, ProviderError};
use super::event::StreamEvent;

/// Most tool calls one reply may make; far above what any model does (the spec's tools
/// take one call per reply), low enough that a runaway stream cannot fill memory with them.
pub(crate) const MAX_CALLS_PER_REPLY: usize = 256;

#[derive(Default)]
pub(crate) struct ToolCallAssembler {
    open: Vec<OpenCall>,
    finished: usize,
}

struct OpenCall {
    key: u64,
    call: ToolCall,
}

impl ToolCallAssembler {
    /// Opens the call with stream key `key` (an index the provider reuses for its
    /// fragments); a repeated start of an open call is ignored, for providers that
    /// repeat the header on every fragment.
    pub(crate) fn start(
        &mut self,
        key: u64,
        id: String,
        name: String,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        if self.open.iter().any(|open| open.key == key) {
            return Ok(());
        }
        if self.finished + self.open.len() >= MAX_CALLS_PER_REPLY {
            return Err(ProviderError::new(
                ErrorKind::ResponseTooLarge,
                format!("more than {MAX_CALLS_PER_REPLY} tool calls in one reply"),
            ));
        }
        out.push(StreamEvent::ToolCallStart {
            id: id.clone(),
            name: name.clone(),
        });
        self.open.push(OpenCall {
            key,
            call: ToolCall {
                id,
                name,
                arguments: String::new(),
                signature: None,
            },
        });
        Ok(())
    }

    pub(crate) fn is_open(&self, key: u64) -> bool {
        self.open.iter().any(|open| open.key == key)
    }

    /// Appends an argument fragment to the open call `key`.
    pub(crate) fn append(
        &mut self,
        key: u64,
        fragment: &str,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        if fragment.is_empty() {
            return Ok(());
        }
        let open = self.find(key)?;
        open.call.arguments.push_str(fragment);
        out.push(StreamEvent::ToolCallArgsDelta {
            id: open.call.id.clone(),
            delta: fragment.to_owned(),
        });
        Ok(())
    }

    /// Attaches opaque provider state (Gemini's thought signature) to the open call.
    pub(crate) fn sign(&mut self, key: u64, signature: String) -> Result<(), ProviderError> {
        self.find(key)?.call.signature = Some(signature);
        Ok(())
    }

    /// Ends the open call `key`. `final_arguments`, when the provider repeats the whole
    /// text at the end (Responses API), replaces the assembled fragments.
    pub(crate) fn end(
        &mut self,
        key: u64,
        final_arguments: Option<String>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        let position = self
            .open
            .iter()
            .position(|open| open.key == key)
            .ok_or_else(|| unknown(key))?;
        let mut call = self.open.remove(position).call;
        if let Some(arguments) = final_arguments {
            call.arguments = arguments;
        }
        if call.arguments.trim().is_empty() {
            call.arguments = "{}".to_owned();
        }
        self.finished += 1;
        out.push(StreamEvent::ToolCallEnd(call));
        Ok(())
    }

    /// Ends every open call, in the order they started.
    pub(crate) fn end_all(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(key) = self.open.first().map(|open| open.key) {
            self.end(key, None, out).expect("the key was just read");
        }
    }

    /// Whether this reply asked for any tool call.
    pub(crate) fn any(&self) -> bool {
        self.finished > 0 || !self.open.is_empty()
    }

    fn find(&mut self, key: u64) -> Result<&mut OpenCall, ProviderError> {
        self.open
            .iter_mut()
            .find(|open| open.key == key)
            .ok_or_else(|| unknown(key))
    }
}

fn unknown(key: u64) -> ProviderError {
    ProviderError::malformed(format!(
        "fragment for tool call {key}, which was never started"
    ))
}
