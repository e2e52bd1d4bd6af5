//! The negative lookup cache (spec §9.3): names a node said do not exist, per directory, so
//! that programs probing for many missing files (build tools, `$PATH`-like searches, git)
//! do not cost a network round trip each time.
//!
//! An entry lives [`NEGATIVE_TTL`]; it is dropped earlier when the directory changes: an
//! `e_fs_inval_dir` for it (including changes made on the node's host, seen by its watcher),
//! or a mutation this router makes in it (create, mkdir, symlink, rename into it). Directories
//! are keyed by (endpoint, node id), as the events name them. The cache never holds more than
//! [`MAX_ENTRIES`] names: when full, expired entries go first, then everything (it only saves
//! round trips; forgetting is always correct).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long "does not exist" is believed without news from the node.
pub const NEGATIVE_TTL: Duration = Duration::from_millis(15_000);
/// Most names remembered, over all directories and endpoints.
pub const MAX_ENTRIES: usize = 65_536;

/// (endpoint id, directory node id).
type DirKey = (usize, u64);

#[derive(Debug, Default)]
pub struct NegativeCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    dirs: HashMap<DirKey, HashMap<String, Instant>>,
    len: usize,
}

impl Inner {
    fn remove_dir(&mut self, key: &DirKey) {
        if let Some(names) = self.dirs.remove(key) {
            self.len -= names.len();
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        let mut len = 0;
        self.dirs.retain(|_, names| {
            names.retain(|_, at| now.duration_since(*at) < NEGATIVE_TTL);
            len += names.len();
            !names.is_empty()
        });
        self.len = len;
    }
}

impl NegativeCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` in `dir` is known not to exist (counts a hit when it is).
    pub fn is_missing(&self, ep: usize, dir: u64, name: &str) -> bool {
        self.is_missing_at(ep, dir, name, Instant::now())
    }

    fn is_missing_at(&self, ep: usize, dir: u64, name: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        let Some(names) = inner.dirs.get_mut(&(ep, dir)) else {
            return false;
        };
        let Some(at) = names.get(name).copied() else {
            return false;
        };
        if now.duration_since(at) < NEGATIVE_TTL {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        names.remove(name);
        let empty = names.is_empty();
        inner.len -= 1;
        if empty {
            inner.dirs.remove(&(ep, dir));
        }
        false
    }

    /// Remembers that `name` in `dir` does not exist.
    pub fn insert(&self, ep: usize, dir: u64, name: &str) {
        self.insert_at(ep, dir, name, Instant::now());
    }

    fn insert_at(&self, ep: usize, dir: u64, name: &str, now: Instant) {
        let mut inner = self.lock();
        if inner.len >= MAX_ENTRIES {
            inner.purge_expired(now);
            if inner.len >= MAX_ENTRIES {
                inner.dirs.clear();
                inner.len = 0;
            }
        }
        if inner.dirs.entry((ep, dir)).or_default().insert(name.to_owned(), now).is_none() {
            inner.len += 1;
        }
    }

    /// The directory changed: forget all its names.
    pub fn forget_dir(&self, ep: usize, dir: u64) {
        self.lock().remove_dir(&(ep, dir));
    }

    /// `name` was just created in `dir` (or may have been).
    pub fn forget_name(&self, ep: usize, dir: u64, name: &str) {
        let mut inner = self.lock();
        let Some(names) = inner.dirs.get_mut(&(ep, dir)) else {
            return;
        };
        if names.remove(name).is_some() {
            let empty = names.is_empty();
            inner.len -= 1;
            if empty {
                inner.dirs.remove(&(ep, dir));
            }
        }
    }

    /// The endpoint reconnected or went away: its node ids mean nothing any more.
    pub fn forget_endpoint(&self, ep: usize) {
        let mut inner = self.lock();
        let keys: Vec<DirKey> = inner.dirs.keys().filter(|(e, _)| *e == ep).copied().collect();
        for key in keys {
            inner.remove_dir(&key);
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_the_ttl_then_forgets() {
        let cache = NegativeCache::default();
        let t0 = Instant::now();
        cache.insert_at(0, 7, "missing.h", t0);
        assert!(cache.is_missing_at(0, 7, "missing.h", t0 + Duration::from_secs(14)));
        assert!(!cache.is_missing_at(0, 7, "other.h", t0), "only the name looked up");
        assert!(!cache.is_missing_at(1, 7, "missing.h", t0), "per endpoint");
        assert!(!cache.is_missing_at(0, 8, "missing.h", t0), "per directory");
        assert_eq!(cache.hits(), 1);
        assert!(!cache.is_missing_at(0, 7, "missing.h", t0 + NEGATIVE_TTL), "expired at 15 s");
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn invalidation_by_directory_name_and_endpoint() {
        let cache = NegativeCache::default();
        for name in ["a", "b"] {
            cache.insert(0, 1, name);
            cache.insert(0, 2, name);
            cache.insert(1, 1, name);
        }
        cache.forget_name(0, 1, "a");
        assert!(!cache.is_missing(0, 1, "a") && cache.is_missing(0, 1, "b"));
        cache.forget_dir(0, 1);
        assert!(!cache.is_missing(0, 1, "b"));
        assert!(cache.is_missing(0, 2, "a"), "other directories untouched");
        cache.forget_endpoint(0);
        assert!(!cache.is_missing(0, 2, "a"));
        assert!(cache.is_missing(1, 1, "a"), "other endpoints untouched");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn size_is_bounded() {
        let cache = NegativeCache::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES {
            cache.insert_at(0, (i % 100) as u64, &format!("n{i}"), t0);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // Full of live entries: starts over rather than grow.
        cache.insert_at(0, 1, "one-more", t0);
        assert_eq!(cache.len(), 1);
        for i in 0..MAX_ENTRIES - 1 {
            cache.insert_at(0, 2, &format!("old{i}"), t0);
        }
        // Full again, but everything but the newest is expired: only expired entries go.
        cache.insert_at(0, 3, "new", t0 + NEGATIVE_TTL);
        assert!(cache.len() <= 2, "{}", cache.len());
        assert!(cache.is_missing_at(0, 3, "new", t0 + NEGATIVE_TTL));
    }
}
