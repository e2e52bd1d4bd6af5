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

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
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
    fn from(e: FsError) -> Self {
        CallError::Fs(e)
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Value>>>>;

/// One negotiated connection.
#[derive(Debug)]
pub struct FsClient {
    outbound: mpsc::Sender<String>,
    pending: Pending,
    next_tag: AtomicU32,
    closed: Arc<AtomicBool>,
    events: broadcast::Sender<Event>,
    pub hello: HelloReply,
}

impl FsClient {
    /// Connects to `url` and negotiates (`t_fs_hello`).
    pub async fn connect(
        url: &str,
        auth_token: Option<&str>,
        subscribe: bool,
    ) -> Result<FsClient, CallError> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::connect_inner(url, auth_token, subscribe),
        )
        .await
        .map_err(|_| CallError::Transport(format!("connecting to {url} timed out")))?
    }

    async fn connect_inner(
        url: &str,
        auth_token: Option<&str>,
        subscribe: bool,
    ) -> Result<FsClient, CallError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(wire::MAX_FRAME_BYTES))
            .max_frame_size(Some(wire::MAX_FRAME_BYTES));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| CallError::Transport(format!("{url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (outbound, mut outbound_rx) = mpsc::channel::<String>(MAX_IN_FLIGHT);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (events, _) = broadcast::channel(1024);

        tokio::spawn(async move {
            while let Some(text) = outbound_rx.recv().await {
                if sink.feed(Message::text(text)).await.is_err() {
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
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match frame.get("tag").and_then(Value::as_u64) {
                    Some(tag) => {
                        let waiter = reader_pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(tag as u32));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(frame);
                        }
                    }
                    None => {
                        if let Some(event) = Event::from_frame(&frame) {
                            let _ = reader_events.send(event);
                        }
                    }
                }
            }
            reader_closed.store(true, Ordering::SeqCst);
            // Dropping the waiters fails every pending call at once.
            reader_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        });

        let mut client = FsClient {
            outbound,
            pending,
            next_tag: AtomicU32::new(1),
            closed,
            events,
            hello: HelloReply {
                protocol: String::new(),
                proto: 0,
                node: wire::NodeInfo {
                    name: String::new(),
                    os: String::new(),
                    ver: String::new(),
                },
                caps: wire::HelloCaps {
                    readdirp: false,
                    symlink: false,
                    xattr: false,
                    locks: false,
                    case_sensitive: false,
                    max_read: 0,
                    max_write: 0,
                },
            },
        };
        let reply = client
            .call(
                "hello",
                None,
                None,
                wire::hello_payload(auth_token, subscribe),
            )
            .await?;
        client.hello = serde_json::from_value(reply)
            .map_err(|e| CallError::Transport(format!("bad hello reply: {e}")))?;
        Ok(client)
    }

    /// Sends one request and waits for its reply.
    pub async fn call(
        &self,
        op: &str,
        node: Option<u64>,
        h: Option<u64>,
        payload: Value,
    ) -> Result<Value, CallError> {
        if self.is_closed() {
            return Err(CallError::Transport("connection closed".into()));
        }
        let tag = loop {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            if tag != 0 {
                break tag;
            }
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tag, tx);
        let frame = wire::render_request(op, tag, node, h, &payload);
        if self.outbound.send(frame).await.is_err() {
            self.forget(tag);
            return Err(CallError::Transport("connection closed".into()));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(frame)) => wire::parse_reply(&frame).map_err(CallError::Fs),
            Ok(Err(_)) => Err(CallError::Transport("connection lost".into())),
            Err(_) => {
                self.forget(tag);
                Err(CallError::Transport(format!("{op} timed out")))
            }
        }
    }

    fn forget(&self, tag: u32) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag);
    }

    pub async fn exports(&self) -> Result<Vec<ExportEntry>, CallError> {
        let reply = self.call("exports", None, None, Value::Null).await?;
        serde_json::from_value(reply.get("exports").cloned().unwrap_or(Value::Null))
            .map_err(|e| CallError::Transport(format!("bad exports reply: {e}")))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Invalidation events arriving on this connection.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
