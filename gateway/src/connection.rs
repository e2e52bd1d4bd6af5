//! One WebSocket connection on `/`: read frames, answer them, write replies.
//!
//! Two tasks per connection. The reader parses and handles each frame in order and queues
//! the replies; the writer drains the queue, batching whatever is ready, and flushes once per
//! batch — one `write()` for an isolated reply, no Nagle stall (`TCP_NODELAY` is set on
//! accept). The queue is bounded (`runtime.outbound_queue_max`): a client that stops reading
//! fills it and is disconnected, instead of growing the gateway's memory.
//!
//! A request that has to wait (a blocking read) is not answered in line: its future runs in
//! the reader's set of pending requests and its reply is queued when it completes, so later
//! requests are not held back (spec README quirk 12). Requests that do not wait are still
//! answered in the order received.
//!
//! Timeouts: the first version message must arrive within `handshake_timeout_ms` of the
//! upgrade; afterwards a connection that sends no data frame for `idle_timeout_ms`, and has
//! no request waiting, is closed. On shutdown the reader stops taking requests, lets the
//! waiting ones finish (each is bounded by its drain grace), then closes with 1001.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use spiderweb_policy::Role;
use spiderweb_proto::codes::{acheron as acheron_code, control as code};
use spiderweb_proto::reply::{self, Correlation};
use spiderweb_proto::{Channel, envelope};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::control::watch::WatchChange;
use crate::control::{self, ConnSession};
use crate::events::topology::{self, TopologyChange};
use crate::plane::nodes::watch::{ServiceEvent, Subscription};
use crate::server::{ConnectionSlot, Shared};
use crate::worldfs;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long a full outbound queue may stay full before the client counts as not reading.
const SLOW_CONSUMER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long we wait for the client's answer to our close frame.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

enum Outgoing {
    Text(String),
    Close(CloseFrame),
    /// The client closed: flush the close reply tungstenite queued, then stop.
    Finish,
}

/// The frames one request produces, and whether the connection must close after them.
#[derive(Default)]
pub struct Outbox {
    frames: Vec<(Cow<'static, str>, String)>,
    errors: Vec<String>,
    close: Option<(CloseCode, &'static str)>,
    deferred: Vec<worldfs::Pending>,
}

impl Outbox {
    /// Answers later: `pending` runs beside the connection's other requests.
    pub fn defer(&mut self, pending: worldfs::Pending) {
        self.deferred.push(pending);
    }
    pub fn push(&mut self, kind: &'static str, frame: String) {
        self.frames.push((Cow::Borrowed(kind), frame));
    }
    pub fn push_owned(&mut self, kind: String, frame: String) {
        self.frames.push((Cow::Owned(kind), frame));
    }
    pub fn control_error(&mut self, id: Option<&str>, code: &str, message: &str, correlation: Correlation<'_>) {
        self.errors.push(code.to_owned());
        self.push("control.error", reply::control_error(id, code, message, correlation));
    }
    pub fn acheron_error(&mut self, tag: Option<u32>, code: &str, message: &str) {
        self.errors.push(code.to_owned());
        self.push("acheron.error", reply::acheron_error(tag, code, message));
    }
    /// Close with 1008 (policy violation) after the queued frames.
    pub fn close_policy(&mut self, reason: &'static str) {
        self.close = Some((CloseCode::Policy, reason));
    }
}

/// Sends one refusal frame and closes with 1008: for upgrades that completed (so that
/// clients expecting a 101 see it) but must not be served (spec README quirk 2).
pub async fn refuse(mut socket: Socket, shared: &Shared, code: &str, message: &str) {
    shared.metrics.error(code);
    shared.metrics.frame_out("control.error");
    let frame = reply::control_error(None, code, message, Correlation::Omit);
    let _ = socket.send(Message::text(frame)).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame { code: CloseCode::Policy, reason: message.to_owned().into() })))
        .await;
    // Give the client a moment to answer the close; then drop the socket regardless.
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(2), async { while socket.next().await.is_some() {} }).await;
}

/// Serves an authenticated connection until it closes.
pub async fn serve(socket: Socket, shared: Arc<Shared>, role: Role, slot: ConnectionSlot) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(shared.config.runtime.outbound_queue_max);
    let writer = tokio::spawn(write_loop(sink, rx));
    let mut conn = ConnSession::new(&shared.plane, role);
    // The server's shutdown as this connection's own token, polled once per loop turn: a
    // token shared by every connection would make each turn take the same lock.
    let shutdown = shared.shutdown.child_token();
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    let mut fs = worldfs::FsSession::new(shared.config.server.max_fids_per_connection, shutdown.clone());
    let started = Instant::now();
    let mut last_rx = started;
    let handshake = shared.config.server.handshake_timeout();
    let idle = shared.config.server.idle_timeout();

    // Waiting reads are polled here, inside the connection's task, not spawned: the change
    // that completes one (a streamed chunk) then wakes this task directly, one wake-up per
    // chunk instead of two, and a task spawn per read is saved.
    let mut pending: FuturesUnordered<worldfs::Pending> = FuturesUnordered::new();
    // One timer for the idle and handshake limits, checked when it fires rather than reset
    // per message: a message then costs no timer operation.
    let limit = tokio::time::sleep_until((started + handshake).into());
    tokio::pin!(limit);
    let mut topology: Option<broadcast::Receiver<TopologyChange>> = None;
    let mut node_watch: Option<Subscription> = None;

    let close: Option<CloseFrame> = loop {
        let negotiated = conn.control_versioned || conn.acheron_versioned;
        let mut out = Outbox::default();
        let began = Instant::now();
        let message = tokio::select! {
            biased;
            _ = &mut stopping => break Some(close_frame(CloseCode::Away, "server shutting down")),
            Some(done) = pending.next() => {
                worldfs::complete(&mut fs, done, &mut out);
                None
            }
            Some(change) = next_change(&mut topology) => {
                let binding = conn.binding();
                let frames = match change {
                    Ok(change) => {
                        let status = shared.plane.workspace_of(Some(&binding.project_id), conn.viewer());
                        topology::frames(&change, &binding.agent_id, status)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => vec![topology::resync_frame(crate::plane::now_ms())],
                    Err(broadcast::error::RecvError::Closed) => Vec::new(),
                };
                for frame in frames {
                    out.push("debug.event", frame);
                }
                None
            }
            Some(received) = next_service_event(&mut node_watch) => {
                match received {
                    Ok(event) => {
                        if let Some(sub) = node_watch.as_ref().filter(|s| s.matches(&event)) {
                            let visible = control::watch::event_visible(&shared.plane, &conn, &event.node_id);
                            sub.record_fanout(visible);
                            if visible {
                                out.push("control.node_service_event", event.frame.clone());
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        if let Some(sub) = node_watch.take() {
                            sub.record_dropped(missed);
                            tracing::info!(conn = slot.id(), missed, "node service watcher fell behind; subscription dropped");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => node_watch = None,
                }
                None
            }
            _ = &mut limit => {
                let deadline = if fs.has_pending_reads() {
                    Instant::now() + idle
                } else if negotiated {
                    last_rx + idle
                } else {
                    started + handshake
                };
                if deadline > Instant::now() {
                    limit.as_mut().reset(deadline.into());
                    continue;
                }
                break Some(if negotiated {
                    close_frame(CloseCode::Away, "idle timeout")
                } else {
                    close_frame(CloseCode::Policy, "handshake timeout")
                });
            }
            m = stream.next() => match m {
                None => break None,
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => break read_error_close(&e),
            },
        };
        match message {
            None => {}
            Some(Message::Text(text)) => {
                last_rx = began;
                handle_text(&shared, &mut conn, &mut fs, text.as_str(), &mut out);
                shared.metrics.observe_request(began.elapsed());
            }
            Some(Message::Binary(_)) => {
                last_rx = began;
                shared.metrics.frame_in(None);
                out.control_error(
                    None,
                    code::INVALID_ENVELOPE,
                    "binary frames are not supported; send JSON text frames",
                    Correlation::Omit,
                );
            }
            Some(Message::Ping(_)) => last_rx = began,
            Some(Message::Close(_)) => {
                let _ = tx.try_send(Outgoing::Finish);
                break None;
            }
            Some(Message::Pong(_) | Message::Frame(_)) => continue,
        }
        pending.extend(out.deferred.drain(..));
        match conn.node_watch.take() {
            Some(WatchChange::Subscribe(sub)) => node_watch = Some(sub),
            Some(WatchChange::Unsubscribe) => node_watch = None,
            None => {}
        }
        // Subscribe in the same step as the request that asked, so no change slips between.
        if conn.debug_subscribed != topology.is_some() {
            topology = conn.debug_subscribed.then(|| shared.topology.subscribe());
        }
        if !queue(&shared, &tx, &mut out).await {
            shared.metrics.slow_consumer_disconnects.inc();
            tracing::info!(conn = slot.id(), "client is not reading its replies; disconnecting");
            writer.abort();
            return;
        }
        if let Some((code, reason)) = out.close {
            break Some(close_frame(code, reason));
        }
    };
    // Requests that were waiting still get their answers before the close: on shutdown each
    // wait is bounded by its drain grace; on any other close they are dropped with the socket.
    if close.as_ref().is_some_and(|c| c.code == CloseCode::Away) && shared.shutdown.is_cancelled() {
        while let Some(done) = pending.next().await {
            let mut out = Outbox::default();
            worldfs::complete(&mut fs, done, &mut out);
            if !queue(&shared, &tx, &mut out).await {
                break;
            }
        }
    }
    drop(pending);
    if let Some(frame) = close {
        // A full queue here means the client is not reading; the close is then moot.
        let _ = tx.try_send(Outgoing::Close(frame));
    }
    drop(tx);
    let _ = writer.await;
    // Read (and discard) until the client answers the close, so that unread input does not
    // make the kernel reset the connection and destroy the replies still in flight.
    let _ = tokio::time::timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = stream.next().await {} }).await;
    drop(slot);
}

/// The next topology change for a subscribed connection; never resolves for the others.
async fn next_change(
    feed: &mut Option<broadcast::Receiver<TopologyChange>>,
) -> Option<Result<TopologyChange, broadcast::error::RecvError>> {
    match feed {
        Some(rx) => Some(rx.recv().await),
        None => std::future::pending().await,
    }
}

/// The next catalog event for a watching connection; never resolves for the others.
async fn next_service_event(
    sub: &mut Option<Subscription>,
) -> Option<Result<Arc<ServiceEvent>, broadcast::error::RecvError>> {
    match sub {
        Some(sub) => Some(sub.receiver.recv().await),
        None => std::future::pending().await,
    }
}

/// Hands one request's frames to the writer. `false` means the client is not reading: its
/// queue stayed full for [`SLOW_CONSUMER_GRACE`].
async fn queue(shared: &Shared, tx: &mpsc::Sender<Outgoing>, out: &mut Outbox) -> bool {
    for code in &out.errors {
        shared.metrics.error(code);
    }
    for (kind, frame) in out.frames.drain(..) {
        shared.metrics.frame_out(&kind);
        // A full queue first pauses reading (backpressure on a client that pipelines);
        // only a queue that stays full for the grace period marks a client that does not read.
        let queued = match tx.try_send(Outgoing::Text(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(item)) => tx.send_timeout(item, SLOW_CONSUMER_GRACE).await.is_ok(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !queued {
            return false;
        }
    }
    true
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: reason.into() }
}

/// The close code a read error deserves (RFC 6455 §7.4.1), or none when the peer is gone.
fn read_error_close(e: &WsError) -> Option<CloseFrame> {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some(close_frame(CloseCode::Size, "frame too large"))
        }
        WsError::Utf8(_) => Some(close_frame(CloseCode::Invalid, "text frame is not valid UTF-8")),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing) => None,
        WsError::Protocol(_) | WsError::Capacity(_) => {
            Some(close_frame(CloseCode::Protocol, "websocket protocol error"))
        }
        _ => None,
    }
}

fn handle_text(shared: &Shared, conn: &mut ConnSession, fs: &mut worldfs::FsSession, text: &str, out: &mut Outbox) {
    let env = match envelope::parse(text) {
        Ok(env) => env,
        Err(e) => {
            shared.metrics.frame_in(None);
            let name = e.name.as_str();
            match e.channel {
                Some(Channel::Acheron) => out.acheron_error(e.tag, acheron_code::UNSUPPORTED_LEGACY_API, name),
                _ => out.control_error(e.id.as_deref(), code::UNSUPPORTED_LEGACY_API, name, Correlation::Omit),
            }
            return;
        }
    };
    shared.metrics.frame_in(Some(&env.type_name()));
    match env.channel {
        Channel::Control => control::handle(shared, conn, &env, out),
        Channel::Acheron => worldfs::handle(shared, conn, fs, &env, out),
    }
}

async fn write_loop(mut sink: futures_util::stream::SplitSink<Socket, Message>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Text(t) => {
                    if sink.feed(Message::text(t)).await.is_err() {
                        return;
                    }
                }
                Outgoing::Close(frame) => {
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
                Outgoing::Finish => {
                    let _ = sink.close().await;
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
