//! The credential broker's socket protocol: requests, replies and streamed provider responses.
//!
//! Each message is one [`crate::frame`] frame. A client (the gateway for provider requests,
//! `spiderweb-config` for key administration) sends [`BrokerRequest`]s, each with an `id` it
//! chooses; every [`BrokerReply`] echoes the id of the request it answers. Several provider
//! requests may be in flight on one connection; their replies interleave and are told apart by
//! id. A provider request is answered by exactly one of:
//! - [`BrokerReply::ResponseHead`], then zero or more [`BrokerReply::BodyChunk`], then
//!   [`BrokerReply::End`] (or [`BrokerReply::Error`] if the upstream fails mid-body);
//! - [`BrokerReply::Error`] before any head.
//!
//! What must never cross this socket from the broker: key material. Only
//! [`BrokerRequest::SetKey`] carries a key, and only towards the broker. Credential status
//! replies name the *source* of a key (e.g. `env:OPENAI_API_KEY`), never the key.
//!
//! Request bodies are base64 in JSON ([`Base64Bytes`]) so that arbitrary bytes (SSE, gzip)
//! survive. Response body chunks — the one message sent for every streamed piece of every
//! reply — travel raw instead: see [`ClientCodec`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf as _, BufMut as _, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{FrameError, HEADER_LEN, JsonFrames, MalformedFrame, take_payload};

/// Largest frame either side accepts by default: a maximal request body (8 MiB) grows by a
/// third in base64, plus headers and JSON overhead.
/// Response header the broker adds to a `response_head` with status 401: the name of the
/// credential source it used (e.g. `environment (OPENAI_API_KEY)`, or `none`) — never the key — so that
/// the gateway can say which key the provider refused.
pub const CREDENTIAL_SOURCE_HEADER: &str = "x-spiderweb-credential-source";

pub const DEFAULT_MAX_FRAME_BYTES: usize = 12 * 1024 * 1024;

/// A frame whose length word has this bit set is a raw body chunk: the request id (8 bytes,
/// big-endian), then the body bytes as the upstream sent them. Every other frame is a JSON
/// frame of [`crate::frame`]. Lengths never reach this bit: both sides cap frames far below
/// 2 GiB.
const RAW_BODY_CHUNK: u32 = 1 << 31;
const ID_LEN: usize = 8;

/// The codec of a broker client: encodes requests, decodes replies. A gateway wraps its
/// `UnixStream` in `Framed::new(stream, ClientCodec::new(DEFAULT_MAX_FRAME_BYTES))`.
///
/// Replies are JSON frames, except [`BrokerReply::BodyChunk`], which arrives as a raw frame
/// (see `RAW_BODY_CHUNK`): a streamed reply is one chunk per upstream read, and base64 in JSON
/// made every chunk cost an encode and a JSON escape in the broker and a parse and a decode
/// in the gateway. A raw chunk's bytes are handed on without a copy. Raw frames only flow from
/// the broker to its clients and carry upstream bodies, never a key, so unlike JSON frames
/// (one of which, `set_key`, carries a key) they are not zeroed after use.
#[derive(Debug)]
pub struct ClientCodec {
    json: JsonFrames<BrokerReply, BrokerRequest>,
    max_len: usize,
}

impl ClientCodec {
    /// A codec refusing frames longer than `max_len` bytes, in both directions.
    pub fn new(max_len: usize) -> Self {
        ClientCodec { json: JsonFrames::new(max_len), max_len }
    }
}

impl Decoder for ClientCodec {
    type Item = Result<BrokerReply, MalformedFrame>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if word & RAW_BODY_CHUNK == 0 {
            return self.json.decode(src);
        }
        let len = (word & !RAW_BODY_CHUNK) as usize;
        let Some(mut frame) = take_payload(src, len, self.max_len)? else {
            return Ok(None);
        };
        if len < ID_LEN {
            return Ok(Some(Err(MalformedFrame {
                reason: format!("raw body chunk of {len} bytes has no request id"),
            })));
        }
        let id = frame.get_u64();
        Ok(Some(Ok(BrokerReply::BodyChunk { id, data: Base64Bytes(frame.freeze()) })))
    }
}

impl Encoder<BrokerRequest> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, item: BrokerRequest, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.json.encode(item, dst)
    }
}

/// The codec of the broker side: decodes requests, encodes replies (body chunks raw, see
/// [`ClientCodec`]).
#[derive(Debug)]
pub struct ServerCodec {
    json: JsonFrames<BrokerRequest, BrokerReply>,
    max_len: usize,
}

impl ServerCodec {
    /// A codec refusing frames longer than `max_len` bytes, in both directions.
    pub fn new(max_len: usize) -> Self {
        ServerCodec { json: JsonFrames::new(max_len), max_len }
    }
}

impl Decoder for ServerCodec {
    type Item = Result<BrokerRequest, MalformedFrame>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        self.json.decode(src)
    }
}

impl Encoder<BrokerReply> for ServerCodec {
    type Error = FrameError;

    fn encode(&mut self, item: BrokerReply, dst: &mut BytesMut) -> Result<(), FrameError> {
        let BrokerReply::BodyChunk { id, data } = item else {
            return self.json.encode(item, dst);
        };
        let len = ID_LEN + data.0.len();
        if len > self.max_len {
            return Err(FrameError::TooLarge { len, max: self.max_len });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u32(len as u32 | RAW_BODY_CHUNK);
        dst.put_u64(id);
        dst.put_slice(&data.0);
        Ok(())
    }
}

/// Reads one reply from a blocking reader (tests, tools without a runtime): what
/// [`ClientCodec`] decodes, one frame at a time. `Ok(None)` is a clean end of stream.
pub fn read_reply(
    reader: &mut impl std::io::Read,
    max_len: usize,
) -> Result<Option<Result<BrokerReply, MalformedFrame>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = (u32::from_be_bytes(header) & !RAW_BODY_CHUNK) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    buf.put_slice(&header);
    buf.resize(HEADER_LEN + len, 0);
    reader.read_exact(&mut buf[HEADER_LEN..])?;
    ClientCodec::new(max_len).decode(&mut buf)
}

/// A request to the broker. `op` names the operation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerRequest {
    /// Send an HTTP request to a configured provider with its credential and stream the reply.
    ProviderRequest(ProviderRequest),
    /// Abort a provider request in flight (its upstream connection is dropped). Answered with
    /// an `error` of code `cancelled` for that request id, unless it already ended.
    Cancel {
        /// The id of the request to abort.
        id: u64,
    },
    /// Which credential source each provider would use (names of sources only).
    CredentialStatus {
        /// Echoed in the reply.
        id: u64,
    },
    /// Store a provider's API key in the Secret Service (operator only).
    SetKey {
        /// Echoed in the reply.
        id: u64,
        /// Provider id, e.g. `openai`.
        provider: String,
        /// The key. Zeroized when dropped; never echoed.
        #[serde(serialize_with = "serialize_key")]
        key: secrecy::SecretString,
    },
    /// Remove a provider's API key from the Secret Service (operator only).
    ClearKey {
        /// Echoed in the reply.
        id: u64,
        /// Provider id.
        provider: String,
    },
}

impl BrokerRequest {
    /// The id the reply will echo.
    pub fn id(&self) -> u64 {
        match self {
            BrokerRequest::ProviderRequest(r) => r.id,
            BrokerRequest::Cancel { id }
            | BrokerRequest::CredentialStatus { id }
            | BrokerRequest::SetKey { id, .. }
            | BrokerRequest::ClearKey { id, .. } => *id,
        }
    }
}

/// The operator's client has to put the key on the wire once, towards the broker; `SecretString`
/// refuses to serialise by default so that no other message can do so by accident.
fn serialize_key<S: Serializer>(key: &secrecy::SecretString, s: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    s.serialize_str(key.expose_secret())
}

/// An HTTP request for a provider. The broker chooses the host: `path` is relative to the
/// provider's configured base URL and may carry a query string (`/models/x:streamGenerateContent?alt=sse`).
///
/// For a plugin provider (a local binary the broker runs, JSON-RPC on stdin/stdout) the method
/// is `POST`, the path `/` and the body the JSON-RPC request line without its newline; the
/// reply is `response_head` 200, the plugin's stdout as body chunks, then `end` — after the
/// plugin exited successfully — or one `error`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRequest {
    /// Chosen by the client, unique among its requests in flight on this connection.
    pub id: u64,
    /// Provider id from the broker's configuration, e.g. `anthropic`.
    pub provider: String,
    /// `GET` or `POST` (others are refused).
    pub method: String,
    /// Path below the provider's base URL, starting with `/`.
    pub path: String,
    /// Request headers; only an allowlist passes (content type, accept, provider beta flags).
    /// Credential headers are refused, never merged.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The request body.
    #[serde(default)]
    pub body: Base64Bytes,
}

/// A message from the broker.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerReply {
    /// The upstream answered: status and the selected response headers.
    ResponseHead {
        /// Echoed request id.
        id: u64,
        /// HTTP status of the upstream reply.
        status: u16,
        /// Selected upstream headers (content type, request ids, rate-limit and retry hints).
        headers: Vec<(String, String)>,
    },
    /// Body bytes, forwarded as they arrived from upstream.
    BodyChunk {
        /// Echoed request id.
        id: u64,
        /// The bytes.
        data: Base64Bytes,
    },
    /// The upstream body is complete.
    End {
        /// Echoed request id.
        id: u64,
    },
    /// The request failed. `id` is absent only when the request could not be parsed at all.
    Error {
        /// Echoed request id, if one could be read.
        id: Option<u64>,
        /// Machine-readable class of failure.
        code: ErrorCode,
        /// For a human; never contains key material.
        message: String,
    },
    /// Answer to [`BrokerRequest::CredentialStatus`].
    CredentialStatus {
        /// Echoed request id.
        id: u64,
        /// One entry per configured provider.
        providers: Vec<CredentialEntry>,
    },
    /// A key operation succeeded.
    Done {
        /// Echoed request id.
        id: u64,
    },
}

impl BrokerReply {
    /// The request id this reply answers, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            BrokerReply::ResponseHead { id, .. }
            | BrokerReply::BodyChunk { id, .. }
            | BrokerReply::End { id }
            | BrokerReply::CredentialStatus { id, .. }
            | BrokerReply::Done { id } => Some(*id),
            BrokerReply::Error { id, .. } => *id,
        }
    }
}

/// Which credential a provider would use right now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialEntry {
    /// Provider id.
    pub provider: String,
    /// The source a request would use, or `None` when no credential is found.
    pub source: Option<CredentialSource>,
    /// True for providers that need no credential (local OpenAI-compatible servers).
    pub keyless: bool,
}

/// Where a credential comes from, in the broker's resolution order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialSource {
    /// An item in the Secret Service (`service=spiderweb provider=<id>`).
    SecretService,
    /// `$CREDENTIALS_DIRECTORY/<provider>-api-key` (systemd `LoadCredential=`).
    SystemdCredential,
    /// An environment variable of the broker, by name.
    Environment {
        /// The variable's name, e.g. `OPENAI_API_KEY`.
        variable: String,
    },
    /// The Codex CLI's OAuth tokens (`$CODEX_HOME/auth.json`).
    CodexOauth,
    /// The `OPENAI_API_KEY` field of the Codex CLI's `auth.json`.
    CodexAuthFileKey,
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::SecretService => f.write_str("secret-service"),
            CredentialSource::SystemdCredential => f.write_str("systemd-credential"),
            CredentialSource::Environment { variable } => write!(f, "environment ({variable})"),
            CredentialSource::CodexOauth => f.write_str("codex-oauth"),
            CredentialSource::CodexAuthFileKey => f.write_str("codex-auth-file"),
        }
    }
}

/// Failure classes of broker replies.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a valid request.
    MalformedRequest,
    /// The caller's uid may not run this operation.
    Forbidden,
    /// No provider of that id is configured.
    UnknownProvider,
    /// The path leaves the provider's base URL or is not a plain path.
    PathNotAllowed,
    /// Method other than GET/POST.
    MethodNotAllowed,
    /// A request header outside the allowlist (e.g. a credential header).
    HeaderNotAllowed,
    /// The request body exceeds the configured limit.
    BodyTooLarge,
    /// Another request with this id is in flight on the connection.
    DuplicateRequestId,
    /// Too many requests in flight on this connection.
    TooManyRequests,
    /// No upstream slot became free in time.
    Busy,
    /// No credential is configured for the provider.
    NoCredential,
    /// The Codex OAuth login is no longer valid: the operator must run `codex login`.
    ReauthRequired,
    /// The OAuth token endpoint failed; retry later.
    RefreshFailed,
    /// The upstream could not be reached or broke the connection.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The request was cancelled by the client.
    Cancelled,
    /// A plugin provider ran but failed: non-zero exit (the message quotes its stderr), too
    /// much output, or a broken pipe.
    PluginFailed,
    /// No Secret Service is reachable (set-key/clear-key).
    KeyringUnavailable,
    /// An unexpected failure inside the broker.
    Internal,
}

/// Bytes carried as standard base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub bytes::Bytes);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl From<bytes::Bytes> for Base64Bytes {
    fn from(b: bytes::Bytes) -> Self {
        Base64Bytes(b)
    }
}

impl From<&[u8]> for Base64Bytes {
    fn from(b: &[u8]) -> Self {
        Base64Bytes(bytes::Bytes::copy_from_slice(b))
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(|v| Base64Bytes(v.into()))
            .map_err(|_| serde::de::Error::custom("body is not valid base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn provider_request_round_trips_with_a_binary_body() {
        let req = BrokerRequest::ProviderRequest(ProviderRequest {
            id: 9,
            provider: "openai".into(),
            method: "POST".into(),
            path: "/chat/completions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Base64Bytes::from(&[0u8, 255, 10][..]),
        });
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"provider_request""#), "{text}");
        let back: BrokerRequest = serde_json::from_str(&text).unwrap();
        let BrokerRequest::ProviderRequest(back) = back else { panic!("{back:?}") };
        assert_eq!(back.body.0.as_ref(), &[0u8, 255, 10]);
        assert_eq!(back.id, 9);
    }

    #[test]
    fn set_key_never_prints_its_key() {
        let req: BrokerRequest =
            serde_json::from_str(r#"{"op":"set_key","id":1,"provider":"openai","key":"sk-abc"}"#).unwrap();
        assert!(!format!("{req:?}").contains("sk-abc"));
        let BrokerRequest::SetKey { key, .. } = req else { panic!() };
        assert_eq!(key.expose_secret(), "sk-abc");
    }

    #[test]
    fn replies_echo_ids_and_render_codes_in_snake_case() {
        let reply = BrokerReply::Error { id: Some(4), code: ErrorCode::PathNotAllowed, message: "x".into() };
        let text = serde_json::to_string(&reply).unwrap();
        assert!(text.contains(r#""code":"path_not_allowed""#), "{text}");
        assert_eq!(serde_json::from_str::<BrokerReply>(&text).unwrap().id(), Some(4));
    }

    #[test]
    fn body_chunks_travel_raw_and_other_replies_as_json_on_one_stream() {
        let mut server = ServerCodec::new(1024);
        let mut wire = BytesMut::new();
        let body = bytes::Bytes::from_static(b"data: {\"x\":1}\n\n\xff");
        server.encode(BrokerReply::ResponseHead { id: 3, status: 200, headers: vec![] }, &mut wire).unwrap();
        let raw_at = wire.len();
        server.encode(BrokerReply::BodyChunk { id: 3, data: body.clone().into() }, &mut wire).unwrap();
        server.encode(BrokerReply::End { id: 3 }, &mut wire).unwrap();
        // The chunk is the bytes themselves after the header and the id: no base64, no JSON.
        assert_eq!(&wire[raw_at + HEADER_LEN + ID_LEN..raw_at + HEADER_LEN + ID_LEN + body.len()], &body[..]);

        let blocking = read_reply(&mut &wire[raw_at..], 1024).unwrap().unwrap().unwrap();
        assert_eq!(blocking, BrokerReply::BodyChunk { id: 3, data: body.clone().into() });
        let mut client = ClientCodec::new(1024);
        let mut replies = Vec::new();
        while let Some(reply) = client.decode(&mut wire).unwrap() {
            replies.push(reply.unwrap());
        }
        assert_eq!(
            replies,
            [
                BrokerReply::ResponseHead { id: 3, status: 200, headers: vec![] },
                BrokerReply::BodyChunk { id: 3, data: body.into() },
                BrokerReply::End { id: 3 },
            ]
        );
    }

    #[test]
    fn raw_chunks_are_bounded_and_one_without_an_id_is_malformed_but_not_fatal() {
        let mut client = ClientCodec::new(64);
        let mut oversize = BytesMut::new();
        oversize.put_u32(65 | RAW_BODY_CHUNK);
        assert!(matches!(client.decode(&mut oversize), Err(FrameError::TooLarge { len: 65, max: 64 })));
        assert!(
            ServerCodec::new(64)
                .encode(BrokerReply::BodyChunk { id: 1, data: (&[0u8; 60][..]).into() }, &mut BytesMut::new())
                .is_err()
        );

        let mut short = BytesMut::new();
        short.put_u32(3 | RAW_BODY_CHUNK);
        short.put_slice(b"abc");
        ServerCodec::new(64).encode(BrokerReply::End { id: 2 }, &mut short).unwrap();
        assert!(client.decode(&mut short).unwrap().unwrap().is_err(), "the short frame is refused");
        assert_eq!(
            client.decode(&mut short).unwrap().unwrap().unwrap(),
            BrokerReply::End { id: 2 },
            "the next frame still reads"
        );
    }

    #[test]
    fn bad_base64_and_unknown_fields_are_refused() {
        let bad = r#"{"op":"provider_request","id":1,"provider":"p","method":"GET","path":"/","body":"!!"}"#;
        assert!(serde_json::from_str::<BrokerRequest>(bad).is_err());
        let extra = r#"{"op":"cancel","id":1,"url":"http://evil"}"#;
        assert!(serde_json::from_str::<BrokerRequest>(extra).is_err());
    }
}
