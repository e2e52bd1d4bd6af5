//! The node side of `unified-v2-fs`: exports served over an already-upgraded WebSocket.
//!
//! [`NodeState`] is everything shared by the connections of one node: the opened exports, the
//! node-id and handle tables, the event hub and the host watcher. [`serve_connection`] serves
//! one WebSocket against it. The standalone `spiderweb-fs-node` binary accepts connections
//! itself; the gateway's `/v2/fs` calls the same function with its own upgraded streams.
//!
//! Module map: `exports` (opened roots), `resolve` (openat2 beneath a root), `nodes` and
//! `handles` (bounded tables), `ops` (one function per operation), `events` (fan-out),
//! `watch` (inotify on served directories), `connection` (hello, order of events and
//! replies).

mod connection;
mod events;
mod exports;
mod handles;
mod nodes;
mod ops;
mod resolve;
mod watch;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use spiderweb_policy::export::ExportSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use connection::{TUNNEL_PING, TUNNEL_SILENCE, serve_connection, serve_tunnel};
pub use exports::{Export, ExportError};

/// Default time a connection has to send its hello.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;

/// Default cap on concurrent connections to one node.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub exports: Vec<ExportSpec>,
    /// When set, the hello must carry exactly this `auth_token`.
    pub auth_token: Option<String>,
    pub max_connections: usize,
    /// A connection that has not negotiated within this long is closed, so idle sockets
    /// cannot hold connection slots.
    pub hello_timeout: std::time::Duration,
    /// Hide `.spiderweb-sandbox` (the gateway's local exports, spec §5.3).
    pub hide_sandbox_dir: bool,
    /// Broadcast events only to connections whose hello asked for them and that have sent
    /// nothing but hellos since (the gateway's `/v2/fs`, spec §6); a standalone node
    /// broadcasts to every negotiated connection.
    pub events_to_subscribers_only: bool,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("cannot start the host watcher: {0}")]
    Watcher(std::io::Error),
}

/// State shared by all connections of one node.
#[derive(Debug)]
pub struct NodeState {
    pub exports: Vec<Export>,
    nodes: nodes::NodeTable,
    handles: handles::HandleTable,
    hub: events::EventHub,
    watcher: OnceLock<watch::Watcher>,
    /// SHA-256 of the token hellos must carry: compared in constant time, never logged. Set
    /// at start, or (daemon mode) once paired, before the tunnel serves anything.
    auth_digest: OnceLock<[u8; 32]>,
    connections: Arc<Semaphore>,
    hello_timeout: std::time::Duration,
    hide_sandbox_dir: bool,
    events_to_subscribers_only: bool,
    uid: u32,
    gid: u32,
}

impl NodeState {
    /// Opens the exports. Call [`NodeState::start_watcher`] once the process is confined.
    pub fn new(config: NodeConfig) -> Result<Arc<NodeState>, NodeError> {
        let exports = config
            .exports
            .into_iter()
            .enumerate()
            .map(|(index, spec)| Export::open(index, spec))
            .collect::<Result<Vec<_>, _>>()?;
        let nodes = nodes::NodeTable::default();
        for export in &exports {
            nodes.remember_root(export.root_id(), export.index);
        }
        Ok(Arc::new(NodeState {
            exports,
            nodes,
            handles: handles::HandleTable::default(),
            hub: events::EventHub::default(),
            watcher: OnceLock::new(),
            auth_digest: config.auth_token.map(|t| OnceLock::from(digest(&t))).unwrap_or_default(),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            hello_timeout: config.hello_timeout,
            hide_sandbox_dir: config.hide_sandbox_dir,
            events_to_subscribers_only: config.events_to_subscribers_only,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }))
    }

    /// Starts watching the export roots (and every directory served later) for changes made
    /// on the host; their events go to every connection.
    pub fn start_watcher(self: &Arc<Self>) -> Result<(), NodeError> {
        let watcher = watch::Watcher::start(Arc::downgrade(self)).map_err(NodeError::Watcher)?;
        let _ = self.watcher.set(watcher);
        for export in &self.exports {
            self.watch_dir(export, Path::new(""), export.root_id());
        }
        Ok(())
    }

    /// Requires hellos to carry `token` from now on. `false` (and no change) when a different
    /// token was already required: the node never swaps its token under live connections.
    pub fn require_auth_token(&self, token: &str) -> bool {
        let wanted = digest(token);
        *self.auth_digest.get_or_init(|| wanted) == wanted
    }

    /// A connection slot, or `None` when the node is at its connection limit.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// Events dropped because a connection's queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.hub.dropped()
    }

    fn watch_dir(&self, export: &Export, rel: &Path, id: u64) {
        if let Some(watcher) = self.watcher.get() {
            watcher.watch(export, rel, id);
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
