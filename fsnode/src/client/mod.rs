//! A client connection to a node endpoint (`unified-v2-fs`).
//!
//! One WebSocket, many requests in flight: each request gets a fresh tag and its reply is
//! matched by tag, so untagged invalidation events may arrive at any time (§6) and are handed
//! to subscribers. A request that gets no reply within [`REQUEST_TIMEOUT`] fails with
//! ETIMEDOUT, and a lost connection fails every pending request at once, so a dead node can
//! never hang a caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spiderweb_proto::fs::{self as wire, Errno, Event, ExportEntry, FsError, HelloReply};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a request may wait for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting (TCP + upgrade + hello) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight on one connection.
const MAX_IN_FLIGHT: usize = 256;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The node answered with an error: the operation itself failed.
    #[error("{0}")]
    Fs(FsError),
    /// The endpoint could not be reached, the connection broke, or no reply came in time: the
    /// operation may be retried elsewhere if it is idempotent.
    #[error("errno {code}: endpoint unavailable: {0}", code = if .0.contains("timed out") { 110 } else { 5 })]
    Transport(String),
}

impl CallError {
    /// The errno an application should see.
    pub fn errno(&self) -> Errno {
        match self {
            CallError::Fs(e) => e.errno,
            CallError::Transport(m) if m.contains("timed out") => Errno::TimedOut,
            CallError::Transport(_) => Errno::Io,
        }
    }
}

impl From<FsError> for CallError {
    /// A node's answer, except a gateway relay saying the node's tunnel is down: that is the
    /// endpoint being unreachable (retry elsewhere), not the operation failing.
    fn from(e: FsError) -> Self {
        if e.errno == Errno::Io && RELAY_UNAVAILABLE.contains(&e.message.as_str()) {
            return CallError::Transport(format!("gateway relay: {}", e.message));
        }
        CallError::Fs(e)
    }
}

/// What a gateway's `/v2/fs/node/<id>` answers (errno 5) while the node's tunnel is down:
/// to requests, and to a hello.
const RELAY_UNAVAILABLE: [&str; 2] = ["NodeTunnelUnavailable", "node tunnel is unavailable"];

/// What came back for a tag: a JSON frame, or (binary data frames) the bytes of a read.
#[derive(Debug)]
enum Reply {
    Json(Value),
    Data { eof: bool, data: Vec<u8> },
}

/// A frame for the writer task.
#[derive(Debug)]
enum Outbound {
    Text(String),
    Binary(Vec<u8>),
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Reply>>>>;

/// The transport of one connection: tags, the writer queue, the reader's routing.
#[derive(Debug)]
struct Transport {
    outbound: mpsc::Sender<Outbound>,
    pending: Pending,
    next_tag: AtomicU32,
    closed: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
}

/// One negotiated connection.
#[derive(Debug)]
pub struct FsClient {
    transport: Transport,
    hello_payload: Value,
    pub hello: HelloReply,
}

impl FsClient {
    /// Connects to `url` and negotiates (`t_fs_hello`), asking for binary data frames.
    pub async fn connect(url: &str, auth_token: Option<&str>, subscribe: bool) -> Result<FsClient, CallError> {
        Self::connect_with(url, auth_token, subscribe, true).await
    }

    /// [`FsClient::connect`], choosing whether to ask for binary data frames (without them,
    /// data travels as base64 in JSON, as with the original protocol).
    pub async fn connect_with(
        url: &str,
        auth_token: Option<&str>,
        subscribe: bool,
        binary_data: bool,
    ) -> Result<FsClient, CallError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(url, auth_token, subscribe, binary_data))
            .await
            .map_err(|_| CallError::Transport(format!("connecting to {url} timed out")))?
    }

    async fn connect_inner(
        url: &str,
        auth_token: Option<&str>,
        subscribe: bool,
        binary_data: bool,
    ) -> Result<FsClient, CallError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(wire::MAX_FRAME_BYTES))
            .max_frame_size(Some(wire::MAX_FRAME_BYTES));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| CallError::Transport(format!("{url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (outbound, mut outbound_rx) = mpsc::channel::<Outbound>(MAX_IN_FLIGHT);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (events, _) = broadcast::channel(1024);

        tokio::spawn(async move {
            while let Some(frame) = outbound_rx.recv().await {
                let message = match frame {
                    Outbound::Text(text) => Message::text(text),
                    Outbound::Binary(data) => Message::binary(data),
                };
                if sink.feed(message).await.is_err() {
                    break;
                }
                if outbound_rx.is_empty() && sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let (reader_pending, reader_closed, reader_events) =
            (Arc::clone(&pending), Arc::clone(&closed), events.clone());
        tokio::spawn(async move {
            let deliver = |tag: u32, reply: Reply| {
                let waiter = reader_pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&tag);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            };
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Text(text) => {
                        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        match frame.get("tag").and_then(Value::as_u64) {
                            Some(tag) => deliver(tag as u32, Reply::Json(frame)),
                            None => {
                                if let Some(event) = Event::from_frame(&frame) {
                                    let _ = reader_events.send(event);
                                }
                            }
                        }
                    }
                    Message::Binary(data) => {
                        if let Some((tag, eof, bytes)) = wire::binary::parse_read_reply(&data) {
                            deliver(tag, Reply::Data { eof, data: bytes.to_vec() });
                        }
                    }
                    _ => {}
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            // Dropping the waiters fails every pending call at once.
            reader_pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });

        let transport = Transport { outbound, pending, next_tag: AtomicU32::new(1), closed, events };
        let mut payload = wire::hello_payload(auth_token, subscribe);
        if binary_data {
            payload["binary_data"] = true.into();
        }
        let reply = transport.call_json("hello", None, None, payload.clone()).await?;
        let hello = serde_json::from_value(reply).map_err(|e| CallError::Transport(format!("bad hello reply: {e}")))?;
        Ok(FsClient { transport, hello_payload: payload, hello })
    }

    /// A health check: the same hello again on this connection.
    pub async fn ping(&self) -> Result<(), CallError> {
        self.call("hello", None, None, self.hello_payload.clone()).await.map(|_| ())
    }

    /// Sends one request and waits for its (JSON) reply.
    pub async fn call(&self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> Result<Value, CallError> {
        self.transport.call_json(op, node, h, payload).await
    }

    /// Up to `len` bytes at `off` and whether the end of the file was reached, in as many
    /// `t_fs_read`s as the node's `max_read` needs (128 KiB through a gateway's tunnel).
    pub async fn read(&self, h: u64, off: u64, len: u32) -> Result<(Vec<u8>, bool), CallError> {
        let chunk = self.hello.caps.max_read.clamp(1, wire::MAX_READ);
        if len <= chunk {
            return self.read_once(h, off, len).await;
        }
        let mut data = Vec::with_capacity(len as usize);
        while data.len() < len as usize {
            let want = chunk.min(len - data.len() as u32);
            let (part, eof) = self.read_once(h, off + data.len() as u64, want).await?;
            let short = part.len() < want as usize;
            data.extend_from_slice(&part);
            if eof || short {
                return Ok((data, true));
            }
        }
        Ok((data, false))
    }

    /// One `t_fs_read`.
    async fn read_once(&self, h: u64, off: u64, len: u32) -> Result<(Vec<u8>, bool), CallError> {
        let payload = json!({"off": off, "len": len});
        let request = |tag| Outbound::Text(wire::render_request("read", tag, None, Some(h), &payload));
        match self.transport.exchange_with(request).await? {
            Reply::Data { eof, data } => Ok((data, eof)),
            Reply::Json(frame) => {
                let reply = wire::parse_reply(&frame)?;
                let data = reply
                    .get("data_b64")
                    .and_then(Value::as_str)
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| CallError::Transport("bad read reply".into()))?;
                Ok((data, reply.get("eof").and_then(Value::as_bool).unwrap_or(true)))
            }
        }
    }

    /// Writes `data` at `off` in as many `t_fs_write`s as the node's `max_write` needs; the
    /// bytes written.
    pub async fn write(&self, h: u64, off: u64, data: &[u8]) -> Result<u64, CallError> {
        let chunk = self.hello.caps.max_write.clamp(1, wire::MAX_WRITE) as usize;
        let mut written = 0u64;
        for part in data.chunks(chunk.max(1)) {
            let n = self.write_once(h, off + written, part).await?;
            written += n;
            if n < part.len() as u64 {
                break;
            }
        }
        Ok(written)
    }

    /// One `t_fs_write`. A binary frame when negotiated, base64 JSON otherwise.
    async fn write_once(&self, h: u64, off: u64, data: &[u8]) -> Result<u64, CallError> {
        let reply = if self.hello.caps.binary_data {
            let frame =
                self.transport.exchange_with(|tag| Outbound::Binary(wire::binary::write_request(tag, h, off, data)));
            json_reply(frame.await?)?
        } else {
            let payload = json!({"off": off, "data_b64": base64::engine::general_purpose::STANDARD.encode(data)});
            self.call("write", None, Some(h), payload).await?
        };
        Ok(reply.get("n").and_then(Value::as_u64).unwrap_or(0))
    }

    pub async fn exports(&self) -> Result<Vec<ExportEntry>, CallError> {
        let reply = self.call("exports", None, None, Value::Null).await?;
        serde_json::from_value(reply.get("exports").cloned().unwrap_or(Value::Null))
            .map_err(|e| CallError::Transport(format!("bad exports reply: {e}")))
    }

    pub fn is_closed(&self) -> bool {
        self.transport.closed.load(Ordering::SeqCst)
    }

    /// Invalidation events arriving on this connection.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.transport.events.subscribe()
    }
}

fn json_reply(reply: Reply) -> Result<Value, CallError> {
    match reply {
        Reply::Json(frame) => wire::parse_reply(&frame).map_err(CallError::from),
        Reply::Data { .. } => Err(CallError::Transport("unexpected binary reply".into())),
    }
}

impl Transport {
    async fn call_json(&self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> Result<Value, CallError> {
        let reply = self.exchange_with(|tag| Outbound::Text(wire::render_request(op, tag, node, h, &payload))).await?;
        json_reply(reply)
    }

    /// Allocates a tag, sends `make(tag)` and waits for the reply with that tag.
    async fn exchange_with(&self, make: impl FnOnce(u32) -> Outbound) -> Result<Reply, CallError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(CallError::Transport("connection closed".into()));
        }
        let tag = loop {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            if tag != 0 {
                break tag;
            }
        };
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(tag, tx);
        if self.outbound.send(make(tag)).await.is_err() {
            self.forget(tag);
            return Err(CallError::Transport("connection closed".into()));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Transport("connection lost".into())),
            Err(_) => {
                self.forget(tag);
                Err(CallError::Transport("request timed out".into()))
            }
        }
    }

    fn forget(&self, tag: u32) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&tag);
    }
}
