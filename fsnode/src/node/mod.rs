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
//! replies), `synthetic` (in-memory exports an embedder serves beside the directories, spec
//! §5.0) and `synthetic_ops` (the operations on them).
//!
//! Export indexes (the top 16 bits of node ids) number the directory exports first, then the
//! synthetic ones; the sandbox and the watcher only ever see the directory exports.

mod connection;
mod events;
mod exports;
mod handles;
mod nodes;
mod ops;
mod resolve;
pub mod synthetic;
mod synthetic_ops;
mod watch;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use spiderweb_policy::export::ExportSpec;
use spiderweb_proto::fs::{Event, ExportCaps, ExportEntry, InvalWhat};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use connection::{TUNNEL_PING, TUNNEL_SILENCE, serve_connection, serve_tunnel};
pub use exports::{Export, ExportError};
pub use synthetic::{SyntheticNode, SyntheticSpec, SyntheticTree, SyntheticWrite};

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
    #[error("two exports are named {0:?}")]
    DuplicateExport(String),
}

/// A change of a synthetic export's generated state, by path below its root (`""` = root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntheticChange {
    /// A file's content (and so its size and mtime) changed.
    Content(String),
    /// A directory's listing changed (an entry appeared or went away).
    Listing(String),
}

/// State shared by all connections of one node.
#[derive(Debug)]
pub struct NodeState {
    /// The directory exports (indexes `0..exports.len()`).
    pub exports: Vec<Export>,
    /// The synthetic exports (indexes from `exports.len()` on); none on a standalone node.
    pub synthetic: Vec<synthetic::SyntheticExport>,
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
        Self::with_synthetic_exports(config, Vec::new())
    }

    /// [`NodeState::new`], also serving `synthetic` in-memory exports after the directories
    /// (the gateway's `system-*` exports). Export names must be unique across both.
    pub fn with_synthetic_exports(
        config: NodeConfig,
        synthetic: Vec<SyntheticSpec>,
    ) -> Result<Arc<NodeState>, NodeError> {
        let mut names = std::collections::HashSet::new();
        for name in config.exports.iter().map(|e| &e.name).chain(synthetic.iter().map(|s| &s.name)) {
            if !names.insert(name.as_str()) {
                return Err(NodeError::DuplicateExport(name.clone()));
            }
        }
        let exports = config
            .exports
            .into_iter()
            .enumerate()
            .map(|(index, spec)| Export::open(index, spec))
            .collect::<Result<Vec<_>, _>>()?;
        let synthetic = synthetic
            .into_iter()
            .enumerate()
            .map(|(i, spec)| synthetic::SyntheticExport::new(exports.len() + i, spec))
            .collect();
        let nodes = nodes::NodeTable::default();
        for export in &exports {
            nodes.remember_root(export.root_id(), export.index);
        }
        Ok(Arc::new(NodeState {
            exports,
            synthetic,
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

    /// The `r_fs_exports` entries: directory exports, then synthetic ones.
    pub fn export_entries(&self) -> Vec<ExportEntry> {
        self.exports.iter().map(Export::entry).chain(self.synthetic.iter().map(|s| s.entry())).collect()
    }

    /// Whether every export's source supports what `cap` reads (false without exports), for
    /// the hello's capabilities (spec §3: the AND over all exports).
    fn all_exports_support(&self, cap: impl Fn(&ExportCaps) -> bool) -> bool {
        let any = !self.exports.is_empty() || !self.synthetic.is_empty();
        any && (self.exports.is_empty() || cap(&exports::CAPS)) && (self.synthetic.is_empty() || cap(&synthetic::CAPS))
    }

    /// The synthetic export at export index `index`, if that index is one.
    fn synthetic_at(&self, index: usize) -> Option<&synthetic::SyntheticExport> {
        index.checked_sub(self.exports.len()).and_then(|i| self.synthetic.get(i))
    }

    /// Tells the connections that want events that generated files of synthetic export
    /// `export` changed, so that mounted clients drop what they cached. Paths no client was
    /// ever given an id for are skipped (nobody can have cached them). Like every broadcast,
    /// this never waits: a connection with a full queue misses the events.
    pub fn synthetic_changed(&self, export: &str, changes: &[SyntheticChange]) {
        let Some(export) = self.synthetic.iter().find(|s| s.name == export) else {
            return;
        };
        let events: Vec<Event> = changes
            .iter()
            .filter_map(|change| match change {
                SyntheticChange::Content(path) => {
                    export.known_id(path).map(|node| Event::Node { node, what: InvalWhat::All, r#gen: None })
                }
                SyntheticChange::Listing(path) => export.known_id(path).map(|dir| Event::Dir { dir, dir_gen: None }),
            })
            .collect();
        self.hub.broadcast(None, &events);
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
