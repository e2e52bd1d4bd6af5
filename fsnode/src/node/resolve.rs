//! Path resolution beneath an export root.
//!
//! Every file the node touches is reached from a held directory fd of its export root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the kernel refuses any walk that would
//! leave the root — through `..`, an absolute symlink, a symlink pointing outside, or a
//! directory swapped for such a symlink while we walk — atomically, with no window between a
//! check and a use. Paths are never compared as strings. Single-component operations
//! (`mkdirat`, `unlinkat`, …) then act on a directory fd obtained this way, with a child name
//! that `policy::export::validate_child_name` has already accepted (no `/`, not `..`).
//!
//! This module must never open anything relative to the process's cwd or by absolute path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno as OsErrno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use spiderweb_proto::fs::{Errno, FsError};

/// Opens `rel` (relative to the export root; empty = the root itself) beneath `root`.
pub fn open_beneath(root: impl AsFd, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, FsError> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how).map_err(os_error)
}

/// The directory at `rel`, as an `O_PATH` fd for `*at` calls.
pub fn open_dir(root: impl AsFd, rel: &Path) -> Result<OwnedFd, FsError> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0).map_err(|e| match e.errno {
        Errno::NotDir => FsError::new(Errno::NotDir, "node is not a directory"),
        _ => e,
    })
}

/// The node at `rel` itself (a symlink is not followed), as an `O_PATH` fd for `fstat`.
pub fn open_node(root: impl AsFd, rel: &Path) -> Result<OwnedFd, FsError> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)
}

/// Maps an OS error to the protocol's errno and message. `EXDEV` from `RESOLVE_BENEATH`
/// means the walk tried to leave the export.
pub fn os_error(err: OsErrno) -> FsError {
    match err {
        OsErrno::EXDEV => FsError::new(Errno::Acces, "path outside export root"),
        OsErrno::ELOOP => FsError::new(Errno::Acces, "too many symbolic links or magic link refused"),
        OsErrno::ENAMETOOLONG => FsError::new(Errno::Inval, "name too long"),
        other => FsError::of(Errno::from_os(other as i32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_fd(dir: &Path) -> OwnedFd {
        nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap()
    }

    #[test]
    fn walks_that_leave_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let export = tempfile::tempdir().unwrap();
        std::fs::create_dir(export.path().join("sub")).unwrap();
        std::fs::write(export.path().join("sub/ok"), "ok").unwrap();
        symlink(outside.path(), export.path().join("out")).unwrap();
        symlink("/etc/passwd", export.path().join("abs")).unwrap();
        symlink("sub/ok", export.path().join("inside")).unwrap();
        let root = root_fd(export.path());

        for escape in ["..", "../x", "sub/../..", "out/secret", "abs"] {
            let err = open_beneath(&root, Path::new(escape), OFlag::O_RDONLY, 0).unwrap_err();
            assert_eq!(err.errno, Errno::Acces, "{escape}: {err}");
        }
        assert!(open_beneath(&root, Path::new("inside"), OFlag::O_RDONLY, 0).is_ok(), "symlink within the export");
        assert!(open_beneath(&root, Path::new(""), OFlag::O_RDONLY, 0).is_ok(), "the root itself");
        assert_eq!(open_dir(&root, Path::new("sub/ok")).unwrap_err().errno, Errno::NotDir);
        assert!(open_node(&root, Path::new("abs")).is_ok(), "O_NOFOLLOW stats the link itself");
    }
}
