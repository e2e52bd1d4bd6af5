//! Step 2: a new root filesystem holding only what a tool may see.
//!
//! Why: Landlock cannot stop `connect()` to a pathname Unix socket (the broker's, D-Bus) and
//! cannot subtract a path from a granted tree. A root built from scratch solves both: it
//! contains read-only binds of the system directories, the workspace at `/workspace` (read-only
//! for the `read-only` profile), a private `/tmp`, a minimal `/dev` and a `/proc` of the
//! worker's own PID namespace, and nothing else, so no host socket or home directory exists
//! in the worker's world. Protected paths inside the workspace are bound read-only onto
//! themselves, and their ancestors onto themselves, so they can be neither written nor renamed
//! away.
//!
//! Order: after the namespaces (needs the private mount namespace and, for `/proc`, to be
//! PID 1), before privileges are dropped (mounting needs CAP_SYS_ADMIN). Must never make a
//! mount visible outside: the first call turns off propagation for the whole tree.

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{chdir, pivot_root};

use crate::plan::{ConfinementPlan, SANDBOX_WORKSPACE};

/// System directories bound read-only when present (symlinks are recreated as symlinks).
const SYSTEM_DIRS: [&str; 8] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"];
/// Device nodes a shell needs; no others exist in the sandbox.
pub const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
/// Where the new root is assembled (a private tmpfs covers it, hiding the host's).
const STAGING: &str = "/tmp";

/// Why the new root could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount call failed.
    #[error("mount {what} on {target}: {errno}")]
    Mount {
        /// What was being mounted.
        what: String,
        /// Where.
        target: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The workspace could not be opened.
    #[error("workspace {path}: {source}")]
    Workspace {
        /// The host path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Creating a directory, file or symlink of the new root failed.
    #[error("preparing {path}: {source}")]
    Prepare {
        /// The path inside the staging root.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A protected path exists but could not be pinned read-only.
    #[error("protected path {path}: {errno}")]
    Protect {
        /// The workspace-relative path.
        path: String,
        /// The error.
        errno: Errno,
    },
}

fn mnt(what: impl Into<String>, target: &Path, errno: Errno) -> MountError {
    MountError::Mount { what: what.into(), target: target.display().to_string(), errno }
}

fn prepare(path: &Path, source: std::io::Error) -> MountError {
    MountError::Prepare { path: path.display().to_string(), source }
}

/// Builds the new root and pivots into it. Afterwards `/` is a read-only tmpfs.
pub fn build_root(plan: &ConfinementPlan) -> Result<(), MountError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| mnt("private propagation", Path::new("/"), e))?;
    // Held before anything is covered: the workspace may live under the staging directory.
    let workspace = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&plan.workspace)
        .map_err(|source| MountError::Workspace { path: plan.workspace.clone(), source })?;

    let root = Path::new(STAGING);
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), root, Some("tmpfs"), nosuid_nodev, Some("mode=0755,size=1m"))
        .map_err(|e| mnt("tmpfs root", root, e))?;

    for dir in SYSTEM_DIRS {
        bind_system_dir(root, dir)?;
    }

    let ws_target = root.join(SANDBOX_WORKSPACE.trim_start_matches('/'));
    make_dir(&ws_target, 0o755)?;
    bind(&fd_path(&workspace), &ws_target, !plan.workspace_writable)?;
    drop(workspace);
    let mut pinned = Vec::new();
    for protected in &plan.protected_paths {
        protect(&ws_target, protected, &mut pinned)?;
    }

    let tmp = root.join("tmp");
    make_dir(&tmp, 0o1777)?;
    let tmp_opts = format!("mode=1777,size={}", plan.limits.tmp_bytes);
    mount(Some("tmpfs"), &tmp, Some("tmpfs"), nosuid_nodev, Some(tmp_opts.as_str()))
        .map_err(|e| mnt("tmpfs /tmp", &tmp, e))?;

    build_dev(root)?;

    let proc_dir = root.join("proc");
    make_dir(&proc_dir, 0o555)?;
    mount(Some("proc"), &proc_dir, Some("proc"), nosuid_nodev | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(|e| mnt("proc", &proc_dir, e))?;

    // pivot_root(".", "."): the old root ends up stacked on the new one; detaching it leaves
    // no path back to the host tree.
    chdir(root).map_err(|e| mnt("chdir", root, e))?;
    pivot_root(".", ".").map_err(|e| mnt("pivot_root", root, e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| mnt("detach old root", root, e))?;
    chdir("/").map_err(|e| mnt("chdir", Path::new("/"), e))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev, None::<&str>)
        .map_err(|e| mnt("read-only root", Path::new("/"), e))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), MountError> {
    fs::DirBuilder::new().mode(mode).create(path).map_err(|e| prepare(path, e))?;
    // The umask must not narrow a sticky world-writable /tmp.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| prepare(path, e.into()))
}

fn bind_system_dir(root: &Path, dir: &str) -> Result<(), MountError> {
    let host = PathBuf::from("/").join(dir);
    let target = root.join(dir);
    match fs::symlink_metadata(&host) {
        Err(_) => Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => {
            let link: OsString = fs::read_link(&host).map_err(|e| prepare(&host, e))?.into();
            std::os::unix::fs::symlink(link, &target).map_err(|e| prepare(&target, e))
        }
        Ok(_) => {
            make_dir(&target, 0o755)?;
            bind(&host, &target, true)
        }
    }
}

/// Bind-mounts `source` on `target`, then (if asked) remounts it read-only, always nosuid and
/// nodev, keeping the flags the kernel locks on mounts inherited into a user namespace.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| mnt(format!("bind {}", source.display()), target, e))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if let Ok(stat) = statvfs(target) {
        let kept = stat.flags();
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if kept.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| mnt(format!("remount {}", source.display()), target, e))
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens a workspace path without following any symlink (a protected path that is a symlink
/// is refused, so it cannot redirect a bind mount outside the workspace).
fn open_no_symlinks(workspace: &Path, relative: &str) -> Result<Option<OwnedFd>, MountError> {
    let dir = fs::File::open(workspace).map_err(|e| prepare(workspace, e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(&dir, relative, how) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(MountError::Protect { path: relative.to_owned(), errno }),
    }
}

/// Pins a protected path: every existing ancestor is bound onto itself (a mount point cannot
/// be renamed or removed), and the path itself is bound onto itself read-only. `pinned`
/// records what is already a mount: binding it again would stack a copy without the
/// read-only submounts made so far (`.git` for `.git/config` hiding `.git/hooks`).
fn protect(workspace: &Path, relative: &str, pinned: &mut Vec<String>) -> Result<(), MountError> {
    let components: Vec<&str> = relative.split('/').collect();
    for depth in 1..=components.len() {
        let prefix = components[..depth].join("/");
        let is_target = depth == components.len();
        if pinned.contains(&prefix) {
            continue;
        }
        pinned.push(prefix.clone());
        let Some(fd) = open_no_symlinks(workspace, &prefix)? else {
            return Ok(());
        };
        let path = fd_path(&fd);
        mount(Some(&path), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|errno| MountError::Protect { path: prefix.clone(), errno })?;
        drop(fd);
        // Reopen to reach the new mount's root, then make only the target read-only.
        let Some(top) = open_no_symlinks(workspace, &prefix)? else {
            return Ok(());
        };
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let flags = if is_target { flags | MsFlags::MS_RDONLY } else { flags };
        mount(None::<&str>, &fd_path(&top), None::<&str>, flags, None::<&str>)
            .map_err(|errno| MountError::Protect { path: prefix.clone(), errno })?;
    }
    Ok(())
}

/// A tmpfs `/dev` with binds of [`DEVICES`] and the usual fd symlinks.
fn build_dev(root: &Path) -> Result<(), MountError> {
    let dev = root.join("dev");
    make_dir(&dev, 0o755)?;
    mount(Some("tmpfs"), &dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=0755,size=64k"))
        .map_err(|e| mnt("tmpfs /dev", &dev, e))?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| prepare(&target, e))?;
        mount(Some(&Path::new("/dev").join(name)), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| mnt(format!("bind /dev/{name}"), &target, e))?;
    }
    for (name, link) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let target = dev.join(name);
        std::os::unix::fs::symlink(link, &target).map_err(|e| prepare(&target, e))?;
    }
    mount(
        None::<&str>,
        &dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| mnt("read-only /dev", &dev, e))
}
