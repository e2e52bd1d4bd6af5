//! The FUSE operations, each translated to router calls by path.
//!
//! Attributes and entries are cached by the kernel for [`TTL`]; the router's invalidation
//! events (from the nodes, including host changes) drop them earlier (see `mod.rs`). Reads
//! are up to 1 MiB per request (`max_pages` follows `max_write`/`max_readahead`), and the
//! kernel reads ahead. Every router call is bounded by the client's timeouts, so a dead node
//! yields EIO/ETIMEDOUT to the application, never a hung mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use spiderweb_proto::fs::{Attr, DirEntry, kind};

use super::inodes::{Inodes, join};
use crate::client::CallError;
use crate::router::Router;

/// How long the kernel may cache attributes and entries without hearing from us.
pub const TTL: Duration = Duration::from_secs(10);
/// Largest read/write per request and readahead window.
pub const MAX_IO: u32 = 1 << 20;

pub struct SpiderFs {
    pub router: Arc<Router>,
    pub rt: tokio::runtime::Handle,
    pub inodes: Arc<Mutex<Inodes>>,
    uid: u32,
    gid: u32,
    /// Open file handles per path, so cached node handles are closed with the last one.
    open: Mutex<HashMap<String, u32>>,
    listings: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_fh: AtomicU64,
}

fn errno(e: &CallError) -> Errno {
    Errno::from_i32(e.errno().code())
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 { UNIX_EPOCH + Duration::from_nanos(ns as u64) } else { UNIX_EPOCH }
}

impl SpiderFs {
    pub fn new(router: Arc<Router>, rt: tokio::runtime::Handle, inodes: Arc<Mutex<Inodes>>) -> SpiderFs {
        SpiderFs {
            router,
            rt,
            inodes,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            open: Mutex::default(),
            listings: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.inodes().path(ino.0).filter(|p| !p.contains('\0')).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(join(&self.path(parent)?, name))
    }

    /// The FUSE attributes of a node attribute record. Files appear owned by the mounting
    /// user (the node reports its own uid, which means nothing on this host).
    fn file_attr(&self, ino: u64, a: &Attr) -> FileAttr {
        let kind = match a.k {
            kind::DIR => FileType::Directory,
            kind::SYMLINK => FileType::Symlink,
            _ => FileType::RegularFile,
        };
        FileAttr {
            ino: INodeNo(ino),
            size: a.sz,
            blocks: a.sz.div_ceil(512),
            atime: time(a.at),
            mtime: time(a.mt),
            ctime: time(a.ct),
            crtime: time(a.ct),
            kind,
            perm: (a.m & 0o7777) as u16,
            nlink: a.n,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    fn entry(&self, path: &str, attr: &Attr, reply: ReplyEntry) {
        let ino = self.inodes().looked_up(path, attr.is_dir());
        reply.entry(&TTL, &self.file_attr(ino, attr), Generation(0));
    }

    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn opened(&self, path: &str) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()).entry(path.to_owned()).or_default() += 1;
    }

    fn closed(&self, path: &str) {
        let last = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get_mut(path) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    open.remove(path);
                    true
                }
                None => false,
            }
        };
        if last {
            self.block(self.router.release(path));
        }
    }

    fn getattr_path(&self, path: &str) -> Result<Attr, Errno> {
        self.block(self.router.getattr(path)).map_err(|e| errno(&e))
    }
}

impl Filesystem for SpiderFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.getattr_path(&path) {
            Ok(attr) => self.entry(&path, &attr, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.path(ino).and_then(|p| self.getattr_path(&p));
        match result {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(ino.0, &attr)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The protocol has no chmod/chown/utimes: only the size can change; other requests
        // succeed without effect, as on filesystems that do not store them.
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Some(size) = size
            && let Err(e) = self.block(self.router.truncate(&path, size))
        {
            return reply.error(errno(&e));
        }
        match self.getattr_path(&path) {
            Ok(attr) => reply.attr(&TTL, &self.file_attr(ino.0, &attr)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = self.block(self.router.mkdir(&path)) {
            return reply.error(errno(&e));
        }
        match self.getattr_path(&path) {
            Ok(attr) => self.entry(&path, &attr, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(path) => match self.block(self.router.unlink(&path)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name) {
            Ok(path) => match self.block(self.router.rmdir(&path)) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let (path, target) = match (self.child(parent, name), target.to_str()) {
            (Ok(p), Some(t)) => (p, t),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        if let Err(e) = self.block(self.router.symlink(&path, target)) {
            return reply.error(errno(&e));
        }
        match self.getattr_path(&path) {
            Ok(attr) => self.entry(&path, &attr, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_EXCHANGE / RENAME_NOREPLACE have no protocol equivalent.
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        match self.block(self.router.rename(&from, &to)) {
            Ok(()) => {
                self.inodes().renamed(&from, &to);
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if flags.0 & libc::O_TRUNC != 0
            && let Err(e) = self.block(self.router.truncate(&path, 0))
        {
            return reply.error(errno(&e));
        }
        self.opened(&path);
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self
            .path(ino)
            .and_then(|p| self.block(self.router.read(&p, offset, size.min(MAX_IO))).map_err(|e| errno(&e)));
        match result {
            Ok((data, _)) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result =
            self.path(ino).and_then(|p| self.block(self.router.write(&p, offset, data)).map_err(|e| errno(&e)));
        match result {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        // Writes go straight to the node; there is nothing buffered here to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(path) = self.path(ino) {
            self.closed(&path);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.path(ino).and_then(|p| self.block(self.router.list(&p)).map_err(|e| errno(&e)));
        match result {
            Ok(listing) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.listings.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, listing);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(listing) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut position = offset;
        if position == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            position = 1;
        }
        for (i, ent) in listing.iter().enumerate().skip((position - 1) as usize) {
            let kind = if ent.attr.is_dir() { FileType::Directory } else { FileType::RegularFile };
            // Inode numbers in plain readdir are advisory; lookups assign the real ones.
            if reply.add(INodeNo(u64::MAX), i as u64 + 2, kind, &ent.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listing = {
            let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            match listings.get(&fh.0) {
                Some(l) => l.iter().skip(offset.saturating_sub(2) as usize).cloned().collect::<Vec<_>>(),
                None => return reply.error(Errno::EBADF),
            }
        };
        // Positions: 0 `.`, 1 `..`, then the entries. The kernel neither links nor counts
        // `.`/`..`, so they take no inode reference.
        let dots = crate::router::virtual_dir_attr();
        for (position, name) in [(0u64, "."), (1, "..")] {
            if offset <= position
                && reply.add(ino, position + 1, name, &TTL, &self.file_attr(ino.0, &dots), Generation(0))
            {
                return reply.ok();
            }
        }
        for (i, ent) in listing.iter().enumerate() {
            let position = offset.max(2) + i as u64;
            let path = join(&dir, &ent.name);
            // Each entry returned counts as one kernel lookup, hence `looked_up`; an entry
            // the buffer had no room for is un-counted right away.
            let child = self.inodes().looked_up(&path, ent.attr.is_dir());
            let attr = self.file_attr(child, &ent.attr);
            if reply.add(INodeNo(child), position + 1, &ent.name, &TTL, &attr, Generation(0)) {
                self.inodes().forget(child, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.listings.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let result = self.path(ino).and_then(|p| self.block(self.router.statfs(&p)).map_err(|e| errno(&e)));
        match result {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                s.bsize as u32,
                s.namemax as u32,
                s.frsize as u32,
            ),
            // A directory that only exists in the namespace (above the mount paths).
            Err(_) => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // unified-v2-fs has no readlink: symlinks are visible but cannot be followed through
        // the mount (the node would refuse targets outside the export anyway).
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are decided by the node (and its export policy) on each operation.
        reply.ok();
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // The protocol has no hard links; programs such as git fall back to rename.
        reply.error(Errno::EPERM);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = match (self.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => self.block(self.router.getxattr(&p, n)).map_err(|e| errno(&e)),
            (Err(e), _) => Err(e),
            (_, None) => Err(Errno::EINVAL),
        };
        xattr_reply(result, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let result = self.path(ino).and_then(|p| self.block(self.router.listxattr(&p)).map_err(|e| errno(&e)));
        let packed = result.map(|names| names.iter().flat_map(|n| n.bytes().chain([0])).collect::<Vec<u8>>());
        xattr_reply(packed, size, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = match (self.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => self.block(self.router.setxattr(&p, n, value, flags as u32)).map_err(|e| errno(&e)),
            (Err(e), _) => Err(e),
            (_, None) => Err(Errno::EINVAL),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = match (self.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => self.block(self.router.removexattr(&p, n)).map_err(|e| errno(&e)),
            (Err(e), _) => Err(e),
            (_, None) => Err(Errno::EINVAL),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let exclusive = flags & libc::O_EXCL != 0;
        match self.block(self.router.create(&path, mode & !umask, exclusive)) {
            Ok(attr) => {
                if flags & libc::O_TRUNC != 0
                    && attr.sz > 0
                    && let Err(e) = self.block(self.router.truncate(&path, 0))
                {
                    return reply.error(errno(&e));
                }
                self.opened(&path);
                let ino = self.inodes().looked_up(&path, false);
                let mut attr = attr;
                if flags & libc::O_TRUNC != 0 {
                    attr.sz = 0;
                }
                reply.created(&TTL, &self.file_attr(ino, &attr), Generation(0), FileHandle(0), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// `size == 0` asks for the length; a buffer too small is ERANGE.
fn xattr_reply(result: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}
