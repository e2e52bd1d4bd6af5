//! FUSE inode numbers ↔ paths of the router's namespace.
//!
//! The kernel names files by inode number; the router by path (so that a file keeps working
//! when it is served by another endpoint of its failover group, or by a restarted node with
//! new node ids). Numbers are allocated here, counted by kernel lookups and dropped on
//! `forget`; rename moves a path and everything below it.

use std::collections::HashMap;

pub const ROOT: u64 = 1;

#[derive(Debug)]
struct Entry {
    path: String,
    lookups: u64,
    is_dir: bool,
}

#[derive(Debug)]
pub struct Inodes {
    next: u64,
    by_ino: HashMap<u64, Entry>,
    by_path: HashMap<String, u64>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Inodes { next: ROOT + 1, by_ino: HashMap::new(), by_path: HashMap::new() };
        inodes.by_ino.insert(ROOT, Entry { path: "/".into(), lookups: 1, is_dir: true });
        inodes.by_path.insert("/".into(), ROOT);
        inodes
    }
}

/// `parent` + `/` + `name`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") }
}

impl Inodes {
    pub fn path(&self, ino: u64) -> Option<String> {
        self.by_ino.get(&ino).map(|e| e.path.clone())
    }

    pub fn ino(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The inode of `path`, counting one kernel lookup.
    pub fn looked_up(&mut self, path: &str, is_dir: bool) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.lookups += 1;
                e.is_dir = is_dir;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, Entry { path: path.to_owned(), lookups: 1, is_dir });
        self.by_path.insert(path.to_owned(), ino);
        ino
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            let path = e.path.clone();
            self.by_ino.remove(&ino);
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            }
        }
    }

    /// `from` (and everything below it) is now `to`; an inode previously at `to` is detached.
    pub fn renamed(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<(u64, String)> = self
            .by_ino
            .iter()
            .filter(|(_, e)| e.path == from || e.path.starts_with(&prefix))
            .map(|(ino, e)| (*ino, format!("{to}{}", &e.path[from.len()..])))
            .collect();
        if let Some(old) = self.by_path.remove(to)
            && let Some(e) = self.by_ino.get_mut(&old)
        {
            // Still referenced by the kernel but no longer reachable by name.
            e.path = format!("{to}\0replaced-{old}");
        }
        for (ino, new_path) in moved {
            if let Some(e) = self.by_ino.get_mut(&ino) {
                self.by_path.remove(&e.path);
                e.path = new_path.clone();
                self.by_path.insert(new_path, ino);
            }
        }
    }

    /// Names of the known non-directory children of `dir`. Directories are left out: dropping
    /// a directory's dentry detaches it from every process whose cwd it is (`getcwd` then
    /// fails), so directory entries only expire with their TTL.
    pub fn file_children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir == "/" { "/".to_owned() } else { format!("{dir}/") };
        self.by_path
            .iter()
            .filter(|(_, ino)| self.by_ino.get(ino).is_some_and(|e| !e.is_dir))
            .filter_map(|(path, _)| {
                let name = path.strip_prefix(&prefix)?;
                (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_forget_and_rename() {
        let mut t = Inodes::default();
        let a = t.looked_up("/m/a", false);
        let b = t.looked_up("/m/a/b", false);
        assert_eq!(t.looked_up("/m/a", false), a);
        let x = t.looked_up("/m/x", false);
        t.looked_up("/m/dir", true);
        t.renamed("/m/a", "/m/x");
        assert_eq!(t.path(a).as_deref(), Some("/m/x"));
        assert_eq!(t.path(b).as_deref(), Some("/m/x/b"));
        assert_eq!(t.ino("/m/x"), Some(a));
        assert!(t.path(x).unwrap().contains('\0'), "the replaced inode is detached");
        assert_eq!(t.file_children("/m"), vec!["x".to_owned()], "directories are left out");
        t.forget(a, 1);
        assert_eq!(t.path(a).as_deref(), Some("/m/x"), "one lookup left");
        t.forget(a, 1);
        assert_eq!(t.path(a), None);
        assert_eq!(t.ino("/m/x"), None);
        t.forget(ROOT, 10);
        assert_eq!(t.path(ROOT).as_deref(), Some("/"));
    }
}
