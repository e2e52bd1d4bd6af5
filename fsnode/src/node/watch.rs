//! Changes made on the host, seen through inotify (§6).
//!
//! Every directory the node has served (roots, lookups, listings) is watched, up to
//! [`MAX_WATCHES`]. A thread reads inotify events in batches, turns each into
//! `e_fs_inval_dir{dir}` plus `e_fs_inval{child,all}` when the child still exists, drops
//! duplicates within the batch, and broadcasts them to every connection (including the one
//! whose request caused the change: clients must treat events as hints).
//!
//! Watches are added through `/proc/self/fd/<fd>` of a directory fd resolved beneath the
//! export root, so a path swapped on the host cannot make the node watch outside its exports.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use spiderweb_proto::fs::{Event, InvalWhat, node_id};

use super::NodeState;
use super::exports::Export;
use super::resolve::open_dir;

/// Most directories watched at once; beyond this, changes in further directories are only
/// seen through the node's own operations.
pub const MAX_WATCHES: usize = 8192;

#[derive(Clone, Debug)]
struct WatchedDir {
    export: usize,
    rel: PathBuf,
    id: u64,
}

#[derive(Debug, Default)]
struct Registry {
    by_wd: HashMap<WatchDescriptor, WatchedDir>,
    ids: HashSet<u64>,
}

#[derive(Debug)]
pub struct Watcher {
    watches: Mutex<Watches>,
    registry: std::sync::Arc<Mutex<Registry>>,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ONLYDIR);

impl Watcher {
    pub fn start(state: Weak<NodeState>) -> std::io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let registry = std::sync::Arc::new(Mutex::new(Registry::default()));
        let thread_registry = std::sync::Arc::clone(&registry);
        std::thread::Builder::new().name("fs-node-watch".into()).spawn(move || run(inotify, state, thread_registry))?;
        Ok(Watcher { watches: Mutex::new(watches), registry })
    }

    pub fn watch(&self, export: &Export, rel: &Path, id: u64) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if registry.ids.contains(&id) || registry.ids.len() >= MAX_WATCHES {
            return;
        }
        let Ok(dir) = open_dir(&export.root, rel) else {
            return;
        };
        let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let added = self.watches.lock().unwrap_or_else(|p| p.into_inner()).add(&proc_path, MASK);
        match added {
            Ok(wd) => {
                registry.ids.insert(id);
                registry.by_wd.insert(wd, WatchedDir { export: export.index, rel: rel.to_path_buf(), id });
            }
            Err(e) => tracing::debug!(error = %e, "inotify watch not added"),
        }
    }
}

fn run(mut inotify: Inotify, state: Weak<NodeState>, registry: std::sync::Arc<Mutex<Registry>>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let events = match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "inotify read failed; host changes are no longer watched");
                return;
            }
        };
        let Some(state) = state.upgrade() else { return };
        let mut out: Vec<Event> = Vec::new();
        let mut seen = HashSet::new();
        let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if event.mask.contains(EventMask::IGNORED) {
                if let Some(dir) = registry.by_wd.remove(&event.wd) {
                    registry.ids.remove(&dir.id);
                }
                continue;
            }
            let Some(dir) = registry.by_wd.get(&event.wd).cloned() else {
                continue;
            };
            if seen.insert(Event::Dir { dir: dir.id, dir_gen: None }) {
                out.push(Event::Dir { dir: dir.id, dir_gen: None });
            }
            let Some(name) = event.name.and_then(|n| n.to_str()) else {
                continue;
            };
            let export = &state.exports[dir.export];
            let child = open_dir(&export.root, &dir.rel)
                .ok()
                .and_then(|fd| fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok());
            if let Some(st) = child {
                let node = node_id::encode(dir.export, st.st_ino);
                let inval = Event::Node { node, what: InvalWhat::All, r#gen: None };
                if seen.insert(inval) {
                    out.push(inval);
                }
            }
        }
        drop(registry);
        state.hub.broadcast(None, &out);
    }
}
