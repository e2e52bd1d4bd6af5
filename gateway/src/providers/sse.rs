//! Push-style SSE decoding on top of the `sse-stream` crate.
//!
//! Why it exists: the broker hands us body chunks split anywhere (inside a line, inside a
//! UTF-8 sequence), and the stream parsers want whole SSE events, synchronously, one
//! `feed` at a time. `sse-stream` does the WHATWG parsing but only as a `Stream`; this
//! adapter queues each chunk and polls the decoder with a no-op waker until it needs more
//! input, which it does without ever blocking because the queue is in memory.
//!
//! It must never buffer without bound: bytes received since the last complete event are
//! capped at `max_event_bytes`, give or take one chunk (a provider sending an endless
//! line is an error, not an out-of-memory).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use sse_stream::{Sse, SseByteStream};

use super::error::{ErrorKind, ProviderError};

pub(crate) struct SseDecoder {
    inbox: Arc<Mutex<Inbox>>,
    events: Pin<Box<SseByteStream<InboxStream>>>,
    bytes_since_event: usize,
    max_event_bytes: usize,
}

#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    closed: bool,
}

/// The byte stream `sse-stream` reads: whatever has been fed and not yet consumed.
struct InboxStream(Arc<Mutex<Inbox>>);

impl Stream for InboxStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inbox = self.0.lock().expect("inbox lock is never poisoned");
        match inbox.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if inbox.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl SseDecoder {
    pub(crate) fn new(max_event_bytes: usize) -> Self {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        Self {
            events: Box::pin(SseByteStream::new(InboxStream(inbox.clone()))),
            inbox,
            bytes_since_event: 0,
            max_event_bytes,
        }
    }

    /// Decodes the events completed by `chunk` into `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Sse>) -> Result<(), ProviderError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.inbox
            .lock()
            .expect("inbox lock is never poisoned")
            .chunks
            .push_back(Bytes::copy_from_slice(chunk));
        let before = out.len();
        self.drain(out)?;
        // Counting from the end of this chunk when it completed an event under-counts the
        // buffered tail by at most one chunk, which the caller's chunk size bounds; it
        // never refuses a stream of large chunks holding many small events.
        if out.len() > before {
            self.bytes_since_event = 0;
        } else {
            self.bytes_since_event += chunk.len();
        }
        if self.bytes_since_event > self.max_event_bytes {
            return Err(ProviderError::new(
                ErrorKind::ResponseTooLarge,
                format!(
                    "one server-sent event exceeds {} bytes",
                    self.max_event_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Marks the end of the body and decodes what remains. An unterminated final event
    /// is dropped (as the SSE standard says); the provider parser then reports the
    /// missing terminal event.
    pub(crate) fn finish(&mut self, out: &mut Vec<Sse>) -> Result<(), ProviderError> {
        self.inbox
            .lock()
            .expect("inbox lock is never poisoned")
            .closed = true;
        self.drain(out)
    }

    fn drain(&mut self, out: &mut Vec<Sse>) -> Result<(), ProviderError> {
        let mut context = Context::from_waker(Waker::noop());
        loop {
            match self.events.as_mut().poll_next(&mut context) {
                Poll::Ready(Some(Ok(event))) => out.push(event),
                Poll::Ready(Some(Err(error))) => {
                    return Err(ProviderError::malformed(format!(
                        "undecodable event stream: {error}"
                    )));
                }
                Poll::Ready(None) | Poll::Pending => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_split_including_inside_utf8() {
        let body =
            "event: a\ndata: h\u{e9}llo\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\n".as_bytes();
        for split in 0..=body.len() {
            let mut decoder = SseDecoder::new(1 << 20);
            let mut events = Vec::new();
            decoder.feed(&body[..split], &mut events).unwrap();
            decoder.feed(&body[split..], &mut events).unwrap();
            decoder.finish(&mut events).unwrap();
            let data: Vec<_> = events.iter().filter_map(|e| e.data.clone()).collect();
            assert_eq!(data, ["h\u{e9}llo", "x\ny"], "split at {split}");
            assert_eq!(events[0].event.as_deref(), Some("a"));
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut decoder = SseDecoder::new(1024);
        let mut events = Vec::new();
        decoder.feed(b"data: ", &mut events).unwrap();
        let error = decoder.feed(&[b'a'; 2048], &mut events).unwrap_err();
        assert_eq!(error.kind, ErrorKind::ResponseTooLarge);
    }
}
