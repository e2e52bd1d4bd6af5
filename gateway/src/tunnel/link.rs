//! The node's end of a reverse tunnel, as the gateway serves it on `/v2/node`
//! (spec `fs-node.md` §7.1–7.2, 7.4).
//!
//! Order: the first message must be a hello carrying `node_id` and `node_secret`; it is
//! checked (protocol, then the id's syntax, then the secret against the control plane) before
//! the tunnel is registered, so an unauthenticated peer never becomes a route. After that the
//! node sends replies (routed to waiting relay requests by their upstream tag) and untagged
//! `e_fs_*` events (fanned out to subscribed relay clients); anything else is dropped.
//!
//! Liveness: the gateway pings every [`PING_EVERY`]; a tunnel that sends nothing (not even a
//! pong) for [`IDLE_LIMIT`] is closed, which fails its pending requests at once instead of
//! letting each wait for its reply deadline.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Map, Value, json};
use spiderweb_policy::session::valid_identifier;
use spiderweb_proto::fs::{self as wire, Errno, FsError, HelloRequest};
use spiderweb_proto::{Channel, envelope};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Tunnel;
use crate::connection::Socket;
use crate::plane::nodes::NodeAuthError;
use crate::server::Shared;

pub const PING_EVERY: Duration = Duration::from_secs(30);
pub const IDLE_LIMIT: Duration = Duration::from_secs(90);

/// A hello that was accepted: who the node is and the tag to answer.
struct Hello {
    node_id: String,
    tag: u32,
}

fn inval(message: &str) -> FsError {
    FsError::new(Errno::Inval, message)
}

/// The tunnel hello's checks in the spec's order; on failure the tag to answer and the error.
fn check_hello(shared: &Shared, text: &str) -> Result<Hello, (Option<u32>, FsError)> {
    let env = envelope::parse(text).map_err(|e| (e.tag, inval(e.name.as_str())))?;
    let tag = env.acheron.tag;
    if env.channel != Channel::Acheron || env.op != "t_fs_hello" {
        return Err((tag, inval("acheron.t_fs_hello must be negotiated first")));
    }
    HelloRequest::parse(env.payload.as_ref()).map_err(|e| (tag, e))?;
    let payload = env.payload.as_ref();
    let field = |key: &str| payload.and_then(|p| p.get(key)).and_then(Value::as_str);
    let node_id = field("node_id").filter(|id| valid_identifier(id, 128)).ok_or((tag, inval("InvalidPayload")))?;
    let secret =
        field("node_secret").filter(|s| !s.is_empty() && s.len() <= 256).ok_or((tag, inval("InvalidPayload")))?;
    shared.plane.check_node_secret(node_id, secret).map_err(|e| match e {
        NodeAuthError::NotFound => (tag, FsError::new(Errno::NoEnt, "NodeNotFound")),
        NodeAuthError::Failed => (tag, FsError::new(Errno::Acces, "NodeAuthFailed")),
    })?;
    Ok(Hello { node_id: node_id.to_owned(), tag: tag.unwrap_or(0) })
}

/// Sends one `err_fs` and closes (1008).
pub async fn fail_and_close(socket: &mut Socket, tag: Option<u32>, error: &FsError) {
    let _ = socket.send(Message::text(wire::render_error(tag, error))).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame { code: CloseCode::Policy, reason: error.message.clone().into() })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while socket.next().await.is_some() {} }).await;
}

/// The first text message, or `None` if the peer closed or sent something else first.
pub async fn first_text(socket: &mut Socket) -> Option<String> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// Serves one node's tunnel until it closes, is replaced, or the node is removed.
pub async fn serve(mut socket: Socket, shared: Arc<Shared>) {
    let first = match tokio::time::timeout(shared.config.server.handshake_timeout(), first_text(&mut socket)).await {
        Ok(Some(text)) => text,
        Ok(None) => return,
        Err(_) => {
            return fail_and_close(&mut socket, None, &inval("acheron.t_fs_hello must be negotiated first")).await;
        }
    };
    let hello = match check_hello(&shared, &first) {
        Ok(hello) => hello,
        Err((tag, error)) => {
            tracing::info!(message = %error.message, "node tunnel hello refused");
            return fail_and_close(&mut socket, tag, &error).await;
        }
    };
    let reply = json!({"protocol": wire::PROTOCOL, "proto": wire::PROTO, "node_id": hello.node_id});
    if socket.send(Message::text(wire::render_ok("hello", hello.tag, &reply))).await.is_err() {
        return;
    }
    let (tunnel, outbound) = shared.tunnels.install(&hello.node_id);
    tracing::info!(node_id = %hello.node_id, generation = tunnel.generation, "node tunnel connected");
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, outbound));
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_rx = Instant::now();
    let close = loop {
        let message = tokio::select! {
            _ = tunnel.closed.cancelled() => break close_frame(CloseCode::Normal, "tunnel replaced or node removed"),
            _ = shared.shutdown.cancelled() => break close_frame(CloseCode::Away, "server shutting down"),
            _ = ping.tick() => {
                if last_rx.elapsed() >= IDLE_LIMIT {
                    break close_frame(CloseCode::Away, "tunnel idle");
                }
                let _ = tunnel.outbound.try_send(Message::Ping(Default::default()));
                continue;
            }
            m = stream.next() => m,
        };
        last_rx = Instant::now();
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Err(reason) = on_node_frame(&shared, &tunnel, text.as_str()) {
                    break close_frame(CloseCode::Policy, reason);
                }
            }
            Some(Ok(Message::Close(_))) | None => break close_frame(CloseCode::Normal, ""),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::info!(node_id = %tunnel.node_id, error = %e, "node tunnel read failed");
                break close_frame(CloseCode::Size, "frame too large or malformed");
            }
        }
    };
    shared.tunnels.retire(&tunnel);
    tracing::info!(node_id = %tunnel.node_id, generation = tunnel.generation, "node tunnel closed");
    let _ = tunnel.outbound.try_send(Message::Close(Some(close)));
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

/// One frame from the node. `Err` closes the tunnel.
fn on_node_frame(shared: &Shared, tunnel: &Tunnel, text: &str) -> Result<(), &'static str> {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        tracing::debug!(node_id = %tunnel.node_id, "dropped a tunnel frame that is not a JSON object");
        return Ok(());
    };
    let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "acheron.t_fs_hello" {
        return rehello(tunnel, &frame);
    }
    match frame.get("tag").and_then(Value::as_u64) {
        Some(tag) => {
            if let Ok(tag) = u32::try_from(tag) {
                tunnel.deliver(tag, frame);
            }
        }
        None if kind.starts_with("acheron.e_fs_") => shared.tunnels.publish_event(&tunnel.node_id, Arc::from(text)),
        None => tracing::debug!(node_id = %tunnel.node_id, kind, "dropped an untagged tunnel frame"),
    }
    Ok(())
}

/// A later hello on the tunnel must name the same node (spec §7.2).
fn rehello(tunnel: &Tunnel, frame: &Map<String, Value>) -> Result<(), &'static str> {
    let tag = frame.get("tag").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok());
    let same = frame.get("payload").and_then(|p| p.get("node_id")).and_then(Value::as_str) == Some(&tunnel.node_id);
    if !same {
        let error = FsError::new(Errno::Acces, "node_id mismatch for active tunnel");
        let _ = tunnel.outbound.try_send(Message::text(wire::render_error(tag, &error)));
        return Err("node_id mismatch for active tunnel");
    }
    let reply = json!({"protocol": wire::PROTOCOL, "proto": wire::PROTO});
    let _ = tunnel.outbound.try_send(Message::text(wire::render_ok("hello", tag.unwrap_or(0), &reply)));
    Ok(())
}

/// Writes queued frames, flushing once per batch; ends after a close frame or a write error.
pub async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut rx: tokio::sync::mpsc::Receiver<Message>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let closing = matches!(message, Message::Close(_));
            if sink.feed(message).await.is_err() {
                return;
            }
            if closing {
                let _ = sink.flush().await;
                return;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
