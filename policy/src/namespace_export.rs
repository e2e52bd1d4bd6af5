//! What a synthetic ("namespace") export allows (spec `fs-node.md` §5.0).
//!
//! The gateway's `/v2/fs` serves, besides real directories, in-memory trees whose shape the
//! gateway owns (`system-meta`, `system-chat`, `system-jobs`). A client may read them and may
//! write the few files the tree marks writable (`system-chat/control/input` submits a chat
//! job); it may never change the tree's shape. Where the spec is silent this module decides,
//! and says why:
//!
//! - a read-only export refuses every mutation with EROFS, exactly as a directory export does
//!   (the spec's rule for read-only exports, §5.3);
//! - `lock` is not implemented for namespace handles (ENOSYS, spec §5.0), nor are symlinks
//!   and extended attributes that would have to be stored somewhere (ENOSYS, like an adapter
//!   operation that a source does not implement, §5);
//! - creating, removing or renaming entries, and writing or truncating a file the tree does
//!   not mark writable, is EACCES: the export is writable, this node is not yours to change.
//!   EACCES (not EPERM) because the spec's errno table gives EACCES the message `access
//!   denied` and EPERM none, and because the refusal depends on the target, not the caller.
//!
//! Truncating a writable file is allowed and changes nothing: a shell redirection
//! (`echo hi > control/input`) truncates before it writes, and the write is what counts.

use crate::export::{Access, FsOp};

/// Why a namespace export refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceDenial {
    /// EROFS `export is read-only`.
    ReadOnly,
    /// EACCES `access denied`: the gateway owns this node.
    NotWritable,
    /// ENOSYS `operation not supported`: namespace sources do not implement this op.
    Unsupported,
}

/// Whether `op` may run on a node of a namespace export with `access`; `writable` is whether
/// the tree marks the target node (the file opened, written or truncated) writable.
pub fn check(op: FsOp, access: Access, writable: bool) -> Result<(), NamespaceDenial> {
    if matches!(op, FsOp::Lock) {
        return Err(NamespaceDenial::Unsupported);
    }
    if access == Access::ReadOnly && op.is_mutation() {
        return Err(NamespaceDenial::ReadOnly);
    }
    match op {
        FsOp::Symlink | FsOp::Setxattr | FsOp::Removexattr => Err(NamespaceDenial::Unsupported),
        FsOp::Create | FsOp::Mkdir | FsOp::Rmdir | FsOp::Unlink | FsOp::Rename => Err(NamespaceDenial::NotWritable),
        FsOp::Write | FsOp::Truncate if !writable => Err(NamespaceDenial::NotWritable),
        FsOp::Open { .. } if op.is_mutation() && !writable => Err(NamespaceDenial::NotWritable),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OPS: [FsOp; 24] = [
        FsOp::Hello,
        FsOp::Exports,
        FsOp::Lookup,
        FsOp::Getattr,
        FsOp::Readdirp,
        FsOp::Open { flags: 0 },
        FsOp::Open { flags: 1 },
        FsOp::Open { flags: 2 },
        FsOp::Open { flags: 3 },
        FsOp::Read,
        FsOp::Write,
        FsOp::Close,
        FsOp::Create,
        FsOp::Mkdir,
        FsOp::Rmdir,
        FsOp::Unlink,
        FsOp::Rename,
        FsOp::Truncate,
        FsOp::Statfs,
        FsOp::Lock,
        FsOp::Symlink,
        FsOp::Setxattr,
        FsOp::Getxattr,
        FsOp::Listxattr,
    ];

    #[test]
    fn read_only_namespace_refuses_every_mutation_with_erofs_and_locks_with_enosys() {
        for op in ALL_OPS.into_iter().chain([FsOp::Removexattr]) {
            for writable in [false, true] {
                let got = check(op, Access::ReadOnly, writable);
                let want = if op == FsOp::Lock {
                    Err(NamespaceDenial::Unsupported)
                } else if op.is_mutation() {
                    Err(NamespaceDenial::ReadOnly)
                } else {
                    Ok(())
                };
                assert_eq!(got, want, "{op:?} writable={writable}");
            }
        }
    }

    #[test]
    fn writable_namespace_allows_only_reads_and_writes_of_writable_files() {
        use NamespaceDenial::*;
        let rw = Access::ReadWrite;
        type Decision = Result<(), NamespaceDenial>;
        let table: &[(FsOp, Decision, Decision)] = &[
            // (op, on a node the tree does not mark writable, on one it does)
            (FsOp::Lookup, Ok(()), Ok(())),
            (FsOp::Getattr, Ok(()), Ok(())),
            (FsOp::Readdirp, Ok(()), Ok(())),
            (FsOp::Open { flags: 0 }, Ok(()), Ok(())),
            (FsOp::Open { flags: 3 }, Ok(()), Ok(())),
            (FsOp::Open { flags: 1 }, Err(NotWritable), Ok(())),
            (FsOp::Open { flags: 2 }, Err(NotWritable), Ok(())),
            (FsOp::Read, Ok(()), Ok(())),
            (FsOp::Write, Err(NotWritable), Ok(())),
            (FsOp::Truncate, Err(NotWritable), Ok(())),
            (FsOp::Close, Ok(()), Ok(())),
            (FsOp::Statfs, Ok(()), Ok(())),
            (FsOp::Getxattr, Ok(()), Ok(())),
            (FsOp::Listxattr, Ok(()), Ok(())),
            (FsOp::Create, Err(NotWritable), Err(NotWritable)),
            (FsOp::Mkdir, Err(NotWritable), Err(NotWritable)),
            (FsOp::Rmdir, Err(NotWritable), Err(NotWritable)),
            (FsOp::Unlink, Err(NotWritable), Err(NotWritable)),
            (FsOp::Rename, Err(NotWritable), Err(NotWritable)),
            (FsOp::Lock, Err(Unsupported), Err(Unsupported)),
            (FsOp::Symlink, Err(Unsupported), Err(Unsupported)),
            (FsOp::Setxattr, Err(Unsupported), Err(Unsupported)),
            (FsOp::Removexattr, Err(Unsupported), Err(Unsupported)),
        ];
        for (op, fixed, writable) in table {
            assert_eq!(check(*op, rw, false), *fixed, "{op:?} on a fixed node");
            assert_eq!(check(*op, rw, true), *writable, "{op:?} on a writable file");
        }
    }
}
