//! Length-prefixed JSON frames: the framing of every internal Unix-socket protocol.
//!
//! The broker, the worker supervisor and the gateway talk over stream sockets. Each message is
//! one frame: a 4-byte big-endian payload length followed by that many bytes of UTF-8 JSON.
//! A length prefix (rather than newline-delimited JSON) lets a peer refuse an oversize frame
//! from its header alone, before buffering any of it.
//!
//! Two failure classes are kept apart because they call for different reactions:
//! - [`FrameError`] — the byte stream itself is unusable (I/O failure, a length above the
//!   limit). The frame boundary is lost, so the connection must be closed.
//! - [`MalformedFrame`] — the boundary is intact but the payload is not the expected JSON.
//!   The receiver answers with an error and keeps serving the connection.
//!
//! [`JsonFrames`] is a `tokio_util` codec for async peers; [`read_frame`] and [`write_frame`]
//! are the same format for blocking code (a confined worker has no runtime).
//!
//! A received payload is zeroed once parsed: one message type (the broker's `set_key`)
//! carries a key, and its bytes must not outlive the zeroizing value they are parsed into.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};
use zeroize::Zeroize as _;

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// The stream is unusable; close the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading or writing the socket failed.
    #[error("frame i/o: {0}")]
    Io(#[from] io::Error),
    /// The header announces more bytes than this peer accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced payload length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The message could not be serialised (a bug in the sender, never peer input).
    #[error("frame encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One frame arrived whole but its payload is not a valid message. The connection stays usable.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame: {reason}")]
pub struct MalformedFrame {
    /// What the JSON parser objected to (line/column and expectation, never payload bytes,
    /// which could hold secrets).
    pub reason: String,
}

/// A codec that decodes frames into `In` and encodes `Out` values as frames.
///
/// Decoded items are `Result<In, MalformedFrame>` so a malformed payload surfaces as a value
/// the server answers, not as a stream error that would end the connection.
#[derive(Debug)]
pub struct JsonFrames<In, Out> {
    max_len: usize,
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> JsonFrames<In, Out> {
    /// A codec refusing payloads longer than `max_len` bytes, in both directions.
    pub fn new(max_len: usize) -> Self {
        JsonFrames { max_len, types: PhantomData }
    }
}

impl<In: DeserializeOwned, Out> Decoder for JsonFrames<In, Out> {
    type Item = Result<In, MalformedFrame>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        let Some(mut payload) = take_payload(src, len, self.max_len)? else {
            return Ok(None);
        };
        let parsed = parse_payload(&payload);
        payload.as_mut().zeroize();
        Ok(Some(parsed))
    }
}

impl<In, Out: Serialize> Encoder<Out> for JsonFrames<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        serde_json::to_writer(dst.writer(), &item)?;
        let len = dst.len() - start - HEADER_LEN;
        if len > self.max_len {
            dst.truncate(start);
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Splits off a frame's payload of `len` bytes (announced by the header at the start of
/// `src`) once all of it has arrived; refuses a length above `max_len` before buffering.
pub(crate) fn take_payload(src: &mut BytesMut, len: usize, max_len: usize) -> Result<Option<BytesMut>, FrameError> {
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    if src.len() < HEADER_LEN + len {
        src.reserve(HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    Ok(Some(src.split_to(len)))
}

/// Reads one frame from a blocking reader. `Ok(None)` is a clean end of stream between frames.
pub fn read_frame<T: DeserializeOwned>(
    reader: &mut impl Read,
    max_len: usize,
) -> Result<Option<Result<T, MalformedFrame>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut payload = zeroize::Zeroizing::new(vec![0u8; len]);
    reader.read_exact(&mut payload)?;
    Ok(Some(parse_payload(&payload)))
}

/// Writes one frame to a blocking writer (header and payload in one `write_all`).
pub fn write_frame<T: Serialize>(writer: &mut impl Write, message: &T, max_len: usize) -> Result<(), FrameError> {
    let mut buf = BytesMut::new();
    JsonFrames::<(), &T>::new(max_len).encode(message, &mut buf)?;
    writer.write_all(&buf)?;
    writer.flush()?;
    Ok(())
}

fn parse_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, MalformedFrame> {
    serde_json::from_slice(payload)
        .map_err(|e| MalformedFrame { reason: format!("{} at line {} column {}", classify(&e), e.line(), e.column()) })
}

/// serde_json's messages quote the offending input for some errors (e.g. unknown variants);
/// keep only the category and position so no payload byte reaches a reply or a log.
fn classify(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "invalid JSON",
        Category::Data => "unexpected message shape",
        Category::Eof => "truncated JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        text: String,
    }

    fn codec() -> JsonFrames<Msg, Msg> {
        JsonFrames::new(64)
    }

    #[test]
    fn round_trip_through_the_codec_in_pieces() {
        let mut buf = BytesMut::new();
        codec().encode(Msg { id: 7, text: "hi".into() }, &mut buf).unwrap();
        let bytes = buf.split().freeze();
        let mut dec = codec();
        let mut acc = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            acc.put_u8(*b);
            let got = dec.decode(&mut acc).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none(), "decoded early at byte {i}");
            } else {
                assert_eq!(got.unwrap().unwrap(), Msg { id: 7, text: "hi".into() });
            }
        }
        assert!(acc.is_empty());
    }

    #[test]
    fn oversize_header_is_refused_before_the_payload_arrives() {
        let mut buf = BytesMut::from(&(1_000_000u32).to_be_bytes()[..]);
        let err = codec().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 1_000_000, max: 64 }));
    }

    #[test]
    fn oversize_message_is_not_sent() {
        let mut buf = BytesMut::new();
        let err = codec().encode(Msg { id: 1, text: "x".repeat(100) }, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(buf.is_empty(), "a refused frame leaves nothing half-written");
    }

    #[test]
    fn malformed_payload_keeps_the_stream_aligned_and_hides_its_bytes() {
        let mut buf = BytesMut::new();
        let bad = br#"{"id":"sk-secret-value","text":1}"#;
        buf.put_u32(bad.len() as u32);
        buf.put_slice(bad);
        codec().encode(Msg { id: 2, text: "ok".into() }, &mut buf).unwrap();
        let mut dec = codec();
        let first = dec.decode(&mut buf).unwrap().unwrap().unwrap_err();
        assert!(!first.reason.contains("sk-secret"), "{}", first.reason);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().unwrap().id, 2);
    }

    #[test]
    fn blocking_helpers_speak_the_same_format() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Msg { id: 3, text: "b".into() }, 64).unwrap();
        let mut dec = codec();
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().unwrap().id, 3);
        let mut reader = &wire[..];
        let got: Msg = read_frame(&mut reader, 64).unwrap().unwrap().unwrap();
        assert_eq!(got.id, 3);
        assert!(read_frame::<Msg>(&mut reader, 64).unwrap().is_none(), "clean EOF");
    }
}
