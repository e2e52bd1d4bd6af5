//! The node protocol's operations on synthetic exports (spec `fs-node.md` §5.0).
//!
//! Same order as `ops`: arguments, then the policy (`policy::namespace_export`: EROFS on a
//! read-only export, EACCES for anything that would change the tree's shape or a file it
//! does not mark writable, ENOSYS for locks, symlinks and xattrs), then child names, then the
//! node, then the tree call, then the events it causes. Attributes are synthetic: mode from
//! the node's kind and writability, owner = the node process (as for directories, §4), times
//! and `gen` from the tree's mtime.
//!
//! Reads render the file's current content each time (no snapshot held per handle, so open
//! handles cost no memory): the generated files are small (`status.json`) or only ever grow
//! at the end or change once (`log.txt`, `result.txt`), so a client reading in chunks sees one
//! consistent file.
//!
//! Must never: call the tree for a path that a client named only by a string it made up
//! (every path comes from the pseudo-inode table or is a validated child of one), or accept
//! more than the connection's `max_io` in one write.

use serde_json::{Value, json};
use spiderweb_policy::export::{Access, FsOp};
use spiderweb_policy::namespace_export::{self as policy, NamespaceDenial};
use spiderweb_proto::fs::{
    self as wire, Args, Attr, DirEntry, Errno, FsError, InvalWhat, ReaddirReply, Statfs, kind, node_id,
};

use super::NodeState;
use super::handles::{Backing, Handle, NewHandle};
use super::ops::{Ctx, OpenCaps, OpenReply, Request, child_name, need_node};
use super::synthetic::{SyntheticExport, SyntheticNode, SyntheticWrite, components, join, parent};

/// The synthetic export a request is about, if any: by its `node`, or for `rename` by either
/// parent. Handle ops (read, write, close, lock) are routed by the handle's backing instead.
pub fn target<'s>(state: &'s NodeState, req: &Request<'_>, args: &Args<'_>) -> Option<&'s SyntheticExport> {
    if state.synthetic.is_empty() {
        return None;
    }
    let export_of = |id: u64| {
        let (index, _) = node_id::decode(id, state.exports.len() + state.synthetic.len())?;
        state.synthetic_at(index)
    };
    match req.op {
        "read" | "write" | "close" | "lock" | "exports" => None,
        "rename" => {
            let parent = |name| args.opt_u64(name).ok().flatten().and_then(export_of);
            parent("old_parent").or_else(|| parent("new_parent"))
        }
        _ => req.node.and_then(export_of),
    }
}

/// Runs one node-addressed op on a synthetic export and renders its reply.
pub fn dispatch(
    ctx: &mut Ctx<'_>,
    req: &Request<'_>,
    args: &Args<'_>,
    export: &SyntheticExport,
) -> Result<String, FsError> {
    let (op, tag) = (req.op, req.tag);
    let reply = |payload: Value| Ok(wire::render_ok(op, tag, &payload));
    match op {
        "lookup" => {
            let name = args.str("name")?;
            reply(json!({"attr": lookup(ctx, export, need_node(req)?, name)?}))
        }
        "getattr" => {
            let id = need_node(req)?;
            let path = export.path_of(id)?;
            let node = node_at(export, &path)?;
            reply(json!({"attr": attr(ctx.state, export, id, &node)}))
        }
        "readdirp" => reply(serde_json::to_value(readdirp(ctx, export, need_node(req)?, args)?).unwrap_or_default()),
        "open" => {
            let flags = args.opt_u32("flags")?.unwrap_or(0);
            reply(serde_json::to_value(open(ctx, export, need_node(req)?, flags)?).unwrap_or_default())
        }
        "create" | "mkdir" | "rmdir" | "unlink" | "symlink" => {
            let parent = need_node(req)?;
            args.str("name")?;
            if op == "symlink" {
                args.str("target")?;
            }
            export.path_of(parent)?;
            let fs_op = match op {
                "create" => FsOp::Create,
                "mkdir" => FsOp::Mkdir,
                "rmdir" => FsOp::Rmdir,
                "unlink" => FsOp::Unlink,
                _ => FsOp::Symlink,
            };
            Err(refuse(export, fs_op))
        }
        "rename" => rename(ctx.state, export, args),
        "truncate" => {
            let id = need_node(req)?;
            args.opt_u64("sz")?;
            let node = node_at(export, &export.path_of(id)?)?;
            let writable = matches!(node, SyntheticNode::File { writable: true, .. });
            allow(export, FsOp::Truncate, writable)?;
            // Nothing to cut: a writable synthetic file is an input, its content is not kept.
            reply(json!({}))
        }
        "statfs" => {
            export.path_of(need_node(req)?)?;
            reply(serde_json::to_value(STATFS).unwrap_or_default())
        }
        "setxattr" | "removexattr" => {
            export.path_of(need_node(req)?)?;
            args.str("name")?;
            let fs_op = if op == "setxattr" { FsOp::Setxattr } else { FsOp::Removexattr };
            Err(refuse(export, fs_op))
        }
        "getxattr" => {
            export.path_of(need_node(req)?)?;
            args.str("name")?;
            Err(FsError::new(Errno::NoData, "no data"))
        }
        "listxattr" => {
            export.path_of(need_node(req)?)?;
            reply(json!({"names": []}))
        }
        _ => Err(FsError::new(Errno::Inval, "UnsupportedType")),
    }
}

/// A synthetic tree has no storage: the peer's static answer (spec §5, `statfs` details).
const STATFS: Statfs =
    Statfs { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, namemax: 255 };

fn refusal(denial: NamespaceDenial) -> FsError {
    match denial {
        NamespaceDenial::ReadOnly => FsError::new(Errno::RoFs, "export is read-only"),
        NamespaceDenial::Unsupported => FsError::new(Errno::NoSys, "operation not supported"),
        NamespaceDenial::NotWritable => FsError::new(Errno::Acces, "access denied"),
    }
}

fn allow(export: &SyntheticExport, op: FsOp, writable: bool) -> Result<(), FsError> {
    policy::check(op, export.access, writable).map_err(refusal)
}

/// The error for an op that no synthetic tree implements: the policy's reason, and EACCES
/// should the policy ever allow it (there is still nothing that could do it).
fn refuse(export: &SyntheticExport, op: FsOp) -> FsError {
    allow(export, op, false).err().unwrap_or_else(|| FsError::new(Errno::Acces, "access denied"))
}

fn node_at(export: &SyntheticExport, path: &str) -> Result<SyntheticNode, FsError> {
    export.tree.node(&components(path)).ok_or_else(|| FsError::new(Errno::NoEnt, "file not found"))
}

/// The attribute record `A` of a synthetic node.
fn attr(state: &NodeState, export: &SyntheticExport, id: u64, node: &SyntheticNode) -> Attr {
    let read_only = export.access == Access::ReadOnly;
    let (k, m, sz) = match node {
        SyntheticNode::Dir { .. } => (kind::DIR, if read_only { 0o040555 } else { 0o040755 }, 0),
        SyntheticNode::File { content, writable, .. } => {
            let mode = if *writable && !read_only { 0o100644 } else { 0o100444 };
            (kind::FILE, mode, content.len() as u64)
        }
    };
    let mt = node.mtime_ns();
    Attr {
        id,
        k,
        m,
        n: if k == kind::DIR { 2 } else { 1 },
        u: state.uid,
        g: state.gid,
        sz,
        at: mt,
        mt,
        ct: mt,
        r#gen: mt.max(0) as u64,
    }
}

fn lookup(ctx: &Ctx<'_>, export: &SyntheticExport, parent: u64, name: &str) -> Result<Attr, FsError> {
    let name = child_name(name)?;
    let path = join(&export.path_of(parent)?, name);
    let node = node_at(export, &path)?;
    let id = export.id_of(&path)?;
    Ok(attr(ctx.state, export, id, &node))
}

fn readdirp(ctx: &Ctx<'_>, export: &SyntheticExport, id: u64, args: &Args<'_>) -> Result<ReaddirReply, FsError> {
    let cookie = args.opt_u64("cookie")?.unwrap_or(0);
    let max = args.opt_u32("max")?.unwrap_or(wire::READDIR_DEFAULT_MAX).min(wire::READDIR_MAX_CAP) as usize;
    let path = export.path_of(id)?;
    let node = node_at(export, &path)?;
    let SyntheticNode::Dir { children, .. } = &node else {
        return Err(FsError::new(Errno::NotDir, "node is not a directory"));
    };
    let dir_attr = attr(ctx.state, export, id, &node);
    let names: Vec<&String> = children.iter().filter(|n| child_name(n).is_ok()).collect();
    let total = names.len() as u64 + 2;
    let mut ents = Vec::new();
    let mut position = cookie;
    while position < total && ents.len() < max {
        match position {
            0 => ents.push(DirEntry { name: ".".into(), attr: dir_attr.clone() }),
            1 => {
                let up = parent(&path);
                let up_attr = node_at(export, up)
                    .and_then(|n| Ok(attr(ctx.state, export, export.id_of(up)?, &n)))
                    .unwrap_or_else(|_| dir_attr.clone());
                ents.push(DirEntry { name: "..".into(), attr: up_attr });
            }
            n => {
                let name = names[(n - 2) as usize];
                let child = join(&path, name);
                // An entry that went away since the listing was taken is skipped.
                if let Some(node) = export.tree.node(&components(&child)) {
                    let attr = attr(ctx.state, export, export.id_of(&child)?, &node);
                    ents.push(DirEntry { name: name.clone(), attr });
                }
            }
        }
        position += 1;
    }
    Ok(ReaddirReply { ents, next: position, eof: position >= total, dir_gen: dir_attr.mt.max(0) as u64 })
}

fn open(ctx: &Ctx<'_>, export: &SyntheticExport, id: u64, flags: u32) -> Result<OpenReply, FsError> {
    let path = export.path_of(id)?;
    let node = node_at(export, &path)?;
    let writable_node = matches!(node, SyntheticNode::File { writable: true, .. });
    // EROFS first, as on a directory export; then what only a synthetic tree refuses.
    allow(export, FsOp::Open { flags }, true)?;
    if matches!(node, SyntheticNode::Dir { .. }) {
        return Err(FsError::new(Errno::IsDir, "is a directory"));
    }
    allow(export, FsOp::Open { flags }, writable_node)?;
    let (readable, writable) =
        (spiderweb_policy::export::open_wants_read(flags), spiderweb_policy::export::open_wants_write(flags));
    let h = ctx.state.handles.insert(
        NewHandle { backing: Backing::Synthetic(path), node: id, export: export.index, readable, writable },
        ctx.quota,
    )?;
    Ok(OpenReply { h, caps: OpenCaps { rd: readable, wr: writable }, r#gen: node.mtime_ns().max(0) as u64 })
}

/// A read of a synthetic handle: `len` bytes at `off` of the file's current content appended
/// to `buf`; `true` on a short read (end of file).
pub fn read_into(
    ctx: &Ctx<'_>,
    export: usize,
    path: &str,
    off: u64,
    len: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, FsError> {
    let export = ctx.state.synthetic_at(export).ok_or_else(|| FsError::new(Errno::BadF, "invalid handle"))?;
    let SyntheticNode::File { content, .. } = node_at(export, path)? else {
        return Err(FsError::new(Errno::IsDir, "is a directory"));
    };
    let start = usize::try_from(off).unwrap_or(usize::MAX).min(content.len());
    let end = start.saturating_add(len).min(content.len());
    buf.extend_from_slice(&content[start..end]);
    Ok(end - start < len)
}

/// A write to a synthetic handle (size already checked against `max_io`): EROFS on a
/// read-only export, EBADF on a handle opened read-only, then the tree's answer, whose extra
/// fields join `n`.
pub fn write(
    ctx: &mut Ctx<'_>,
    handle: &Handle,
    path: &str,
    off: u64,
    data: &[u8],
    tag: u32,
) -> Result<Value, FsError> {
    let export = ctx.state.synthetic_at(handle.export).ok_or_else(|| FsError::new(Errno::BadF, "invalid handle"))?;
    allow(export, FsOp::Write, true)?;
    if !handle.writable {
        return Err(FsError::new(Errno::BadF, "handle not writable"));
    }
    let mut reply = export.tree.write(&components(path), SyntheticWrite { off, data, tag })?;
    reply.insert("n".into(), data.len().into());
    ctx.events.push(wire::Event::Node { node: handle.node, what: InvalWhat::Data, r#gen: None });
    Ok(Value::Object(reply))
}

/// `lock` on a synthetic handle: not supported (spec §5.0).
pub fn lock(ctx: &Ctx<'_>, handle: &Handle) -> Result<Value, FsError> {
    let export = ctx.state.synthetic_at(handle.export).ok_or_else(|| FsError::new(Errno::BadF, "invalid handle"))?;
    Err(refuse(export, FsOp::Lock))
}

fn rename(state: &NodeState, export: &SyntheticExport, args: &Args<'_>) -> Result<String, FsError> {
    let old_parent = args.u64("old_parent")?;
    let new_parent = args.u64("new_parent")?;
    let (old_name, new_name) = (args.str("old_name")?, args.str("new_name")?);
    if child_name(old_name).is_err() || child_name(new_name).is_err() {
        return Err(FsError::new(Errno::Inval, "invalid rename child name"));
    }
    let count = state.exports.len() + state.synthetic.len();
    let index_of = |id| node_id::decode(id, count).map(|(index, _)| index);
    let (from, to) = (index_of(old_parent), index_of(new_parent));
    if from.is_none() || to.is_none() {
        return Err(FsError::of(Errno::NoEnt));
    }
    if from != to {
        return Err(FsError::new(Errno::XDev, "cross-export rename is not supported"));
    }
    export.path_of(old_parent)?;
    Err(refuse(export, FsOp::Rename))
}
