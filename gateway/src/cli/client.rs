//! A small unified-v2 client: the control handshake and the acheron file operations.
//!
//! Why it exists: `spiderweb chat` is an ordinary WebSocket client of the gateway (DESIGN.md:
//! it never reads keys, it speaks the client protocol). One request is in flight at a time;
//! frames that answer nothing we asked (pushed events) are skipped.
//!
//! What it must never do: put the token in the URL (it goes in the `Authorization` header of
//! the upgrade), or wait without a bound (every reply has a deadline; blocking reads of the
//! events file are given a longer one than the server's own 60 s wait).

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long connecting and the WebSocket upgrade may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request waits for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much a read asks for at once.
const READ_COUNT: usize = 65536;
/// The fid attached to the root.
const ROOT_FID: u32 = 1;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a `ws://` URL we can connect to.
    #[error("invalid URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// TCP connect or the upgrade failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The socket failed or closed.
    #[error("connection to the gateway lost: {0}")]
    Connection(String),
    /// The gateway closed the connection as forbidden: nearly always a wrong token.
    #[error("the gateway refused this token ({0}): check --token, SPIDERWEB_TOKEN or the token file")]
    Forbidden(String),
    /// No reply within the deadline.
    #[error("no reply to {0} in time")]
    Timeout(String),
    /// The gateway answered with an error frame.
    #[error("{what} failed: {code}: {message}")]
    Refused { what: String, code: String, message: String },
    /// The reply was not what the protocol says.
    #[error("unexpected reply to {what}: {reply}")]
    Protocol { what: String, reply: String },
}

impl ClientError {
    /// The gateway's error code, when the gateway refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One connection to the gateway.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    next_tag: u32,
    next_fid: u32,
    attached: bool,
}

impl Client {
    /// Connects to `url` with `token` as a bearer token in the upgrade request.
    pub async fn connect(url: &str, token: &str) -> Result<Client, ClientError> {
        if !url.starts_with("ws://") {
            let reason = "only ws:// URLs are supported (the gateway binds to loopback; tunnel it for remote use)";
            return Err(ClientError::Url { url: url.into(), reason: reason.into() });
        }
        let mut request =
            url.into_client_request().map_err(|e| ClientError::Url { url: url.into(), reason: e.to_string() })?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::Url {
            url: url.into(),
            reason: "the token is not a valid header value".into(),
        })?;
        request.headers_mut().insert("authorization", bearer);
        // tungstenite zero-fills up to `read_buffer_size` before each read (128 KiB by
        // default); replies here are small.
        let config = WebSocketConfig::default().read_buffer_size(16 << 10);
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Connect { url: url.into(), reason: "timed out".into() })?
            .map_err(|e| ClientError::Connect { url: url.into(), reason: describe_connect_error(e) })?;
        Ok(Client { ws, next_id: 0, next_tag: 0, next_fid: ROOT_FID, attached: false })
    }

    /// `control.version` then `control.connect`; returns the connect payload.
    pub async fn handshake(&mut self) -> Result<Value, ClientError> {
        self.control("version", json!({"protocol": "unified-v2"})).await?;
        self.control("connect", json!({})).await
    }

    /// A control request; returns the reply's payload.
    pub async fn control(&mut self, op: &str, payload: Value) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        let what = format!("control.{op}");
        let request = json!({"channel": "control", "type": what, "id": id, "payload": payload});
        let reply = self.exchange(&request, "id", json!(id), &what, REPLY_TIMEOUT).await?;
        payload_of(reply, &what)
    }

    /// An acheron request with top-level `fields`; returns the reply's payload.
    async fn acheron(&mut self, op: &str, fields: Value, timeout: Duration) -> Result<Value, ClientError> {
        self.next_tag += 1;
        let tag = self.next_tag;
        let what = format!("acheron.{op}");
        let mut request = json!({"channel": "acheron", "type": what, "tag": tag});
        if let (Some(request), Value::Object(fields)) = (request.as_object_mut(), fields) {
            request.extend(fields);
        }
        let reply = self.exchange(&request, "tag", json!(tag), &what, timeout).await?;
        payload_of(reply, &what)
    }

    async fn exchange(
        &mut self,
        request: &Value,
        key: &str,
        expected: Value,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.ws.send(Message::text(request.to_string())).await.map_err(connection_lost)?;
        let wait = async {
            loop {
                let frame = self.ws.next().await.ok_or_else(|| ClientError::Connection("closed".into()))?;
                let text = match frame.map_err(connection_lost)? {
                    Message::Text(text) => text,
                    Message::Close(Some(close)) if close.code == CloseCode::Policy => {
                        return Err(ClientError::Forbidden(format!("close {} {}", close.code, close.reason)));
                    }
                    Message::Close(close) => {
                        let reason =
                            close.map_or_else(|| "closed".to_owned(), |c| format!("closed ({} {})", c.code, c.reason));
                        return Err(ClientError::Connection(reason));
                    }
                    _ => continue,
                };
                let Ok(reply) = serde_json::from_str::<Value>(&text) else { continue };
                if reply.get(key) == Some(&expected) {
                    return Ok(reply);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| ClientError::Timeout(what.to_owned()))?
    }

    async fn ensure_attached(&mut self) -> Result<(), ClientError> {
        if !self.attached {
            self.acheron("t_version", json!({"version": "acheron-1", "msize": 1_048_576}), REPLY_TIMEOUT).await?;
            self.acheron("t_attach", json!({"fid": ROOT_FID}), REPLY_TIMEOUT).await?;
            self.attached = true;
        }
        Ok(())
    }

    /// Walks from the root to `path` into a new fid.
    pub async fn walk(&mut self, path: &str) -> Result<u32, ClientError> {
        self.ensure_attached().await?;
        self.next_fid += 1;
        let fid = self.next_fid;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.acheron("t_walk", json!({"fid": ROOT_FID, "newfid": fid, "path": segments}), REPLY_TIMEOUT).await?;
        Ok(fid)
    }

    /// One read at `offset`; `timeout` bounds a read that blocks on the server.
    pub async fn read_at(&mut self, fid: u32, offset: u64, timeout: Duration) -> Result<(Vec<u8>, bool), ClientError> {
        let reply = self.acheron("t_read", json!({"fid": fid, "offset": offset, "count": READ_COUNT}), timeout).await?;
        let data = reply.get("data_b64").and_then(Value::as_str).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| ClientError::Protocol { what: "acheron.t_read".into(), reply: format!("bad base64: {e}") })?;
        let eof = reply.get("eof").and_then(Value::as_bool).unwrap_or(bytes.is_empty());
        Ok((bytes, eof))
    }

    /// Walks to `path`, reads it to the end (at most `limit` bytes), clunks.
    pub async fn read_file(&mut self, path: &str, limit: usize) -> Result<Vec<u8>, ClientError> {
        let fid = self.walk(path).await?;
        let mut out = Vec::new();
        let result = loop {
            match self.read_at(fid, out.len() as u64, REPLY_TIMEOUT).await {
                Ok((bytes, eof)) => {
                    out.extend_from_slice(&bytes);
                    if eof || bytes.is_empty() || out.len() >= limit {
                        out.truncate(limit);
                        break Ok(out);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.clunk(fid).await?;
        result
    }

    /// Walks to `path`, writes `data` at offset 0, clunks; returns the write's payload.
    pub async fn write_file(&mut self, path: &str, data: &[u8]) -> Result<Value, ClientError> {
        let fid = self.walk(path).await?;
        let result = self.write_at(fid, data).await;
        self.clunk(fid).await?;
        result
    }

    /// One write at offset 0 to an open fid; returns the reply's payload.
    pub async fn write_at(&mut self, fid: u32, data: &[u8]) -> Result<Value, ClientError> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        self.acheron("t_write", json!({"fid": fid, "offset": 0, "data_b64": encoded}), REPLY_TIMEOUT).await
    }

    /// Releases a fid.
    pub async fn clunk(&mut self, fid: u32) -> Result<(), ClientError> {
        self.acheron("t_clunk", json!({"fid": fid}), REPLY_TIMEOUT).await.map(drop)
    }

    /// Sends a close frame; errors do not matter any more.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn payload_of(reply: Value, what: &str) -> Result<Value, ClientError> {
    if reply.get("ok") == Some(&Value::Bool(true)) {
        return Ok(reply.get("payload").cloned().unwrap_or(Value::Null));
    }
    match reply.get("error") {
        Some(error) => Err(ClientError::Refused {
            what: what.to_owned(),
            code: error.get("code").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
            message: error.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
        }),
        None => Err(ClientError::Protocol { what: what.to_owned(), reply: reply.to_string() }),
    }
}

fn connection_lost(e: tungstenite::Error) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// Says what a refused upgrade means for the user (a 401 is nearly always a stale token).
fn describe_connect_error(e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) if response.status() == 401 => {
            "the gateway refused the token (401): pass --token or SPIDERWEB_TOKEN, or check the token file".into()
        }
        tungstenite::Error::Http(response) => format!("the gateway refused the upgrade ({})", response.status()),
        tungstenite::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}
