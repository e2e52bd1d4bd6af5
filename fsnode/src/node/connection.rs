//! One WebSocket connection to a node: negotiation, then requests in order (§2, §3, §6).
//!
//! A reader task parses each text frame, runs the op and puts, in this order, the events the
//! op caused and then its reply onto the connection's bounded outbound queue; the same events
//! are then broadcast to the other connections. A writer task drains the queue and flushes
//! once per batch, so every frame leaves in one message and a slow client only slows itself.
//!
//! A direct connection is closed (after an `err_fs` reply) on: an unparseable envelope, a
//! first message that is not the hello, a failed hello (including `AuthMissing`/`AuthFailed`),
//! a binary frame. Never panics on input.
//!
//! The same code serves the node's reverse tunnel to the gateway (§7, [`Transport::Tunnel`]):
//! there the node is the WebSocket client, the tunnel was authenticated by its own hello
//! before serving starts, and many relayed clients share it. So a tunnel starts negotiated,
//! has no hello deadline, answers protocol errors without closing (one relayed client must
//! not cut the others off), never uses binary frames (the relay forwards text), and pings the
//! gateway so that a silently dead peer is noticed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use spiderweb_proto::envelope::{self, Channel, Envelope};
use spiderweb_proto::fs::{self as wire, Errno, Event, FsError, HelloCaps, HelloReply, HelloRequest, NodeInfo, binary};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::NodeState;
use super::handles::HandleQuota;
use super::ops::{self, Ctx, Request};

/// Frames waiting for one client (replies wait for room; broadcasts are dropped when full).
pub const OUTBOUND_QUEUE: usize = 1024;
/// Bytes of replies waiting for one client: a client that sends reads without reading the
/// replies stalls itself here instead of filling the node's memory (1,024 queued 1 MiB reads
/// would otherwise be 1 GiB).
pub const OUTBOUND_BYTES: usize = 8 << 20;

/// A frame for the writer task.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    /// A binary data frame (only after `binary_data` was negotiated).
    Binary(Vec<u8>),
    /// A keep-alive of the tunnel.
    Ping,
    Close,
}

/// A queued frame and the share of the connection's byte budget it holds until written.
#[derive(Debug)]
pub struct Outbound {
    pub frame: Frame,
    pub budget: Option<OwnedSemaphorePermit>,
}

impl Outbound {
    /// A frame outside the byte budget (small: events, close).
    pub fn unbudgeted(frame: Frame) -> Outbound {
        Outbound { frame, budget: None }
    }
}

/// A tunnel pings the gateway this often …
pub const TUNNEL_PING: std::time::Duration = std::time::Duration::from_secs(20);
/// … and gives up on it when nothing (not even a pong) arrived for this long.
pub const TUNNEL_SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// How a connection reached the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A client connected to the node (or to the gateway's `/v2/fs`).
    Direct,
    /// The node's own connection to the gateway's `/v2/node`, after the tunnel hello.
    Tunnel,
}

impl Transport {
    /// Largest read or write payload on this transport. The gateway accepts tunnel frames of
    /// up to 256 KiB (spec §1); 128 KiB of data is at most ~171 KiB as base64 JSON.
    fn max_io(self) -> u32 {
        match self {
            Transport::Direct => wire::MAX_READ,
            Transport::Tunnel => TUNNEL_MAX_IO,
        }
    }
}

/// Largest read or write on the tunnel (advertised in the hello relayed to its clients).
pub const TUNNEL_MAX_IO: u32 = 128 * 1024;

/// Serves one upgraded WebSocket until the client leaves or breaks the protocol.
///
/// The connection limit is the caller's: take a slot with [`NodeState::try_admit`] before
/// answering the upgrade and drop it when this returns (the standalone listener does).
/// Inbound messages must be capped by the caller's WebSocket config
/// (`spiderweb_proto::fs::MAX_FRAME_BYTES`).
pub async fn serve_connection<S>(ws: WebSocketStream<S>, state: Arc<NodeState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(ws, state, Transport::Direct).await;
}

/// Serves the node's reverse tunnel (a client-side WebSocket whose tunnel hello succeeded)
/// until the gateway closes it or goes silent for [`TUNNEL_SILENCE`].
pub async fn serve_tunnel<S>(ws: WebSocketStream<S>, state: Arc<NodeState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(ws, state, Transport::Tunnel).await;
}

async fn serve<S>(ws: WebSocketStream<S>, state: Arc<NodeState>, transport: Transport)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (queue, mut outbound) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(Outbound { frame, budget }) = outbound.recv().await {
            let result = match frame {
                Frame::Text(text) => sink.feed(Message::text(text)).await,
                Frame::Binary(data) => sink.feed(Message::binary(data)).await,
                Frame::Ping => sink.feed(Message::Ping(Default::default())).await,
                Frame::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            };
            if result.is_err() || (outbound.is_empty() && sink.flush().await.is_err()) {
                break;
            }
            drop(budget);
        }
        let _ = sink.close().await;
    });

    let replies =
        Replies { state: Arc::clone(&state), queue, budget: Arc::new(Semaphore::new(OUTBOUND_BYTES)), origin: None };
    let mut conn = Connection {
        state: Arc::clone(&state),
        replies,
        hub_id: None,
        quota: Arc::default(),
        binary: false,
        wants_events: Arc::new(AtomicBool::new(!state.events_to_subscribers_only)),
        transport,
        waiting_locks: Arc::new(Semaphore::new(MAX_TUNNEL_WAITING_LOCKS)),
    };
    let pinger = (transport == Transport::Tunnel).then(|| {
        conn.register();
        let queue = conn.replies.queue.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TUNNEL_PING);
            tick.tick().await;
            loop {
                tick.tick().await;
                if queue.send(Outbound::unbudgeted(Frame::Ping)).await.is_err() {
                    return;
                }
            }
        })
    });
    let hello_deadline = tokio::time::Instant::now() + state.hello_timeout;
    loop {
        let next = if transport == Transport::Tunnel {
            match tokio::time::timeout(TUNNEL_SILENCE, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!("the gateway went silent on the tunnel; reconnecting");
                    break;
                }
            }
        } else if conn.hub_id.is_none() {
            match tokio::time::timeout_at(hello_deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let error = FsError::new(Errno::TimedOut, "acheron.t_fs_hello must be negotiated first");
                    conn.fail_and_close(None, error).await;
                    break;
                }
            }
        } else {
            stream.next().await
        };
        let Some(message) = next else { break };
        let keep_going = match message {
            Ok(Message::Text(text)) => conn.on_text(text.as_str()).await,
            Ok(Message::Binary(data)) => conn.on_binary(&data).await,
            Ok(Message::Close(_)) | Err(_) => false,
            Ok(_) => true,
        };
        if !keep_going {
            break;
        }
    }
    if let Some(id) = conn.hub_id {
        state.hub.unregister(id);
    }
    if let Some(pinger) = pinger {
        pinger.abort();
    }
    drop(conn);
    let _ = writer.await;
}

/// `lock`s waiting at once on one tunnel (each holds a blocking thread); more get EAGAIN.
pub const MAX_TUNNEL_WAITING_LOCKS: usize = 64;

/// Where a connection's replies go: cloned into a request that finishes after the reader
/// has moved on (a waiting `lock` on a tunnel).
#[derive(Clone)]
struct Replies {
    state: Arc<NodeState>,
    queue: mpsc::Sender<Outbound>,
    /// [`OUTBOUND_BYTES`] of queued replies.
    budget: Arc<Semaphore>,
    /// The connection's hub id, which broadcasts skip.
    origin: Option<u64>,
}

impl Replies {
    async fn send(&self, text: String) -> bool {
        self.send_frame(Frame::Text(text)).await
    }

    /// Queues a reply once the byte budget has room for it (waits while the client is slow).
    async fn send_frame(&self, frame: Frame) -> bool {
        let len = match &frame {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
            Frame::Ping | Frame::Close => 0,
        };
        let permits = len.clamp(1, OUTBOUND_BYTES) as u32;
        let Ok(budget) = Arc::clone(&self.budget).acquire_many_owned(permits).await else {
            return false;
        };
        self.queue.send(Outbound { frame, budget: Some(budget) }).await.is_ok()
    }

    /// Queues the op's events, then its reply, then broadcasts the events to the others.
    async fn finish(&self, tag: u32, reply: Result<String, FsError>, events: Vec<Event>) -> bool {
        for event in &events {
            if !self.send(event.render()).await {
                return false;
            }
        }
        let frame = reply.unwrap_or_else(|e| wire::render_error(Some(tag), &e));
        if !self.send(frame).await {
            return false;
        }
        self.state.hub.broadcast(self.origin, &events);
        true
    }
}

struct Connection {
    state: Arc<NodeState>,
    replies: Replies,
    /// Set once the hello succeeded: the connection then receives broadcasts.
    hub_id: Option<u64>,
    quota: Arc<HandleQuota>,
    /// Binary data frames negotiated in the hello.
    binary: bool,
    /// Whether broadcasts reach this connection (see `NodeConfig::events_to_subscribers_only`).
    wants_events: Arc<AtomicBool>,
    transport: Transport,
    /// Slots for [`MAX_TUNNEL_WAITING_LOCKS`].
    waiting_locks: Arc<Semaphore>,
}

impl Connection {
    async fn send(&self, text: String) -> bool {
        self.replies.send(text).await
    }

    async fn send_frame(&self, frame: Frame) -> bool {
        self.replies.send_frame(frame).await
    }

    fn register(&mut self) {
        let id = self.state.hub.register(self.replies.queue.clone(), Arc::clone(&self.wants_events));
        self.hub_id = Some(id);
        self.replies.origin = Some(id);
    }

    /// Answers `error`; a direct connection is then closed (`false`), a tunnel kept (`true`).
    async fn fail_and_close(&self, tag: Option<u32>, error: FsError) -> bool {
        let sent = self.send(wire::render_error(tag, &error)).await;
        if self.transport == Transport::Tunnel {
            return sent;
        }
        let _ = self.replies.queue.send(Outbound::unbudgeted(Frame::Close)).await;
        false
    }

    /// Handles one text frame; `false` closes the connection.
    async fn on_text(&mut self, text: &str) -> bool {
        let env = match envelope::parse(text) {
            Ok(env) => env,
            Err(e) => return self.fail_and_close(e.tag, FsError::new(Errno::Inval, e.name.as_str())).await,
        };
        let tag = env.acheron.tag.unwrap_or(0);
        let fs_op = (env.channel == Channel::Acheron).then(|| env.op.strip_prefix("t_fs_")).flatten();
        if fs_op == Some("hello") {
            return self.hello(&env, tag).await;
        }
        if self.hub_id.is_none() {
            return self
                .fail_and_close(Some(tag), FsError::new(Errno::Inval, "acheron.t_fs_hello must be negotiated first"))
                .await;
        }
        let Some(op) = fs_op else {
            return self.send(wire::render_error(Some(tag), &FsError::new(Errno::Inval, "UnsupportedType"))).await;
        };
        if self.state.events_to_subscribers_only {
            // Only a dedicated event connection (nothing but hellos) gets broadcasts.
            self.wants_events.store(false, Ordering::Relaxed);
        }
        if op == "lock" && self.transport == Transport::Tunnel {
            return self.lock_beside(&env, tag).await;
        }
        let (reply, events) = if op == "lock" {
            // `lock` with wait may block for as long as another holder keeps the lock.
            let (state, quota, payload) = (Arc::clone(&self.state), Arc::clone(&self.quota), env.payload.clone());
            let (node, h, transport) = (env.acheron.node, env.acheron.h, self.transport);
            tokio::task::spawn_blocking(move || {
                let req = Request { op: "lock", tag, node, h, payload: payload.as_ref() };
                run(&state, &quota, transport, &req)
            })
            .await
            .unwrap_or_else(|_| (Err(FsError::of(Errno::Io)), Vec::new()))
        } else if op == "read" && self.binary {
            let req = Request { op, tag, node: env.acheron.node, h: env.acheron.h, payload: env.payload.as_ref() };
            let ctx =
                Ctx { state: &self.state, quota: &self.quota, events: Vec::new(), max_io: self.transport.max_io() };
            let frame = match ops::read_binary(&ctx, &req) {
                Ok(frame) => Frame::Binary(frame),
                Err(e) => Frame::Text(wire::render_error(Some(tag), &e)),
            };
            return self.send_frame(frame).await;
        } else {
            let req = Request { op, tag, node: env.acheron.node, h: env.acheron.h, payload: env.payload.as_ref() };
            run(&self.state, &self.quota, self.transport, &req)
        };
        self.finish(tag, reply, events).await
    }

    /// A binary frame: only a negotiated binary write request is valid; anything else is
    /// answered and closes the connection, like any unparseable frame.
    async fn on_binary(&mut self, data: &[u8]) -> bool {
        let request = self.binary.then(|| binary::parse_write_request(data)).flatten();
        let (Some(write), Some(_)) = (request, self.hub_id) else {
            return self.fail_and_close(None, FsError::new(Errno::Inval, "InvalidEnvelope")).await;
        };
        let mut ctx =
            Ctx { state: &self.state, quota: &self.quota, events: Vec::new(), max_io: self.transport.max_io() };
        let reply = ops::write_bytes(&mut ctx, write.h, write.off, write.data, write.tag)
            .map(|payload| wire::render_ok("write", write.tag, &payload));
        let events = ctx.events;
        self.finish(write.tag, reply, events).await
    }

    async fn finish(&self, tag: u32, reply: Result<String, FsError>, events: Vec<Event>) -> bool {
        self.replies.finish(tag, reply, events).await
    }

    /// A tunnel's `lock`: run beside the reader, so that one relayed client waiting for a lock
    /// does not hold back the others sharing the tunnel (their order is the relay's business).
    async fn lock_beside(&self, env: &Envelope, tag: u32) -> bool {
        let Ok(slot) = Arc::clone(&self.waiting_locks).try_acquire_owned() else {
            let error = FsError::new(Errno::Again, "too many waiting locks on this tunnel");
            return self.send(wire::render_error(Some(tag), &error)).await;
        };
        let (state, quota, payload) = (Arc::clone(&self.state), Arc::clone(&self.quota), env.payload.clone());
        let (node, h, transport, replies) = (env.acheron.node, env.acheron.h, self.transport, self.replies.clone());
        tokio::spawn(async move {
            let (reply, events) = tokio::task::spawn_blocking(move || {
                let req = Request { op: "lock", tag, node, h, payload: payload.as_ref() };
                run(&state, &quota, transport, &req)
            })
            .await
            .unwrap_or_else(|_| (Err(FsError::of(Errno::Io)), Vec::new()));
            replies.finish(tag, reply, events).await;
            drop(slot);
        });
        true
    }

    async fn hello(&mut self, env: &Envelope, tag: u32) -> bool {
        let checked =
            HelloRequest::parse(env.payload.as_ref()).and_then(|hello| self.authenticate(&hello).map(|()| hello));
        let hello = match checked {
            Ok(hello) => hello,
            Err(e) => return self.fail_and_close(Some(tag), e).await,
        };
        // Once negotiated, binary frames stay on for the connection: a later hello (a health
        // check) must not change how replies already in flight are framed.
        self.binary |= hello.binary_data && self.transport == Transport::Direct;
        if self.state.events_to_subscribers_only {
            self.wants_events.store(hello.subscribe_invalidations == Some(true), Ordering::Relaxed);
        }
        let mut reply = hello_reply(&self.state);
        reply.caps.binary_data = self.binary;
        reply.caps.max_read = self.transport.max_io();
        reply.caps.max_write = self.transport.max_io();
        if !self.send(wire::render_ok("hello", tag, &reply)).await {
            return false;
        }
        if self.hub_id.is_none() {
            self.register();
        }
        true
    }

    fn authenticate(&self, hello: &HelloRequest) -> Result<(), FsError> {
        let Some(expected) = self.state.auth_digest.get() else {
            return Ok(());
        };
        let Some(token) = &hello.auth_token else {
            return Err(FsError::new(Errno::Inval, "AuthMissing"));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) { Ok(()) } else { Err(FsError::new(Errno::Inval, "AuthFailed")) }
    }
}

fn run(
    state: &NodeState,
    quota: &Arc<HandleQuota>,
    transport: Transport,
    req: &Request<'_>,
) -> (Result<String, FsError>, Vec<spiderweb_proto::fs::Event>) {
    let mut ctx = Ctx { state, quota, events: Vec::new(), max_io: transport.max_io() };
    let reply = ops::dispatch(&mut ctx, req);
    (reply, ctx.events)
}

fn hello_reply(state: &NodeState) -> HelloReply {
    HelloReply {
        protocol: wire::PROTOCOL.into(),
        proto: wire::PROTO,
        node: NodeInfo { name: "spiderweb-fs-node".into(), os: "linux".into(), ver: env!("CARGO_PKG_VERSION").into() },
        caps: HelloCaps {
            readdirp: true,
            symlink: state.all_exports_support(|c| c.symlink),
            xattr: state.all_exports_support(|c| c.xattr),
            locks: state.all_exports_support(|c| c.locks),
            case_sensitive: state.all_exports_support(|c| c.case_sensitive),
            max_read: wire::MAX_READ,
            max_write: wire::MAX_WRITE,
            binary_data: false,
        },
    }
}
