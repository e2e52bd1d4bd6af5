//! The node ids a node has handed out, and where each one lives.
//!
//! The protocol names files by node id (§4: export index + inode). The node remembers, for
//! every id it has handed out (roots, lookup, readdirp, create, rename), the export and the
//! path relative to the export root; an id it never handed out is ENOENT. Paths are only
//! ever resolved beneath the export's root fd, so a stale or hostile path here can at worst
//! name another file of the same export, and callers compare the inode they find with the id
//! (`node_id::matches_inode`) to detect that.
//!
//! The table is bounded ([`MAX_NODES`]); when full, new ids are refused with ENOSPC rather
//! than growing memory without limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use spiderweb_proto::fs::{Errno, FsError};

/// Most ids remembered at once.
pub const MAX_NODES: usize = 1 << 21;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub export: usize,
    /// Relative to the export root; empty for the root.
    pub rel: PathBuf,
}

#[derive(Debug, Default)]
pub struct NodeTable {
    entries: Mutex<HashMap<u64, NodeEntry>>,
}

impl NodeTable {
    pub fn get(&self, id: u64) -> Result<NodeEntry, FsError> {
        self.lock().get(&id).cloned().ok_or_else(|| FsError::of(Errno::NoEnt))
    }

    pub fn remember(&self, id: u64, export: usize, rel: PathBuf) -> Result<(), FsError> {
        let mut entries = self.lock();
        if entries.len() >= MAX_NODES && !entries.contains_key(&id) {
            return Err(FsError::new(Errno::NoSpc, "node table full"));
        }
        entries.insert(id, NodeEntry { export, rel });
        Ok(())
    }

    /// An export root: always remembered, outside the bound (there is one per export).
    pub fn remember_root(&self, id: u64, export: usize) {
        self.lock().insert(id, NodeEntry { export, rel: PathBuf::new() });
    }

    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// After a rename of `from` to `to` in `export`: the moved node and everything below it.
    pub fn moved(&self, export: usize, from: &Path, to: &Path) {
        for entry in self.lock().values_mut() {
            if entry.export != export {
                continue;
            }
            if let Ok(rest) = entry.rel.strip_prefix(from) {
                entry.rel = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, NodeEntry>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts),
        // so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_moves_descendants_of_the_same_export_only() {
        let table = NodeTable::default();
        table.remember(1, 0, "a".into()).unwrap();
        table.remember(2, 0, "a/b/c".into()).unwrap();
        table.remember(3, 0, "ab".into()).unwrap();
        table.remember(4, 1, "a/x".into()).unwrap();
        table.moved(0, Path::new("a"), Path::new("z/a2"));
        assert_eq!(table.get(1).unwrap().rel, PathBuf::from("z/a2"));
        assert_eq!(table.get(2).unwrap().rel, PathBuf::from("z/a2/b/c"));
        assert_eq!(table.get(3).unwrap().rel, PathBuf::from("ab"), "component-wise prefix, not string prefix");
        assert_eq!(table.get(4).unwrap().rel, PathBuf::from("a/x"));
        assert_eq!(table.get(99).unwrap_err().errno, Errno::NoEnt);
    }
}
