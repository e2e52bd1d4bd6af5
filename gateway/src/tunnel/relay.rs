//! A mount client's connection on `/v2/fs/node/<node_id>`, relayed through that node's
//! tunnel (spec `fs-node.md` §3, §6, §7.3).
//!
//! The client speaks the ordinary node protocol. Its hello must carry the node's secret as
//! `auth_token`: that is checked here, before anything reaches the node, and again on every
//! later hello. Each request is forwarded with a tunnel tag and answered with the client's own
//! tag when the node replies, or with `err_fs` 5 `NodeTunnelUnavailable` when the reply
//! deadline passes or the tunnel is lost. Requests run concurrently (up to
//! [`MAX_IN_FLIGHT_PER_CLIENT`]); replies carry tags, so clients correlate them.
//!
//! Invalidation events from the node reach clients whose last hello set
//! `subscribe_invalidations: true` (no before-reply guarantee on this path). Binary data frames
//! are not relayed: `binary_data` is removed from the forwarded hello, so the node answers in
//! JSON.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Map, Value};
use spiderweb_proto::fs::{self as wire, Errno, FsError, HelloRequest};
use spiderweb_proto::{Channel, envelope};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{PendingReply, TunnelError};
use crate::connection::Socket;
use crate::plane::nodes::NodeAuthError;
use crate::server::Shared;

/// Requests one client may have waiting for the node; beyond, its frames are not read.
pub const MAX_IN_FLIGHT_PER_CLIENT: usize = 64;

fn inval(message: &str) -> FsError {
    FsError::new(Errno::Inval, message)
}

/// What a handled frame asks of the connection loop.
enum Next {
    Continue,
    Close,
}

struct Relay {
    shared: Arc<Shared>,
    node_id: String,
    out: mpsc::Sender<Message>,
    negotiated: bool,
    events: Option<broadcast::Receiver<Arc<str>>>,
    in_flight: JoinSet<String>,
}

/// Serves one relay client until it or the node goes away.
pub async fn serve(socket: Socket, shared: Arc<Shared>, node_id: String) {
    let (sink, mut stream) = socket.split();
    let (out, rx) = mpsc::channel(shared.config.runtime.outbound_queue_max);
    let writer = tokio::spawn(super::link::write_loop(sink, rx));
    let handshake = shared.config.server.handshake_timeout();
    let idle = shared.config.server.idle_timeout();
    let started = Instant::now();
    let mut last_rx = started;
    let mut relay =
        Relay { shared: shared.clone(), node_id, out, negotiated: false, events: None, in_flight: JoinSet::new() };
    let close = loop {
        // A subscribed client may only ever read (the router's event connection), so only
        // clients that neither subscribe nor wait for a reply can be idle.
        let deadline = if !relay.negotiated {
            started + handshake
        } else if relay.in_flight.is_empty() && relay.events.is_none() {
            last_rx + idle
        } else {
            Instant::now() + idle
        };
        let can_read = relay.in_flight.len() < MAX_IN_FLIGHT_PER_CLIENT;
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break close_frame(CloseCode::Away, "server shutting down"),
            Some(done) = relay.in_flight.join_next() => {
                if let Ok(frame) = done && !relay.send(frame).await {
                    break close_frame(CloseCode::Away, "client is not reading");
                }
            }
            Some(event) = next_event(&mut relay.events) => match event {
                Ok(frame) => {
                    if !relay.send(frame.to_string()).await {
                        break close_frame(CloseCode::Away, "client is not reading");
                    }
                }
                // Events are hints; a client that fell behind misses some and re-reads.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break close_frame(CloseCode::Away, "node removed"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                if !relay.negotiated {
                    relay.fail(None, inval("acheron.t_fs_hello must be negotiated first")).await;
                    break close_frame(CloseCode::Policy, "hello timeout");
                }
                break close_frame(CloseCode::Away, "idle timeout");
            }
            m = stream.next(), if can_read => {
                last_rx = Instant::now();
                let next = match m {
                    Some(Ok(Message::Text(text))) => relay.on_frame(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        relay.fail(None, inval("binary frames are not relayed; send JSON text frames")).await;
                        Next::Continue
                    }
                    Some(Ok(Message::Close(_))) | None => break close_frame(CloseCode::Normal, ""),
                    Some(Ok(_)) => Next::Continue,
                    Some(Err(_)) => break close_frame(CloseCode::Size, "frame too large or malformed"),
                };
                if matches!(next, Next::Close) {
                    break close_frame(CloseCode::Policy, "fs hello failed");
                }
            }
        }
    };
    relay.in_flight.abort_all();
    let _ = relay.out.try_send(Message::Close(Some(close)));
    drop(relay);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

async fn next_event(
    events: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Option<Result<Arc<str>, broadcast::error::RecvError>> {
    match events {
        Some(rx) => Some(rx.recv().await),
        None => std::future::pending().await,
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

impl Relay {
    /// Queues a frame for the client; `false` when the client does not read (queue full).
    async fn send(&self, frame: String) -> bool {
        self.out.send_timeout(Message::text(frame), Duration::from_secs(2)).await.is_ok()
    }

    async fn fail(&self, tag: Option<u32>, error: FsError) {
        self.send(wire::render_error(tag, &error)).await;
    }

    async fn on_frame(&mut self, text: &str) -> Next {
        let env = match envelope::parse(text) {
            Ok(env) => env,
            Err(e) => {
                self.fail(e.tag, inval(e.name.as_str())).await;
                return Next::Close;
            }
        };
        let tag = env.acheron.tag;
        if !self.negotiated && env.channel != Channel::Acheron {
            self.fail(tag, inval("wrong websocket endpoint: use / for control protocol")).await;
            return Next::Close;
        }
        if env.channel == Channel::Acheron && env.op == "t_fs_hello" {
            return self.hello(text, &env).await;
        }
        if !self.negotiated {
            self.fail(tag, inval("acheron.t_fs_hello must be negotiated first")).await;
            return Next::Close;
        }
        if env.channel != Channel::Acheron || !env.op.starts_with("t_fs_") {
            self.fail(tag, inval("UnsupportedType")).await;
            return Next::Continue;
        }
        let Some(client_tag) = tag else {
            self.fail(None, inval("missing request tag")).await;
            return Next::Continue;
        };
        let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
            return Next::Continue;
        };
        // Sent here, in the order received (the node handles a connection's requests in
        // order); only the wait for the reply runs beside the connection.
        let sent = send(&self.shared, &self.node_id, frame).await;
        let timeout = self.shared.tunnels.reply_timeout;
        self.in_flight.spawn(async move { reply_frame(sent, timeout, client_tag).await.0 });
        Next::Continue
    }

    /// Checks a hello (the first, or a later one) and forwards it; every failure closes.
    async fn hello(&mut self, text: &str, env: &envelope::Envelope) -> Next {
        let tag = env.acheron.tag;
        let hello = match HelloRequest::parse(env.payload.as_ref()) {
            Ok(hello) => hello,
            Err(e) => {
                self.fail(tag, e).await;
                return Next::Close;
            }
        };
        let Some(token) = hello.auth_token.as_deref().filter(|t| !t.is_empty()) else {
            self.fail(tag, FsError::new(Errno::Acces, "missing auth_token in fs hello payload")).await;
            return Next::Close;
        };
        if let Err(e) = self.shared.plane.check_node_secret(&self.node_id, token) {
            let error = match e {
                NodeAuthError::NotFound => FsError::new(Errno::NoEnt, "NodeNotFound"),
                NodeAuthError::Failed => FsError::new(Errno::Acces, "NodeAuthFailed"),
            };
            tracing::info!(node_id = %self.node_id, message = %error.message, "relay hello refused");
            self.fail(tag, error).await;
            return Next::Close;
        }
        if self.shared.tunnels.current(&self.node_id).is_none() {
            self.fail(tag, FsError::new(Errno::Io, "node tunnel is unavailable")).await;
            return Next::Close;
        }
        let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else { return Next::Close };
        if let Some(Value::Object(payload)) = frame.get_mut("payload") {
            payload.remove("binary_data");
        }
        let sent = send(&self.shared, &self.node_id, frame).await;
        let (reply, ok) = reply_frame(sent, self.shared.tunnels.reply_timeout, tag.unwrap_or(0)).await;
        if !self.send(reply).await || !ok {
            return Next::Close;
        }
        self.negotiated = true;
        let subscribe = hello.subscribe_invalidations == Some(true);
        if subscribe && self.events.is_none() {
            self.events = Some(self.shared.tunnels.subscribe_events(&self.node_id));
        } else if !subscribe {
            self.events = None;
        }
        Next::Continue
    }
}

/// Sends one request through the node's current tunnel.
async fn send(shared: &Shared, node_id: &str, frame: Map<String, Value>) -> Result<PendingReply, TunnelError> {
    match shared.tunnels.current(node_id) {
        Some(tunnel) => tunnel.send(frame, shared.tunnels.reply_timeout).await,
        None => Err(TunnelError::Unavailable),
    }
}

/// The reply to send the client (with its own tag), and whether it is a success.
async fn reply_frame(sent: Result<PendingReply, TunnelError>, timeout: Duration, client_tag: u32) -> (String, bool) {
    let result = match sent {
        Ok(pending) => pending.wait(timeout).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(mut reply) => {
            reply.insert("tag".into(), client_tag.into());
            let ok = reply.get("ok").and_then(Value::as_bool) != Some(false);
            (Value::Object(reply).to_string(), ok)
        }
        Err(e) => (wire::render_error(Some(client_tag), &e.fs_error()), false),
    }
}
