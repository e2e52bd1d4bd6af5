//! Paired nodes' reverse tunnels (`/v2/node`) and the relay to them (`/v2/fs/node/<id>`),
//! spec `fs-node.md` §7.
//!
//! A node behind NAT cannot be dialled, so it dials the gateway: [`link`] serves that
//! WebSocket (the node is the client but serves fs requests), [`relay`] serves mount clients
//! that want that node's files, and the [`Registry`] joins them: one current [`Tunnel`] per
//! node, replaced when the node connects again (a generation counter says which is current).
//!
//! What must never happen: a relay client reaching a node without presenting that node's
//! secret (checked in the client's hello, against the control plane's digest); a slow or dead
//! node holding a client forever (every forwarded request has a reply deadline,
//! `nodes.tunnel_reply_timeout_ms`, 45 s by default, and a lost tunnel fails everything pending
//! at once); input growing memory (frames capped, requests in flight per tunnel and per client
//! capped, event fan-out through bounded channels).
//!
//! Tags: each tunnel numbers its forwarded requests itself (u32 from 1, skipping 0 and tags
//! still in flight), so clients' tags never collide, and rewrites the reply back to the
//! client's tag.

pub mod link;
pub mod relay;
pub mod tags;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use spiderweb_proto::fs::{Errno, FsError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Largest message from a relay client or a node's tunnel hello (spec §1: 256 KiB).
pub const RELAY_MAX_FRAME_BYTES: usize = 256 * 1024;
/// Largest message from a node's tunnel. Larger than the original's 256 KiB: a 1 MiB read
/// reply is ~1.4 MiB of base64 JSON, and the node protocol allows 1 MiB reads.
pub const TUNNEL_MAX_FRAME_BYTES: usize = spiderweb_proto::fs::MAX_FRAME_BYTES;
/// Requests one tunnel carries at once; more get EAGAIN.
pub const MAX_IN_FLIGHT_PER_TUNNEL: usize = 4096;
/// Invalidation events one relay client may fall behind (they are hints; missed ones are dropped).
const EVENT_BACKLOG: usize = 256;
/// Frames waiting to be written to one node.
const TUNNEL_QUEUE: usize = 1024;

/// Why a forwarded request got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    #[error("node tunnel is unavailable")]
    Unavailable,
    #[error("node tunnel is busy")]
    Busy,
}

impl TunnelError {
    /// The `err_fs` a client sees (spec §7.3: timeouts and losses are errno 5 NodeTunnelUnavailable).
    pub fn fs_error(self) -> FsError {
        match self {
            TunnelError::Unavailable => FsError::new(Errno::Io, "NodeTunnelUnavailable"),
            TunnelError::Busy => FsError::new(Errno::Again, "node tunnel is busy"),
        }
    }
}

/// One connected node.
pub struct Tunnel {
    pub node_id: String,
    pub generation: u64,
    outbound: mpsc::Sender<Message>,
    pending: Mutex<tags::Pending>,
    /// Cancelled when a newer tunnel replaces this one or the node is deleted.
    pub closed: CancellationToken,
}

/// A request on its way to the node; [`PendingReply::wait`] gives its reply.
pub struct PendingReply {
    tunnel: Arc<Tunnel>,
    tag: u32,
    reply: oneshot::Receiver<Map<String, Value>>,
}

impl PendingReply {
    /// The node's reply, or `Unavailable` after `timeout` or when the tunnel is lost.
    pub async fn wait(self, timeout: Duration) -> Result<Map<String, Value>, TunnelError> {
        match tokio::time::timeout(timeout, self.reply).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender went away: the tunnel was lost and failed every pending request.
            Ok(Err(_)) => Err(TunnelError::Unavailable),
            Err(_) => {
                self.tunnel.pending().remove(self.tag);
                Err(TunnelError::Unavailable)
            }
        }
    }
}

impl Tunnel {
    /// Queues `frame` (a client request; its `tag` is replaced by a tunnel tag) for the node.
    /// Callers send one connection's requests in order, so the node sees them in order.
    pub async fn send(
        self: &Arc<Self>,
        mut frame: Map<String, Value>,
        timeout: Duration,
    ) -> Result<PendingReply, TunnelError> {
        let (tx, rx) = oneshot::channel();
        let tag = self.pending().insert(tx).ok_or(TunnelError::Busy)?;
        frame.insert("tag".into(), tag.into());
        let text = Value::Object(frame).to_string();
        let sent = tokio::time::timeout(timeout, self.outbound.send(Message::text(text))).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.pending().remove(tag);
            return Err(TunnelError::Unavailable);
        }
        Ok(PendingReply { tunnel: self.clone(), tag, reply: rx })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, tags::Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the node's reply to whoever waits for `tag`; a reply nobody waits for (late,
    /// after a timeout) is dropped.
    fn deliver(&self, tag: u32, reply: Map<String, Value>) {
        if let Some(waiter) = self.pending().remove(tag) {
            let _ = waiter.send(reply);
        }
    }

    /// Fails every pending request (their waiters see the tunnel as unavailable).
    fn fail_all(&self) {
        self.pending().clear();
    }
}

/// What the registry knows about one node: its current tunnel, and the channel its
/// invalidation events go out on (kept across tunnel generations so subscribers stay).
struct Slot {
    tunnel: Option<Arc<Tunnel>>,
    events: broadcast::Sender<Arc<str>>,
}

/// Current tunnels by node id.
pub struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
    generations: AtomicU64,
    pub reply_timeout: Duration,
}

impl Registry {
    pub fn new(reply_timeout: Duration) -> Registry {
        Registry { slots: Mutex::new(HashMap::new()), generations: AtomicU64::new(1), reply_timeout }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a new tunnel current for `node_id`, closing the one it replaces. Returns it and
    /// the receiver of the frames to write to the node.
    fn install(&self, node_id: &str) -> (Arc<Tunnel>, mpsc::Receiver<Message>) {
        let (outbound, rx) = mpsc::channel(TUNNEL_QUEUE);
        let tunnel = Arc::new(Tunnel {
            node_id: node_id.to_owned(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            outbound,
            pending: Mutex::new(tags::Pending::new(MAX_IN_FLIGHT_PER_TUNNEL)),
            closed: CancellationToken::new(),
        });
        let mut slots = self.slots();
        let slot = slots
            .entry(node_id.to_owned())
            .or_insert_with(|| Slot { tunnel: None, events: broadcast::Sender::new(EVENT_BACKLOG) });
        if let Some(old) = slot.tunnel.replace(tunnel.clone()) {
            tracing::info!(node_id, old = old.generation, new = tunnel.generation, "node tunnel replaced");
            old.closed.cancel();
            old.fail_all();
        }
        (tunnel, rx)
    }

    /// Forgets `tunnel` if it is still the current one (a replaced tunnel must not remove its successor).
    fn retire(&self, tunnel: &Tunnel) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&tunnel.node_id)
            && slot.tunnel.as_ref().is_some_and(|t| t.generation == tunnel.generation)
        {
            slot.tunnel = None;
        }
        tunnel.fail_all();
    }

    pub fn current(&self, node_id: &str) -> Option<Arc<Tunnel>> {
        self.slots().get(node_id).and_then(|s| s.tunnel.clone())
    }

    /// Invalidation events of `node_id`, across tunnel generations.
    pub fn subscribe_events(&self, node_id: &str) -> broadcast::Receiver<Arc<str>> {
        self.slots()
            .entry(node_id.to_owned())
            .or_insert_with(|| Slot { tunnel: None, events: broadcast::Sender::new(EVENT_BACKLOG) })
            .events
            .subscribe()
    }

    fn publish_event(&self, node_id: &str, frame: Arc<str>) {
        if let Some(slot) = self.slots().get(node_id) {
            let _ = slot.events.send(frame);
        }
    }

    /// Closes the node's tunnel and drops its slot (the node was deleted or its lease reaped);
    /// relay clients subscribed to its events see the channel close and are closed too.
    pub fn disconnect(&self, node_id: &str) {
        if let Some(slot) = self.slots().remove(node_id)
            && let Some(tunnel) = slot.tunnel
        {
            tunnel.closed.cancel();
            tunnel.fail_all();
        }
    }

    /// Node ids with a connected tunnel.
    pub fn connected(&self) -> usize {
        self.slots().values().filter(|s| s.tunnel.is_some()).count()
    }
}
