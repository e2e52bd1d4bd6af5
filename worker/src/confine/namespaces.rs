//! Step 1: new namespaces, and the fork that makes the worker PID 1 of its own PID namespace.
//!
//! Why: a new PID namespace hides every host process and guarantees that everything the tool
//! starts dies when the worker (its init) exits; mount, IPC, UTS and network namespaces cut the
//! worker off from the host's mounts, SysV IPC, hostname, interfaces, loopback services and
//! abstract Unix sockets. The network profile gets its outbound connectivity from pasta
//! ([`super::network`]), never from the host's namespace. When the launcher is not root, a user namespace gives
//! the worker the capabilities it needs to build its mounts, mapped to the launcher's own uid.
//!
//! Order: this runs first, before anything else is touched, in the freshly executed worker.
//! `unshare(CLONE_NEWPID)` only applies to children, so the process forks: the parent stays
//! outside as a relay that only waits and forwards the exit status (it never reads request
//! data), the child continues as PID 1. The supervisor's timeout sends SIGTERM to the relay,
//! which SIGKILLs PID 1, reaps it and exits; the kernel kills the rest of the namespace with
//! its init. As a last resort both ask for SIGKILL when their parent dies. Must run while the
//! process is single-threaded. With the network profile, pasta's helper is forked before
//! `unshare` (it must stay in the host's namespaces) and attached after the id maps are
//! written; the relay kills pasta once PID 1 is gone.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, getegid, geteuid, pipe};

use super::network::{Helper, NetworkError};

/// Why the namespaces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The kernel refused `unshare` (names the namespaces asked for).
    #[error(
        "unshare({flags}) failed: {errno} (kernel without user/PID/mount namespaces, or unprivileged user namespaces disabled)"
    )]
    Unshare {
        /// The namespaces requested.
        flags: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// Writing the user namespace's uid/gid map failed.
    #[error("user namespace id map {file}: {source}")]
    IdMap {
        /// `uid_map`, `gid_map` or `setgroups`.
        file: &'static str,
        /// The write error.
        source: std::io::Error,
    },
    /// `fork` or `prctl` failed.
    #[error("{call} failed: {errno}")]
    Process {
        /// The call.
        call: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The relay died before PID 1 could arm its parent-death signal.
    #[error("the worker's relay process exited during start-up")]
    RelayGone,
    /// The network profile's user-mode networking could not be set up.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// The namespaces of every worker, whatever its profile.
fn flags(user: bool) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWNET;
    if user {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    flags
}

/// Enters new namespaces and forks. Returns only in the child, which is PID 1 of the new PID
/// namespace; the relay parent waits for it and exits with its status. `pasta` (the network
/// profile's helper) connects the new network namespace to the outside.
pub fn enter(pasta: Option<&Path>) -> Result<(), NamespaceError> {
    let (uid, gid) = (geteuid(), getegid());
    let user = !uid.is_root();
    let helper = pasta.map(|pasta| Helper::fork(pasta, user)).transpose()?;
    let flags = flags(user);
    unshare(flags).map_err(|errno| NamespaceError::Unshare { flags: format!("{flags:?}"), errno })?;
    if user {
        map_ids(uid, gid)?;
    }
    let pasta = helper.map(|helper| helper.attach(user)).transpose()?;
    die_with_parent()?;
    // The relay keeps `alive_w` open; PID 1 sees it hang up if the relay died before
    // PID 1 armed its parent-death signal (the one window that signal cannot cover).
    let (alive_r, alive_w) = pipe().map_err(|errno| NamespaceError::Process { call: "pipe", errno })?;
    // The relay takes SIGTERM/SIGCHLD synchronously (sigwait); blocked before the fork so
    // neither can arrive unhandled, unblocked again in PID 1.
    let signals = relay_signals();
    signals.thread_block().map_err(|errno| NamespaceError::Process { call: "sigprocmask", errno })?;
    // SAFETY: the process is single-threaded here (the worker forks before starting any
    // thread), so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|errno| NamespaceError::Process { call: "fork", errno })? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            relay(child, pasta, alive_w, &signals)
        }
        ForkResult::Child => {
            drop(alive_w);
            signals.thread_unblock().map_err(|errno| NamespaceError::Process { call: "sigprocmask", errno })?;
            die_with_parent()?;
            if relay_is_gone(&alive_r) {
                return Err(NamespaceError::RelayGone);
            }
            Ok(())
        }
    }
}

fn die_with_parent() -> Result<(), NamespaceError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|errno| NamespaceError::Process { call: "prctl(PDEATHSIG)", errno })
}

fn relay_is_gone(alive_r: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(alive_r.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Maps the launcher's uid/gid to 0 inside the new user namespace (the only mapping an
/// unprivileged process may write for itself, after giving up `setgroups`).
fn map_ids(uid: Uid, gid: Gid) -> Result<(), NamespaceError> {
    let write = |file: &'static str, text: String| {
        fs::write(format!("/proc/self/{file}"), text).map_err(|source| NamespaceError::IdMap { file, source })
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

fn relay_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    set
}

/// The relay: waits for PID 1 and exits as it did; SIGTERM/SIGINT kill PID 1 first; pasta,
/// which would keep the network namespace alive, is killed and reaped after PID 1. Never
/// returns.
fn relay(child: Pid, pasta: Option<Pid>, alive_w: OwnedFd, signals: &SigSet) -> ! {
    // stdin/stdout belong to PID 1; the relay holds no request data and never reads.
    let code = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break 70,
        }
        if let Ok(Signal::SIGTERM | Signal::SIGINT) = signals.wait() {
            let _ = kill(child, Signal::SIGKILL);
        }
    };
    if let Some(pasta) = pasta {
        let _ = kill(pasta, Signal::SIGKILL);
        let _ = waitpid(pasta, None);
    }
    drop(alive_w);
    std::process::exit(code)
}
