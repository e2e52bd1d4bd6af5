//! Synthetic ("namespace") exports: in-memory trees that the embedding process serves next to
//! its directory exports (spec `fs-node.md` §5.0).
//!
//! Why: the gateway's `/v2/fs` also exports `system-meta`, `system-chat` and `system-jobs`,
//! whose files are generated from the gateway's state (a chat write submits a job; a job
//! directory shows the job). The node protocol, handles, events and node ids stay this
//! crate's; what the files contain and what a write does is the embedder's, behind
//! [`SyntheticTree`]. The standalone `spiderweb-fs-node` has none (it has no runtime): only an
//! embedder that calls [`super::NodeState::with_synthetic_exports`] serves them.
//!
//! Node ids follow §4: the export's index (after all directory exports) in the top 16 bits,
//! and a pseudo-inode allocated here per path (root = 1) in the low 48. A path keeps its
//! pseudo-inode while it exists; the table is bounded ([`MAX_SYNTHETIC_NODES`] per export) and,
//! when full, drops paths the tree no longer has before refusing with ENOSPC.
//!
//! Must never: touch the host filesystem (there is no fd here, and the sandbox of a node is
//! built from directory exports only), block in a tree call (they run on the connection's
//! reader), or hand out the same pseudo-inode for two paths.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use spiderweb_policy::export::Access;
use spiderweb_proto::fs::{Errno, ExportCaps, ExportEntry, FsError, node_id};

/// Source kind of a synthetic export (spec §5.3).
pub const SOURCE_KIND: &str = "namespace";

/// What a namespace export supports: no symlinks, xattrs or locks; the embedder pushes
/// invalidations for generated files that change (`native_watch`).
pub const CAPS: ExportCaps =
    ExportCaps { native_watch: true, case_sensitive: true, symlink: false, xattr: false, locks: false, statfs: true };

/// Pseudo-inodes remembered per synthetic export at once.
pub const MAX_SYNTHETIC_NODES: usize = 1 << 16;

/// The pseudo-inode of every synthetic export's root.
const ROOT_INODE: u64 = 1;

/// One node of a synthetic tree as the embedder describes it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntheticNode {
    /// A directory and the names of its children, in listing order.
    Dir { children: Vec<String>, mtime_ns: i64 },
    /// A file and its current content. `writable` files accept `t_fs_write` (handed to
    /// [`SyntheticTree::write`]); the others are read-only whatever the export's access.
    File { content: Vec<u8>, writable: bool, mtime_ns: i64 },
}

impl SyntheticNode {
    pub fn mtime_ns(&self) -> i64 {
        match self {
            SyntheticNode::Dir { mtime_ns, .. } | SyntheticNode::File { mtime_ns, .. } => *mtime_ns,
        }
    }
}

/// One `t_fs_write` to a writable synthetic file.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticWrite<'a> {
    pub off: u64,
    pub data: &'a [u8],
    /// The request's tag (a chat submit derives its correlation id from it).
    pub tag: u32,
}

/// An in-memory tree served as an export. Paths are the components below the export's root
/// (empty = the root); every component is a valid child name.
///
/// Calls run on a connection's reader, in request order: they must not block (a chat submit
/// only queues the job). Errors are protocol errors (errno and message) sent to the client.
pub trait SyntheticTree: Send + Sync {
    /// The node at `path`, or `None` when there is none.
    fn node(&self, path: &[&str]) -> Option<SyntheticNode>;

    /// Whether `path` exists; cheaper than [`SyntheticTree::node`] where rendering is costly.
    fn exists(&self, path: &[&str]) -> bool {
        self.node(path).is_some()
    }

    /// Handles a write to a file that [`SyntheticTree::node`] marked writable. The reply is
    /// `{"n": <bytes>}` plus the fields returned here.
    fn write(&self, path: &[&str], write: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError>;
}

/// A synthetic export as the embedder declares it.
pub struct SyntheticSpec {
    pub name: String,
    pub access: Access,
    /// The `desc` of its `r_fs_exports` entry.
    pub desc: String,
    pub tree: Arc<dyn SyntheticTree>,
}

/// A synthetic export being served.
pub struct SyntheticExport {
    /// Position in the node's export list (after the directory exports).
    pub index: usize,
    pub name: String,
    pub access: Access,
    desc: String,
    pub tree: Arc<dyn SyntheticTree>,
    inodes: Mutex<PseudoInodes>,
}

impl fmt::Debug for SyntheticExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyntheticExport").field("index", &self.index).field("name", &self.name).finish()
    }
}

impl SyntheticExport {
    pub fn new(index: usize, spec: SyntheticSpec) -> SyntheticExport {
        SyntheticExport {
            index,
            name: spec.name,
            access: spec.access,
            desc: spec.desc,
            tree: spec.tree,
            inodes: Mutex::new(PseudoInodes::default()),
        }
    }

    pub fn read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    pub fn root_id(&self) -> u64 {
        node_id::encode(self.index, ROOT_INODE)
    }

    /// The `r_fs_exports` entry.
    pub fn entry(&self) -> ExportEntry {
        ExportEntry {
            name: self.name.clone(),
            root: self.root_id(),
            ro: self.read_only(),
            desc: self.desc.clone(),
            source_kind: SOURCE_KIND.into(),
            source_id: format!("{SOURCE_KIND}:{}", self.name),
            caps: CAPS,
        }
    }

    /// The path of a node id this export handed out (ENOENT otherwise).
    pub fn path_of(&self, id: u64) -> Result<String, FsError> {
        let inode = id & !(u64::MAX << 48);
        if inode == ROOT_INODE {
            return Ok(String::new());
        }
        self.lock().by_inode.get(&inode).cloned().ok_or_else(|| FsError::new(Errno::NoEnt, "file not found"))
    }

    /// The node id of `path` (joined with `/`; empty = root), allocating its pseudo-inode.
    pub fn id_of(&self, path: &str) -> Result<u64, FsError> {
        if path.is_empty() {
            return Ok(self.root_id());
        }
        let mut inodes = self.lock();
        if let Some(inode) = inodes.by_path.get(path) {
            return Ok(node_id::encode(self.index, *inode));
        }
        if inodes.by_path.len() >= MAX_SYNTHETIC_NODES {
            inodes.retain(|path| self.tree.exists(&components(path)));
            if inodes.by_path.len() >= MAX_SYNTHETIC_NODES {
                return Err(FsError::new(Errno::NoSpc, "node table full"));
            }
        }
        Ok(node_id::encode(self.index, inodes.insert(path)))
    }

    /// The node id of `path` if one was handed out (nobody can have cached anything else).
    pub fn known_id(&self, path: &str) -> Option<u64> {
        if path.is_empty() {
            return Some(self.root_id());
        }
        self.lock().by_path.get(path).map(|inode| node_id::encode(self.index, *inode))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PseudoInodes> {
        // Every update is a pair of inserts or removes under the lock; a panic between them
        // leaves at worst one path without a reverse entry, which only makes it ENOENT.
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A path split into its components (`""` is the root: no components).
pub fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// `parent/name`, or `name` below the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") }
}

/// The parent of a path (the root is its own parent).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Path ↔ pseudo-inode of one export. Inodes are never reused (a 48-bit counter), so an id a
/// client cached for a path that went away can never name another path.
#[derive(Debug)]
struct PseudoInodes {
    by_path: HashMap<String, u64>,
    by_inode: HashMap<u64, String>,
    next: u64,
}

impl Default for PseudoInodes {
    fn default() -> Self {
        PseudoInodes { by_path: HashMap::new(), by_inode: HashMap::new(), next: ROOT_INODE + 1 }
    }
}

impl PseudoInodes {
    fn insert(&mut self, path: &str) -> u64 {
        let inode = self.next;
        self.next += 1;
        self.by_path.insert(path.to_owned(), inode);
        self.by_inode.insert(inode, path.to_owned());
        inode
    }

    fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let by_inode = &mut self.by_inode;
        self.by_path.retain(|path, inode| {
            let kept = keep(path);
            if !kept {
                by_inode.remove(inode);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with one file, `kept`, and (while `everything` is set) any other path too.
    struct Tree {
        everything: std::sync::atomic::AtomicBool,
    }

    impl SyntheticTree for Tree {
        fn node(&self, path: &[&str]) -> Option<SyntheticNode> {
            let present =
                path.is_empty() || path == ["kept"] || self.everything.load(std::sync::atomic::Ordering::SeqCst);
            present.then(|| SyntheticNode::File { content: Vec::new(), writable: false, mtime_ns: 0 })
        }

        fn write(&self, _: &[&str], _: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError> {
            Err(FsError::of(Errno::Acces))
        }
    }

    fn export() -> (SyntheticExport, Arc<Tree>) {
        let tree = Arc::new(Tree { everything: true.into() });
        let spec =
            SyntheticSpec { name: "t".into(), access: Access::ReadWrite, desc: "test".into(), tree: tree.clone() };
        (SyntheticExport::new(2, spec), tree)
    }

    #[test]
    fn ids_follow_the_spec_encoding_and_stay_stable_per_path() {
        let (export, _) = export();
        assert_eq!(export.root_id(), (3 << 48) | 1, "third export, pseudo-inode 1");
        let a = export.id_of("a").unwrap();
        assert_eq!(a >> 48, 3);
        assert_eq!(export.id_of("a").unwrap(), a, "same path, same id");
        let b = export.id_of("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(export.path_of(b).unwrap(), "b");
        assert_eq!(export.path_of(export.root_id()).unwrap(), "");
        assert_eq!(export.known_id("a"), Some(a));
        assert_eq!(export.known_id("never"), None, "known_id allocates nothing");
        assert_eq!(export.path_of((3 << 48) | 999).unwrap_err().errno, Errno::NoEnt);
    }

    #[test]
    fn a_full_table_drops_vanished_paths_and_never_reuses_an_inode() {
        let (export, tree) = export();
        for n in 0..MAX_SYNTHETIC_NODES {
            export.id_of(&format!("f{n}")).unwrap();
        }
        assert_eq!(export.id_of("one-more").unwrap_err().errno, Errno::NoSpc, "full, and every path still exists");
        // Now only `kept` exists: the sweep drops the f* paths.
        tree.everything.store(false, std::sync::atomic::Ordering::SeqCst);
        let old = export.known_id("f0").unwrap();
        let kept = export.id_of("kept").unwrap();
        assert!(kept > old, "inodes are not reused");
        assert_eq!(export.known_id("f0"), None);
        assert_eq!(export.path_of(old).unwrap_err().errno, Errno::NoEnt);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(components(""), Vec::<&str>::new());
        assert_eq!(components("a/b"), ["a", "b"]);
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(parent("a/b"), "a");
        assert_eq!(parent("a"), "");
        assert_eq!(parent(""), "");
    }
}
