//! Open file handles (`h`), process-wide as in the spec (§4): allocated from 1 upward, valid
//! until `t_fs_close` even if the opening connection goes away.
//!
//! Bounded twice: per connection ([`MAX_HANDLES_PER_CONNECTION`] open at once, counted by the
//! connection's [`HandleQuota`]) and in total ([`MAX_HANDLES`]), so neither one client nor many
//! short-lived ones can exhaust the node's file descriptors.
//!
//! A handle is backed by an open file of a directory export or by a path of a synthetic one
//! ([`Backing`]); both share one numbering, as the spec has one handle space per node.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use spiderweb_proto::fs::{Errno, FsError};

pub const MAX_HANDLES_PER_CONNECTION: usize = 1024;
pub const MAX_HANDLES: usize = 16384;

/// How many handles one connection holds open.
#[derive(Debug, Default)]
pub struct HandleQuota(AtomicUsize);

/// What a handle reads from and writes to.
#[derive(Debug)]
pub enum Backing {
    /// A file opened beneath a directory export's root.
    File(File),
    /// A file of a synthetic export, by its path below the export root (rendered per read).
    Synthetic(String),
}

#[derive(Debug)]
pub struct Handle {
    pub backing: Backing,
    pub node: u64,
    pub export: usize,
    pub readable: bool,
    pub writable: bool,
    quota: Arc<HandleQuota>,
}

#[derive(Debug)]
pub struct HandleTable {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable { next: AtomicU64::new(1), open: Mutex::new(HashMap::new()) }
    }
}

pub struct NewHandle {
    pub backing: Backing,
    pub node: u64,
    pub export: usize,
    pub readable: bool,
    pub writable: bool,
}

impl HandleTable {
    pub fn insert(&self, new: NewHandle, quota: &Arc<HandleQuota>) -> Result<u64, FsError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_HANDLES {
            return Err(FsError::new(Errno::NoSpc, "too many open handles on this node"));
        }
        if quota.0.load(Ordering::Relaxed) >= MAX_HANDLES_PER_CONNECTION {
            return Err(FsError::new(Errno::NoSpc, "too many open handles on this connection"));
        }
        quota.0.fetch_add(1, Ordering::Relaxed);
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            backing: new.backing,
            node: new.node,
            export: new.export,
            readable: new.readable,
            writable: new.writable,
            quota: Arc::clone(quota),
        };
        open.insert(h, Arc::new(handle));
        Ok(h)
    }

    pub fn get(&self, h: u64) -> Result<Arc<Handle>, FsError> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&h).cloned().ok_or_else(|| FsError::new(Errno::BadF, "unknown handle"))
    }

    pub fn close(&self, h: u64) -> Result<(), FsError> {
        let handle = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&h)
            .ok_or_else(|| FsError::new(Errno::BadF, "unknown handle"))?;
        handle.quota.0.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}
