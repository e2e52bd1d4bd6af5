//! The operations of the node protocol (§5), one function each.
//!
//! Every operation follows the same order: read and validate its arguments (the spec's
//! messages), ask `policy::export` whether the export allows it (EROFS), validate child names,
//! resolve the node beneath its export root (`resolve`), do the syscall, then queue the
//! invalidation events it causes. Nothing here is async: the connection runs an op to
//! completion and sends the queued events before the reply.
//!
//! Requests naming a node of a synthetic export go to `synthetic_ops` before any of this runs,
//! and handles backed by one are told apart where a handle is used (read, write, lock); the
//! directory path is otherwise untouched by them.
//!
//! Must never: touch a path except beneath an export's root fd, follow a symlink in the final
//! component of a mutating `*at` call, or accept more than `MAX_WRITE` bytes / return more than
//! `MAX_READ` bytes.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use serde::Serialize;
use serde_json::{Value, json};
use spiderweb_policy::export::{self as policy, FsOp};
use spiderweb_proto::fs::{
    self as wire, Args, Attr, DirEntry, Errno, Event, FsError, InvalWhat, ReaddirReply, Statfs, kind, node_id,
};

use super::NodeState;
use super::exports::Export;
use super::handles::{Backing, HandleQuota, NewHandle};
use super::resolve::{open_beneath, open_dir, open_node, os_error};
use super::synthetic_ops;

/// One request, already parsed from its envelope.
pub struct Request<'a> {
    /// The op name without `t_fs_`.
    pub op: &'a str,
    pub tag: u32,
    pub node: Option<u64>,
    pub h: Option<u64>,
    pub payload: Option<&'a Value>,
}

/// Where an op queues its events, and the connection's handle quota.
pub struct Ctx<'a> {
    pub state: &'a NodeState,
    pub quota: &'a Arc<HandleQuota>,
    pub events: Vec<Event>,
    /// Largest read returned / write accepted on this connection (the hello's `max_read` and
    /// `max_write`): `MAX_READ`, less on the tunnel, whose frames the gateway caps.
    pub max_io: u32,
}

/// Runs one op (not `hello`, which the connection handles) and renders its reply frame.
pub fn dispatch(ctx: &mut Ctx<'_>, req: &Request<'_>) -> Result<String, FsError> {
    let args = Args::new(req.op, req.payload)?;
    if let Some(export) = synthetic_ops::target(ctx.state, req, &args) {
        return synthetic_ops::dispatch(ctx, req, &args, export);
    }
    let tag = req.tag;
    let op = req.op;
    macro_rules! reply {
        ($payload:expr) => {
            Ok(wire::render_ok(op, tag, &$payload))
        };
    }
    match op {
        "exports" => reply!(json!({"exports": ctx.state.export_entries()})),
        "lookup" => reply!(json!({"attr": lookup(ctx, need_node(req)?, args.str("name")?)?})),
        "getattr" => reply!(json!({"attr": getattr(ctx, need_node(req)?)?})),
        "readdirp" => reply!(readdirp(ctx, need_node(req)?, &args)?),
        "open" => reply!(open(ctx, need_node(req)?, args.opt_u32("flags")?.unwrap_or(0))?),
        "read" => reply!(read(ctx, need_h(req)?, &args)?),
        "write" => reply!(write(ctx, need_h(req)?, &args, tag)?),
        "close" => {
            ctx.state.handles.close(need_h(req)?)?;
            reply!(json!({}))
        }
        "create" => reply!(create(ctx, need_node(req)?, &args)?),
        "mkdir" => reply!(mkdir(ctx, need_node(req)?, args.str("name")?)?),
        "rmdir" => reply!(remove(ctx, need_node(req)?, args.str("name")?, FsOp::Rmdir)?),
        "unlink" => reply!(remove(ctx, need_node(req)?, args.str("name")?, FsOp::Unlink)?),
        "rename" => reply!(rename(ctx, &args)?),
        "truncate" => reply!(truncate(ctx, need_node(req)?, args.opt_u64("sz")?.unwrap_or(0))?),
        "statfs" => reply!(statfs(ctx, need_node(req)?)?),
        "lock" => reply!(lock(ctx, need_h(req)?, &args)?),
        "symlink" => reply!(symlink(ctx, need_node(req)?, &args)?),
        "setxattr" => reply!(setxattr(ctx, need_node(req)?, &args)?),
        "getxattr" => reply!(getxattr(ctx, need_node(req)?, args.str("name")?)?),
        "listxattr" => reply!(listxattr(ctx, need_node(req)?)?),
        "removexattr" => reply!(removexattr(ctx, need_node(req)?, args.str("name")?)?),
        _ => Err(FsError::new(Errno::Inval, "UnsupportedType")),
    }
}

pub(super) fn need_node(req: &Request<'_>) -> Result<u64, FsError> {
    req.node.ok_or_else(|| FsError::new(Errno::Inval, format!("{} requires node", req.op.to_uppercase())))
}

fn need_h(req: &Request<'_>) -> Result<u64, FsError> {
    req.h.ok_or_else(|| FsError::new(Errno::Inval, format!("{} requires h", req.op.to_uppercase())))
}

/// A node id resolved to its export and remembered path.
struct Located<'s> {
    export: &'s Export,
    rel: PathBuf,
}

impl<'s> Ctx<'s> {
    fn locate(&self, id: u64) -> Result<Located<'s>, FsError> {
        let (index, _) = node_id::decode(id, self.state.exports.len()).ok_or_else(|| FsError::of(Errno::NoEnt))?;
        let entry = self.state.nodes.get(id)?;
        debug_assert_eq!(entry.export, index);
        Ok(Located { export: &self.state.exports[index], rel: entry.rel })
    }

    fn allow(&self, export: &Export, op: FsOp) -> Result<(), FsError> {
        policy::check(op, export.spec.access).map_err(|_| FsError::new(Errno::RoFs, "export is read-only"))
    }

    /// Stats `rel` without following a final symlink and checks it is still node `id`.
    fn stat_node(&self, id: u64, at: &Located<'_>) -> Result<FileStat, FsError> {
        let fd = open_node(&at.export.root, &at.rel)?;
        let st = fstat(&fd).map_err(os_error)?;
        if !node_id::matches_inode(id, st.st_ino) {
            return Err(FsError::of(Errno::NoEnt));
        }
        Ok(st)
    }

    fn attr(&self, export: &Export, st: &FileStat) -> Attr {
        attr_of(node_id::encode(export.index, st.st_ino), st, self.state.uid, self.state.gid)
    }

    /// Remembers a node found at `rel` and, for directories, watches it for host changes.
    fn remember(&self, export: &Export, rel: PathBuf, st: &FileStat) -> Result<Attr, FsError> {
        let attr = self.attr(export, st);
        if attr.is_dir() {
            self.state.watch_dir(export, &rel, attr.id);
        }
        self.state.nodes.remember(attr.id, export.index, rel)?;
        Ok(attr)
    }

    fn inval_dir(&mut self, dir: u64) {
        self.events.push(Event::Dir { dir, dir_gen: None });
    }

    fn inval(&mut self, node: u64, what: InvalWhat, r#gen: Option<u64>) {
        self.events.push(Event::Node { node, what, r#gen });
    }
}

pub(super) fn child_name(name: &str) -> Result<&str, FsError> {
    policy::validate_child_name(name).map_err(|_| FsError::new(Errno::Inval, "invalid child name"))?;
    Ok(name)
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The attribute record `A` of §4.
pub fn attr_of(id: u64, st: &FileStat, uid: u32, gid: u32) -> Attr {
    let k = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => kind::DIR,
        SFlag::S_IFLNK => kind::SYMLINK,
        _ => kind::FILE,
    };
    let mt = ns(st.st_mtime, st.st_mtime_nsec);
    Attr {
        id,
        k,
        m: st.st_mode,
        n: if k == kind::DIR { 2 } else { 1 },
        u: uid,
        g: gid,
        sz: st.st_size.max(0) as u64,
        at: ns(st.st_atime, st.st_atime_nsec),
        mt,
        ct: ns(st.st_ctime, st.st_ctime_nsec),
        r#gen: mt.max(0) as u64,
    }
}

fn lookup(ctx: &Ctx<'_>, parent: u64, name: &str) -> Result<Attr, FsError> {
    let name = child_name(name)?;
    if policy::is_hidden(name, ctx.state.hide_sandbox_dir) {
        return Err(FsError::of(Errno::NoEnt));
    }
    let at = ctx.locate(parent)?;
    let dir = open_dir(&at.export.root, &at.rel)?;
    let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(os_error)?;
    ctx.remember(at.export, at.rel.join(name), &st)
}

fn getattr(ctx: &Ctx<'_>, id: u64) -> Result<Attr, FsError> {
    let at = ctx.locate(id)?;
    let st = ctx.stat_node(id, &at)?;
    Ok(ctx.attr(at.export, &st))
}

fn readdirp(ctx: &Ctx<'_>, id: u64, args: &Args<'_>) -> Result<ReaddirReply, FsError> {
    let cookie = args.opt_u64("cookie")?.unwrap_or(0);
    let max = args.opt_u32("max")?.unwrap_or(wire::READDIR_DEFAULT_MAX).min(wire::READDIR_MAX_CAP) as usize;
    let at = ctx.locate(id)?;
    let listing = open_beneath(&at.export.root, &at.rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0).map_err(|e| {
        if e.errno == Errno::NotDir { FsError::new(Errno::NotDir, "node is not a directory") } else { e }
    })?;
    let dir_fd = listing.try_clone().map_err(|e| FsError::of(Errno::from_os(e.raw_os_error().unwrap_or(5))))?;
    let dir_st = fstat(&dir_fd).map_err(os_error)?;
    if !node_id::matches_inode(id, dir_st.st_ino) {
        return Err(FsError::of(Errno::NoEnt));
    }
    let dir_attr = ctx.attr(at.export, &dir_st);
    let mut names = Vec::new();
    for entry in nix::dir::Dir::from_fd(listing).map_err(os_error)?.into_iter() {
        let entry = entry.map_err(os_error)?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if policy::validate_child_name(name).is_ok() && !policy::is_hidden(name, ctx.state.hide_sandbox_dir) {
            names.push(name.to_owned());
        }
    }
    let total = names.len() as u64 + 2;
    let mut ents = Vec::new();
    let mut position = cookie;
    while position < total && ents.len() < max {
        match position {
            0 => ents.push(DirEntry { name: ".".into(), attr: dir_attr.clone() }),
            1 => {
                let parent_rel = at.rel.parent().map(Path::to_path_buf).unwrap_or_default();
                let parent = open_node(&at.export.root, &parent_rel)
                    .and_then(|fd| fstat(&fd).map_err(os_error))
                    .and_then(|st| ctx.remember(at.export, parent_rel, &st));
                ents.push(DirEntry { name: "..".into(), attr: parent.unwrap_or_else(|_| dir_attr.clone()) });
            }
            n => {
                let name = &names[(n - 2) as usize];
                // An entry removed since the listing was read is skipped, not an error.
                if let Ok(st) = fstatat(&dir_fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    let attr = ctx.remember(at.export, at.rel.join(name), &st)?;
                    ents.push(DirEntry { name: name.clone(), attr });
                }
            }
        }
        position += 1;
    }
    Ok(ReaddirReply { ents, next: position, eof: position >= total, dir_gen: dir_attr.mt.max(0) as u64 })
}

#[derive(Serialize)]
pub(super) struct OpenReply {
    pub h: u64,
    pub caps: OpenCaps,
    pub r#gen: u64,
}

#[derive(Serialize)]
pub(super) struct OpenCaps {
    pub rd: bool,
    pub wr: bool,
}

fn access_flags(readable: bool, writable: bool) -> OFlag {
    match (readable, writable) {
        (true, true) => OFlag::O_RDWR,
        (false, true) => OFlag::O_WRONLY,
        _ => OFlag::O_RDONLY,
    }
}

fn open(ctx: &Ctx<'_>, id: u64, flags: u32) -> Result<OpenReply, FsError> {
    let at = ctx.locate(id)?;
    ctx.allow(at.export, FsOp::Open { flags })?;
    let (readable, writable) = (policy::open_wants_read(flags), policy::open_wants_write(flags));
    let fd = open_beneath(&at.export.root, &at.rel, access_flags(readable, writable), 0)?;
    let st = fstat(&fd).map_err(os_error)?;
    if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
        return Err(FsError::new(Errno::IsDir, "is a directory"));
    }
    let r#gen = ns(st.st_mtime, st.st_mtime_nsec).max(0) as u64;
    let h = ctx.state.handles.insert(
        NewHandle { backing: Backing::File(File::from(fd)), node: id, export: at.export.index, readable, writable },
        ctx.quota,
    )?;
    Ok(OpenReply { h, caps: OpenCaps { rd: readable, wr: writable }, r#gen })
}

#[derive(Serialize)]
struct ReadReply {
    data_b64: String,
    eof: bool,
}

fn read(ctx: &Ctx<'_>, h: u64, args: &Args<'_>) -> Result<ReadReply, FsError> {
    let mut buf = Vec::new();
    let eof = read_into(ctx, h, args, &mut buf)?;
    Ok(ReadReply { data_b64: base64::engine::general_purpose::STANDARD.encode(&buf), eof })
}

/// `t_fs_read` answered with a binary frame (negotiated `binary_data`): the bytes are read
/// straight into the frame after its header.
pub fn read_binary(ctx: &Ctx<'_>, req: &Request<'_>) -> Result<Vec<u8>, FsError> {
    let args = Args::new(req.op, req.payload)?;
    let mut frame = wire::binary::read_reply_header(req.tag, false).to_vec();
    let eof = read_into(ctx, need_h(req)?, &args, &mut frame)?;
    frame[wire::binary::READ_HEADER - 1] = u8::from(eof);
    Ok(frame)
}

/// Appends up to `len` (capped at `ctx.max_io`) bytes at `off` to `buf`; `true` on a short read.
fn read_into(ctx: &Ctx<'_>, h: u64, args: &Args<'_>, buf: &mut Vec<u8>) -> Result<bool, FsError> {
    let off = args.opt_u64("off")?.unwrap_or(0);
    let len = args.opt_u32("len")?.unwrap_or(wire::READ_DEFAULT_LEN).min(ctx.max_io) as usize;
    let handle = ctx.state.handles.get(h)?;
    if !handle.readable {
        return Err(FsError::new(Errno::BadF, "handle not readable"));
    }
    let file = match &handle.backing {
        Backing::File(file) => file,
        Backing::Synthetic(path) => return synthetic_ops::read_into(ctx, handle.export, path, off, len, buf),
    };
    let start = buf.len();
    buf.resize(start + len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[start + filled..], off + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FsError::of(Errno::from_os(e.raw_os_error().unwrap_or(5)))),
        }
    }
    buf.truncate(start + filled);
    Ok(filled < len)
}

fn write(ctx: &mut Ctx<'_>, h: u64, args: &Args<'_>, tag: u32) -> Result<Value, FsError> {
    let off = args.opt_u64("off")?.unwrap_or(0);
    let data = args.b64("data_b64")?;
    write_bytes(ctx, h, off, &data, tag)
}

/// `t_fs_write` (request `tag`) with its data already decoded (JSON base64 or a binary frame).
pub fn write_bytes(ctx: &mut Ctx<'_>, h: u64, off: u64, data: &[u8], tag: u32) -> Result<Value, FsError> {
    if data.len() > ctx.max_io as usize {
        return Err(FsError::new(Errno::Inval, "WRITE exceeds max_write"));
    }
    let handle = ctx.state.handles.get(h)?;
    let file = match &handle.backing {
        Backing::File(file) => file,
        Backing::Synthetic(path) => return synthetic_ops::write(ctx, &handle, path, off, data, tag),
    };
    ctx.allow(&ctx.state.exports[handle.export], FsOp::Write)?;
    if !handle.writable {
        return Err(FsError::new(Errno::BadF, "handle not writable"));
    }
    file.write_all_at(data, off).map_err(|e| FsError::of(Errno::from_os(e.raw_os_error().unwrap_or(5))))?;
    ctx.inval(handle.node, InvalWhat::Data, None);
    Ok(json!({"n": data.len()}))
}

fn create(ctx: &mut Ctx<'_>, parent: u64, args: &Args<'_>) -> Result<Value, FsError> {
    let name = args.str("name")?;
    let mode = args.opt_u32("mode")?.unwrap_or(0o100644);
    let flags = args.opt_u32("flags")?.unwrap_or(2);
    let at = ctx.locate(parent)?;
    ctx.allow(at.export, FsOp::Create)?;
    let name = child_name(name)?;
    let readable = policy::open_wants_read(flags);
    let mut oflags = access_flags(readable, true) | OFlag::O_CREAT | OFlag::O_NOFOLLOW;
    let requested = OFlag::from_bits_truncate(flags as i32);
    oflags |= requested & (OFlag::O_EXCL | OFlag::O_TRUNC);
    let dir = open_dir(&at.export.root, &at.rel)?;
    let fd: OwnedFd = openat(&dir, name, oflags | OFlag::O_CLOEXEC, Mode::from_bits_truncate(mode & 0o7777)).map_err(
        |e| match e {
            nix::Error::EEXIST => FsError::new(Errno::Exist, "path exists"),
            other => os_error(other),
        },
    )?;
    let st = fstat(&fd).map_err(os_error)?;
    let attr = ctx.remember(at.export, at.rel.join(name), &st)?;
    let h = ctx.state.handles.insert(
        NewHandle {
            backing: Backing::File(File::from(fd)),
            node: attr.id,
            export: at.export.index,
            readable,
            writable: true,
        },
        ctx.quota,
    )?;
    ctx.inval_dir(parent);
    ctx.inval(attr.id, InvalWhat::All, Some(attr.r#gen));
    Ok(json!({"attr": attr, "h": h}))
}

fn mkdir(ctx: &mut Ctx<'_>, parent: u64, name: &str) -> Result<Value, FsError> {
    let at = ctx.locate(parent)?;
    ctx.allow(at.export, FsOp::Mkdir)?;
    let name = child_name(name)?;
    let dir = open_dir(&at.export.root, &at.rel)?;
    mkdirat(&dir, name, Mode::from_bits_truncate(0o755)).map_err(os_error)?;
    ctx.inval_dir(parent);
    Ok(json!({}))
}

fn remove(ctx: &mut Ctx<'_>, parent: u64, name: &str, op: FsOp) -> Result<Value, FsError> {
    let at = ctx.locate(parent)?;
    ctx.allow(at.export, op)?;
    let name = child_name(name)?;
    let dir = open_dir(&at.export.root, &at.rel)?;
    let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(os_error)?;
    let flag = if op == FsOp::Rmdir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
    unlinkat(&dir, name, flag).map_err(os_error)?;
    let child = node_id::encode(at.export.index, st.st_ino);
    if st.st_nlink <= 1 || op == FsOp::Rmdir {
        ctx.state.nodes.forget(child);
    }
    ctx.inval_dir(parent);
    ctx.inval(child, InvalWhat::All, None);
    Ok(json!({}))
}

fn rename(ctx: &mut Ctx<'_>, args: &Args<'_>) -> Result<Value, FsError> {
    let old_parent = args.u64("old_parent")?;
    let new_parent = args.u64("new_parent")?;
    let (old_name, new_name) = (args.str("old_name")?, args.str("new_name")?);
    if policy::validate_child_name(old_name).is_err() || policy::validate_child_name(new_name).is_err() {
        return Err(FsError::new(Errno::Inval, "invalid rename child name"));
    }
    let from = ctx.locate(old_parent)?;
    let to = ctx.locate(new_parent)?;
    if from.export.index != to.export.index {
        return Err(FsError::new(Errno::XDev, "cross-export rename is not supported"));
    }
    ctx.allow(from.export, FsOp::Rename)?;
    let old_dir = open_dir(&from.export.root, &from.rel)?;
    let new_dir = open_dir(&to.export.root, &to.rel)?;
    let st = fstatat(&old_dir, old_name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(os_error)?;
    renameat(&old_dir, old_name, &new_dir, new_name).map_err(os_error)?;
    let (old_rel, new_rel) = (from.rel.join(old_name), to.rel.join(new_name));
    ctx.state.nodes.moved(from.export.index, &old_rel, &new_rel);
    let moved = ctx.remember(from.export, new_rel, &st)?;
    ctx.inval_dir(old_parent);
    if new_parent != old_parent {
        ctx.inval_dir(new_parent);
    }
    ctx.inval(moved.id, InvalWhat::All, None);
    Ok(json!({}))
}

fn truncate(ctx: &mut Ctx<'_>, id: u64, size: u64) -> Result<Value, FsError> {
    let at = ctx.locate(id)?;
    ctx.allow(at.export, FsOp::Truncate)?;
    let fd = open_beneath(&at.export.root, &at.rel, OFlag::O_WRONLY | OFlag::O_NOFOLLOW, 0)?;
    let size = i64::try_from(size).map_err(|_| FsError::new(Errno::Inval, "sz too large"))?;
    nix::unistd::ftruncate(&fd, size).map_err(os_error)?;
    ctx.inval(id, InvalWhat::All, None);
    Ok(json!({}))
}

fn statfs(ctx: &Ctx<'_>, id: u64) -> Result<Statfs, FsError> {
    let at = ctx.locate(id)?;
    let fd = open_node(&at.export.root, &at.rel)?;
    let vfs = nix::sys::statvfs::fstatvfs(&fd).map_err(os_error)?;
    Ok(Statfs {
        bsize: vfs.block_size(),
        frsize: vfs.fragment_size(),
        blocks: vfs.blocks(),
        bfree: vfs.blocks_free(),
        bavail: vfs.blocks_available(),
        files: vfs.files(),
        ffree: vfs.files_free(),
        favail: vfs.files_available(),
        namemax: vfs.name_max(),
    })
}

/// `flock` on the handle. With `wait` this blocks; the connection runs it off the runtime.
fn lock(ctx: &Ctx<'_>, h: u64, args: &Args<'_>) -> Result<Value, FsError> {
    let operation = match args.str("kind")? {
        "shared" => libc::LOCK_SH,
        "exclusive" => libc::LOCK_EX,
        "unlock" => libc::LOCK_UN,
        _ => return Err(FsError::new(Errno::Inval, "invalid lock kind")),
    };
    let wait = args.opt_bool("wait")?.unwrap_or(true);
    let handle = ctx.state.handles.get(h)?;
    let file = match &handle.backing {
        Backing::File(file) => file,
        Backing::Synthetic(_) => return synthetic_ops::lock(ctx, &handle),
    };
    let operation = if wait { operation } else { operation | libc::LOCK_NB };
    // SAFETY: flock on a valid fd owned by `handle`, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc != 0 {
        let errno = nix::Error::last();
        return Err(if errno == nix::Error::EWOULDBLOCK {
            FsError::new(Errno::Again, "would block")
        } else {
            os_error(errno)
        });
    }
    Ok(json!({}))
}

/// Longest symlink target accepted (the Linux `PATH_MAX`).
const MAX_SYMLINK_TARGET: usize = 4096;

fn symlink(ctx: &mut Ctx<'_>, parent: u64, args: &Args<'_>) -> Result<Value, FsError> {
    let (name, target) = (args.str("name")?, args.str("target")?);
    let at = ctx.locate(parent)?;
    ctx.allow(at.export, FsOp::Symlink)?;
    let name = child_name(name)?;
    if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains('\0') {
        return Err(FsError::new(Errno::Inval, "invalid symlink target"));
    }
    let dir = open_dir(&at.export.root, &at.rel)?;
    symlinkat(target, &dir, name).map_err(os_error)?;
    ctx.inval_dir(parent);
    Ok(json!({}))
}

/// Largest xattr value accepted or returned (the Linux `XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 65536;

/// An fd on which `f*xattr` works (not `O_PATH`); symlinks are not followed.
fn xattr_fd(ctx: &Ctx<'_>, id: u64) -> Result<OwnedFd, FsError> {
    let at = ctx.locate(id)?;
    let fd = open_beneath(&at.export.root, &at.rel, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK, 0)?;
    let st = fstat(&fd).map_err(os_error)?;
    if !node_id::matches_inode(id, st.st_ino) {
        return Err(FsError::of(Errno::NoEnt));
    }
    Ok(fd)
}

fn xattr_name(name: &str) -> Result<CString, FsError> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::new(Errno::Inval, "invalid xattr name"));
    }
    CString::new(name).map_err(|_| FsError::new(Errno::Inval, "invalid xattr name"))
}

fn last_os_error() -> FsError {
    match nix::Error::last() {
        nix::Error::ENODATA => FsError::new(Errno::NoData, "no data"),
        other => os_error(other),
    }
}

fn setxattr(ctx: &mut Ctx<'_>, id: u64, args: &Args<'_>) -> Result<Value, FsError> {
    let name = xattr_name(args.str("name")?)?;
    let value = args.b64("value_b64")?;
    let flags = args.opt_u32("flags")?.unwrap_or(0);
    if value.len() > MAX_XATTR_VALUE {
        return Err(FsError::new(Errno::Range, "range error"));
    }
    let export = &ctx.state.exports[ctx.locate(id)?.export.index];
    ctx.allow(export, FsOp::Setxattr)?;
    let fd = xattr_fd(ctx, id)?;
    // SAFETY: valid fd, NUL-terminated name, value pointer/length from a live Vec.
    let rc =
        unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags as i32) };
    if rc != 0 {
        return Err(last_os_error());
    }
    ctx.inval(id, InvalWhat::Attr, None);
    Ok(json!({}))
}

fn getxattr(ctx: &Ctx<'_>, id: u64, name: &str) -> Result<Value, FsError> {
    let name = xattr_name(name)?;
    let fd = xattr_fd(ctx, id)?;
    let mut buf = vec![0u8; MAX_XATTR_VALUE];
    // SAFETY: valid fd and name; the buffer is MAX_XATTR_VALUE bytes long.
    let n = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_os_error());
    }
    buf.truncate(n as usize);
    Ok(json!({"value_b64": base64::engine::general_purpose::STANDARD.encode(&buf)}))
}

fn listxattr(ctx: &Ctx<'_>, id: u64) -> Result<Value, FsError> {
    let fd = xattr_fd(ctx, id)?;
    let mut buf = vec![0u8; MAX_XATTR_VALUE];
    // SAFETY: valid fd; the buffer is MAX_XATTR_VALUE bytes long.
    let n = unsafe { libc::flistxattr(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_os_error());
    }
    let names: Vec<String> = buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Ok(json!({"names": names}))
}

fn removexattr(ctx: &mut Ctx<'_>, id: u64, name: &str) -> Result<Value, FsError> {
    let name = xattr_name(name)?;
    let export = &ctx.state.exports[ctx.locate(id)?.export.index];
    ctx.allow(export, FsOp::Removexattr)?;
    let fd = xattr_fd(ctx, id)?;
    // SAFETY: valid fd and NUL-terminated name.
    if unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } != 0 {
        return Err(last_os_error());
    }
    ctx.inval(id, InvalWhat::Attr, None);
    Ok(json!({}))
}
