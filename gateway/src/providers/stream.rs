//! The streaming response parser the turn loop drives: `head`, then `feed` per body chunk,
//! then `finish`.
//!
//! Why it exists: it owns what all providers share (status handling, error-body capture,
//! size bounds, SSE framing) and delegates the payloads to a [`WireDecoder`] per wire
//! format. Ordering constraint: `head` first, exactly once; after an error or `finish`
//! the parser is spent. It never buffers without bound: error bodies are kept up to
//! [`Limits::max_error_body_bytes`], a single event up to `max_event_bytes`, and the whole
//! body up to `max_body_bytes`.

use std::time::SystemTime;

use sse_stream::Sse;

use super::error::{ErrorKind, ProviderError, retry_after_from_headers};
use super::event::StreamEvent;
use super::sse::SseDecoder;

/// What a wire format's payload decoder must do. One instance per reply.
pub(crate) trait WireDecoder: Send {
    /// Handles one SSE event; pushes the normalized events it completes.
    fn on_event(&mut self, event: Sse, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError>;
    /// Whether the provider's terminal event has been seen (later bytes are ignored).
    fn is_done(&self) -> bool;
    /// The body ended. Formats whose end is the end of the body (Gemini) finish here;
    /// the others report an incomplete stream unless `is_done`.
    fn on_end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError>;
    /// Turns a non-2xx reply's body into a typed error (status and retry hint are
    /// filled in by the caller unless the body is more specific).
    fn error_from_body(&self, status: u16, body: &[u8]) -> ProviderError;
}

/// Size bounds of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_body_bytes: u64,
    pub max_error_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 8 << 20,
            max_body_bytes: 64 << 20,
            max_error_body_bytes: 64 << 10,
        }
    }
}

/// Parses one provider reply. Built by [`super::Provider::parser`].
pub struct StreamParser {
    decoder: Box<dyn WireDecoder>,
    sse: SseDecoder,
    limits: Limits,
    state: State,
    /// An event has been returned to the caller.
    yielded: bool,
    body_bytes: u64,
    scratch: Vec<Sse>,
}

enum State {
    AwaitingHead,
    Streaming,
    /// A reply that is not an event stream: kept (bounded) to explain the failure.
    Rejected {
        status: u16,
        content_type: Option<String>,
        retry_after: Option<std::time::Duration>,
        body: Vec<u8>,
    },
    Done,
    Failed(ProviderError),
}

impl StreamParser {
    pub(crate) fn new(decoder: Box<dyn WireDecoder>, limits: Limits) -> Self {
        Self {
            decoder,
            sse: SseDecoder::new(limits.max_event_bytes),
            limits,
            state: State::AwaitingHead,
            yielded: false,
            body_bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Takes the reply's status and headers. A non-2xx status, or a 2xx that is not
    /// `text/event-stream`, is not an error yet: its body is collected and `finish`
    /// returns the typed error parsed from it.
    pub fn head<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        status: u16,
        headers: &[(K, V)],
    ) -> Result<(), ProviderError> {
        if !matches!(self.state, State::AwaitingHead) {
            return Err(self.fail(ProviderError::malformed("response head received twice")));
        }
        let content_type = headers
            .iter()
            .find(|(key, _)| key.as_ref().eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.as_ref().to_ascii_lowercase());
        let is_stream = content_type
            .as_deref()
            .is_none_or(|value| value.contains("text/event-stream"));
        self.state = if (200..300).contains(&status) && is_stream {
            State::Streaming
        } else {
            State::Rejected {
                status,
                content_type,
                retry_after: retry_after_from_headers(headers, SystemTime::now()),
                body: Vec::new(),
            }
        };
        Ok(())
    }

    /// Whether this reply has yielded an event: from then on a failure may not be retried
    /// (see [`super::retry`]), because the user saw part of it or a tool call began.
    /// Bytes that carried only bookkeeping (`message_start`, `ping`, `response.created`)
    /// do not count: nothing was shown, so a retry is invisible.
    pub fn stream_started(&self) -> bool {
        self.yielded
    }

    /// Feeds one body chunk (split anywhere) and returns the events it completes. On an
    /// error, events completed earlier in the same chunk are dropped with the reply.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut out = Vec::new();
        self.body_bytes += chunk.len() as u64;
        match &mut self.state {
            State::AwaitingHead => {
                return Err(self.fail(ProviderError::malformed("body received before the status")));
            }
            State::Done => return Ok(out),
            State::Failed(error) => return Err(error.clone()),
            State::Rejected { body, .. } => {
                let room = self.limits.max_error_body_bytes.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                return Ok(out);
            }
            State::Streaming => {}
        }
        if self.body_bytes > self.limits.max_body_bytes {
            return Err(self.fail(ProviderError::new(
                ErrorKind::ResponseTooLarge,
                format!("reply exceeds {} bytes", self.limits.max_body_bytes),
            )));
        }
        if let Err(error) = self.sse.feed(chunk, &mut self.scratch) {
            return Err(self.fail(error));
        }
        self.decode(&mut out)?;
        self.yielded |= !out.is_empty();
        Ok(out)
    }

    /// Ends the reply: returns the last events (usually `Usage` and `Done`), or the error
    /// that explains a failed reply or a stream cut short.
    pub fn finish(mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut out = Vec::new();
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingHead => Err(ProviderError::malformed("reply ended before its status")),
            State::Done => Ok(out),
            State::Failed(error) => Err(error),
            State::Rejected {
                status,
                content_type,
                retry_after,
                body,
            } => Err(self.rejection(status, content_type, retry_after, &body)),
            State::Streaming => {
                self.state = State::Streaming;
                self.sse
                    .finish(&mut self.scratch)
                    .map_err(|e| self.fail(e))?;
                self.decode(&mut out)?;
                if !self.decoder.is_done() {
                    self.decoder.on_end(&mut out)?;
                }
                Ok(out)
            }
        }
    }

    fn decode(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let mut result = Ok(());
        for event in self.scratch.drain(..) {
            if self.decoder.is_done() {
                break;
            }
            if let Err(error) = self.decoder.on_event(event, out) {
                result = Err(error);
                break;
            }
        }
        self.scratch.clear();
        if let Err(error) = result {
            return Err(self.fail(error));
        }
        if self.decoder.is_done() {
            self.state = State::Done;
        }
        Ok(())
    }

    fn rejection(
        &self,
        status: u16,
        content_type: Option<String>,
        retry_after: Option<std::time::Duration>,
        body: &[u8],
    ) -> ProviderError {
        if (200..300).contains(&status) {
            let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return ProviderError::malformed(format!(
                "expected an event stream, got {}: {shown}",
                content_type.as_deref().unwrap_or("no content type")
            ))
            .with_status(status);
        }
        let mut error = self.decoder.error_from_body(status, body);
        error.status = Some(status);
        if error.retry_after.is_none() {
            error.retry_after = retry_after;
        }
        error
    }

    fn fail(&mut self, error: ProviderError) -> ProviderError {
        self.state = State::Failed(error.clone());
        error
    }
}

/// The decoder of kinds that never stream over HTTP (plugins): any reply is refused.
pub(crate) struct NotStreamed;

impl WireDecoder for NotStreamed {
    fn on_event(&mut self, _: Sse, _: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        Err(ProviderError::malformed(
            "plugin providers do not stream over HTTP",
        ))
    }
    fn is_done(&self) -> bool {
        false
    }
    fn on_end(&mut self, _: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        Err(ProviderError::malformed(
            "plugin providers do not stream over HTTP",
        ))
    }
    fn error_from_body(&self, status: u16, _: &[u8]) -> ProviderError {
        ProviderError::malformed("plugin providers do not stream over HTTP").with_status(status)
    }
}

/// Parses an event's JSON payload, naming the event in the error.
pub(crate) fn json_payload<T: serde::de::DeserializeOwned>(
    event: &Sse,
) -> Result<T, ProviderError> {
    let data = event.data.as_deref().unwrap_or_default();
    serde_json::from_str(data).map_err(|error| {
        ProviderError::malformed(format!(
            "event {} has an unreadable payload ({error}): {}",
            event.event.as_deref().unwrap_or("message"),
            super::error::snippet(data)
        ))
    })
}

pub(crate) fn incomplete(what: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::IncompleteStream,
        format!("the connection ended before {what}"),
    )
}
