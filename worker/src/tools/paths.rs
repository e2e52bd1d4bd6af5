//! Resolution of tool paths beneath the workspace.
//!
//! Every path a model gives is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to the held `/workspace` descriptor: the kernel resolves `..` and symlinks during
//! the walk and refuses any step that leaves the workspace, atomically, so a symlink swapped
//! in mid-operation cannot redirect the open. No path is ever compared as a string, except
//! that the sandbox's own absolute spelling `/workspace/...` is accepted as a synonym for the
//! relative path (the kernel still resolves the rest). Landlock backs this up.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use spiderweb_proto::worker::FailureCode;

use super::ToolError;
use crate::plan::SANDBOX_WORKSPACE;

/// Longest path accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// The spec's path syntax rules (legacy-v1 §6.3), then the relative form to hand to openat2.
pub fn relative(path: &str) -> Result<&str, ToolError> {
    if path.is_empty() {
        return Err(ToolError::invalid("missing required parameter: path"));
    }
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(ToolError::invalid("path is too long or contains NUL"));
    }
    if path.starts_with('~') {
        return Err(ToolError::new(FailureCode::PermissionDenied, "home directory references are not allowed"));
    }
    if path.starts_with('-') {
        return Err(ToolError::new(FailureCode::PermissionDenied, "paths may not start with '-'"));
    }
    let inside = path.strip_prefix(SANDBOX_WORKSPACE).filter(|rest| rest.is_empty() || rest.starts_with('/'));
    Ok(match inside {
        Some(rest) => match rest.trim_start_matches('/') {
            "" => ".",
            rest => rest,
        },
        None => path,
    })
}

/// Opens `path` beneath the workspace.
pub fn open(workspace: &OwnedFd, path: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, ToolError> {
    open_at(workspace, relative(path)?, flags, mode)
}

/// Opens an already-relative path beneath `dir` (the workspace or a directory inside it).
pub fn open_at(dir: &impl AsFd, relative: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, ToolError> {
    open_at_raw(dir, relative, flags, mode).map_err(os_error)
}

/// As [`open_at`], keeping the errno for callers that treat some errors as outcomes
/// (`ENOENT` before creating a directory, `EAGAIN`/`ENXIO` of a non-blocking open).
pub fn open_at_raw(dir: &impl AsFd, relative: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(dir, relative, how) {
            Err(Errno::EAGAIN | Errno::EINTR) if !flags.contains(OFlag::O_NONBLOCK) => continue,
            other => return other,
        }
    }
}

/// Whether a non-blocking open or I/O failed only because the other end is not ready.
pub fn would_block(errno: Errno) -> bool {
    matches!(errno, Errno::EAGAIN | Errno::ENXIO)
}

/// Maps an OS error to the spec's failure codes and names.
pub fn os_error(errno: Errno) -> ToolError {
    match errno {
        Errno::EXDEV | Errno::ELOOP => ToolError::new(FailureCode::PermissionDenied, "path resolves outside workspace"),
        Errno::EACCES | Errno::EPERM | Errno::EROFS => {
            ToolError::new(FailureCode::PermissionDenied, format!("AccessDenied: {}", errno.desc()))
        }
        other => ToolError::new(FailureCode::ExecutionFailed, error_name(other)),
    }
}

/// The error names of the original implementation (Zig error set names).
pub fn error_name(errno: Errno) -> String {
    let name = match errno {
        Errno::ENOENT => "FileNotFound",
        Errno::EISDIR => "IsDir",
        Errno::ENOTDIR => "NotDir",
        Errno::EEXIST => "PathAlreadyExists",
        Errno::ENOSPC | Errno::EDQUOT => "NoSpaceLeft",
        Errno::EFBIG => "FileTooBig",
        Errno::ENAMETOOLONG => "NameTooLong",
        Errno::EMFILE | Errno::ENFILE => "ProcessFdQuotaExceeded",
        Errno::EIO => "InputOutput",
        Errno::ENXIO | Errno::ENODEV => "NoDevice",
        Errno::ETXTBSY => "FileBusy",
        other => return format!("Unexpected: {}", other.desc()),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_syntax_rules() {
        let table: &[(&str, Result<&str, FailureCode>)] = &[
            ("a.txt", Ok("a.txt")),
            ("src/../a.txt", Ok("src/../a.txt")),
            ("/workspace", Ok(".")),
            ("/workspace/", Ok(".")),
            ("/workspace/src/a.rs", Ok("src/a.rs")),
            ("/workspacex/a", Ok("/workspacex/a")),
            ("/etc/passwd", Ok("/etc/passwd")),
            ("", Err(FailureCode::InvalidParams)),
            ("~/.ssh/id_rsa", Err(FailureCode::PermissionDenied)),
            ("-rf", Err(FailureCode::PermissionDenied)),
            ("a\0b", Err(FailureCode::InvalidParams)),
        ];
        for (input, want) in table {
            assert_eq!(relative(input).map_err(|e| e.code), *want, "{input:?}");
        }
        assert!(relative(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
    }
}
