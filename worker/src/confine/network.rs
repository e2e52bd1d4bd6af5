//! Step 1 (network profile only): user-mode networking by `pasta` (Debian package `passt`) for
//! the worker's own network namespace.
//!
//! Why: every worker gets a new network namespace, so nothing listening on the host's loopback
//! (the gateway, databases, other daemons on 127.0.0.1) is reachable from a tool. A tool of the
//! `workspace-write+network` profile still needs outbound TCP/UDP: pasta, running in the host's
//! network namespace, gives the worker's namespace a tap interface (the host's addresses and
//! routes, copied) and turns each outbound connection into an ordinary socket of its own.
//! Configured so that the host's loopback stays out of reach: no port forwarding in either
//! direction (`-t/-u/-T/-U none`, the `-T/-U auto` default would forward the namespace's
//! loopback ports to the host's) and no gateway-to-host-loopback mapping (`--no-map-gw`).
//! Because the namespace carries the host's own addresses, the host's non-loopback addresses
//! are local inside it as well, so daemons bound to the wildcard address are out of reach too.
//!
//! What it must never do: fall back to the host network namespace (a missing pasta is a
//! confinement failure naming the package), give pasta any descriptor but the namespaces it
//! joins and its readiness pipe, or let pasta outlive the worker.
//!
//! Order: [`Helper::fork`] runs before `unshare`, so the helper process stays in the host's
//! namespaces; [`Helper::attach`] runs after `unshare` and the user namespace's id maps, sends
//! the new namespaces' descriptors (`SCM_RIGHTS`: the only way that works for all three ways of
//! running, including a tenant uid whose process is not dumpable) and waits until pasta has
//! configured the interface, so the tool never starts before its network. The helper execs
//! pasta with an empty environment, stdin/stdout on `/dev/null` (stdout is the worker's
//! protocol channel), stderr shared with the worker, and a parent-death signal. The relay
//! (see [`super::namespaces`]) kills pasta when PID 1 exits; pasta would otherwise keep the
//! namespace alive, since it holds its descriptor.
//!
//! Under a root launcher the namespace belongs to the host's user namespace, so pasta must
//! keep CAP_SYS_ADMIN to join it: it runs with `--runas 0:0` (this pasta version drops every
//! capability when it switches to another uid) and confines itself (capabilities, seccomp,
//! its own mount namespace) once attached. Otherwise it runs as the worker's uid and joins the
//! worker's user namespace, which that uid owns.

use std::ffi::OsString;
use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork, pipe};

/// Where pasta is looked for when the launcher's `PATH` is unset.
const DEFAULT_SEARCH_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Descriptor numbers pasta is given: the network namespace, the user namespace, readiness.
const NETNS_FD: RawFd = 3;
const USERNS_FD: RawFd = 4;
const READY_FD: RawFd = 5;

/// Why the worker's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No pasta binary was found by the launcher.
    #[error(
        "the workspace-write+network profile needs pasta for its own network namespace, and none was found in PATH \
         (install the Debian/Ubuntu package `passt`); refusing to share the host's network"
    )]
    PastaMissing,
    /// A system call failed while starting or attaching the helper.
    #[error("starting pasta: {call} failed: {errno}")]
    Call {
        /// The call.
        call: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
    /// pasta cannot use the tun device as the worker's uid.
    #[error(
        "pasta (package `passt`) needs /dev/net/tun readable and writable by the worker's uid (Debian's default mode is \
         0666); only a root supervisor's workers can use the network profile here"
    )]
    TunUnusable,
    /// pasta exited without configuring the namespace.
    #[error(
        "pasta (package `passt`) could not configure the worker's network namespace; its messages are on the worker's stderr"
    )]
    PastaFailed,
}

fn call(name: &'static str) -> impl Fn(Errno) -> NetworkError {
    move |errno| NetworkError::Call { call: name, errno }
}

/// Finds `pasta` in the launcher's `PATH` (the worker itself runs with an empty environment, so
/// the launcher resolves it into the plan).
pub fn find_pasta() -> Option<PathBuf> {
    let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_SEARCH_PATH));
    std::env::split_paths(&search).map(|dir| dir.join("pasta")).find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.is_absolute() && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The helper process, forked in the host's namespaces and waiting for the namespaces to join.
pub struct Helper {
    pid: Pid,
    namespaces: OwnedFd,
    ready: OwnedFd,
}

impl Helper {
    /// Forks the helper before the worker leaves the host's namespaces.
    pub fn fork(pasta: &Path, user_namespace: bool) -> Result<Helper, NetworkError> {
        let (namespaces, helper_end) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .map_err(call("socketpair"))?;
        let (ready, ready_w) = pipe().map_err(call("pipe"))?;
        // SAFETY: the worker is single-threaded until it has confined itself.
        match unsafe { fork() }.map_err(call("fork"))? {
            ForkResult::Parent { child } => Ok(Helper { pid: child, namespaces, ready }),
            ForkResult::Child => {
                drop((namespaces, ready));
                let error = exec_pasta(pasta, user_namespace, &helper_end, ready_w);
                eprintln!("spiderweb-worker: {error}");
                std::process::exit(71)
            }
        }
    }

    /// Hands the worker's new namespaces to the helper and waits until pasta has configured
    /// them. Returns pasta's pid, which the relay kills when the worker ends.
    pub fn attach(self, user_namespace: bool) -> Result<Pid, NetworkError> {
        let open = |path: &str| {
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(call("open(/proc/self/ns)"))
        };
        let netns = open("/proc/self/ns/net")?;
        let userns = if user_namespace { Some(open("/proc/self/ns/user")?) } else { None };
        let mut fds = vec![netns.as_raw_fd()];
        fds.extend(userns.as_ref().map(AsRawFd::as_raw_fd));
        let byte = [0u8];
        sendmsg::<()>(
            self.namespaces.as_raw_fd(),
            &[IoSlice::new(&byte)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(call("sendmsg"))?;
        drop((netns, userns, self.namespaces));
        // pasta writes its pid and a newline to the readiness pipe once the interface is
        // configured (and may keep the pipe open); end of file first means it exited.
        let mut ready = std::fs::File::from(self.ready);
        let mut byte = [0u8];
        loop {
            match ready.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => return Ok(self.pid),
                Ok(1) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ if tun_unusable() => return Err(NetworkError::TunUnusable),
                _ => return Err(NetworkError::PastaFailed),
            }
        }
    }
}

/// Whether this process (pasta's uid) lacks read-write access to the tun device.
fn tun_unusable() -> bool {
    use nix::unistd::{AccessFlags, access};
    access("/dev/net/tun", AccessFlags::R_OK | AccessFlags::W_OK).is_err()
}

/// In the helper: receives the namespaces, puts them at fixed descriptor numbers and execs
/// pasta. Returns only on failure.
fn exec_pasta(pasta: &Path, user_namespace: bool, from_worker: &OwnedFd, ready_w: OwnedFd) -> NetworkError {
    if let Err(errno) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return NetworkError::Call { call: "prctl(PDEATHSIG)", errno };
    }
    let received = match receive_fds(from_worker) {
        Ok(fds) if fds.len() == 1 + usize::from(user_namespace) => fds,
        Ok(_) => return NetworkError::Call { call: "recvmsg (namespace descriptors)", errno: Errno::EPROTO },
        Err(e) => return e,
    };
    let mut targets = vec![(received[0].as_raw_fd(), NETNS_FD)];
    if user_namespace {
        targets.push((received[1].as_raw_fd(), USERNS_FD));
    }
    targets.push((ready_w.as_raw_fd(), READY_FD));
    if let Err(e) = place_fds(&targets) {
        return e;
    }
    if !user_namespace {
        // SAFETY: an unused slot between the placed descriptors; nothing may sit there.
        unsafe { libc::close(USERNS_FD) };
    }
    let mut command = Command::new(pasta);
    command
        .args(["-f", "-q", "--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw"])
        .arg("--netns")
        .arg(format!("/proc/self/fd/{NETNS_FD}"))
        .arg("-P")
        .arg(format!("/proc/self/fd/{READY_FD}"))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if user_namespace {
        command.arg("--userns").arg(format!("/proc/self/fd/{USERNS_FD}"));
    } else {
        command.args(["--runas", "0:0"]);
    }
    let error = command.exec();
    NetworkError::Call { call: "execve(pasta)", errno: Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO)) }
}

fn receive_fds(socket: &OwnedFd) -> Result<Vec<OwnedFd>, NetworkError> {
    let mut byte = [0u8];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(call("recvmsg"))?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(call("recvmsg"))? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: descriptors just received are owned by this process and by nothing else.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(fds)
}

/// Moves each descriptor to its target number (inheritable), then closes every other
/// descriptor above stderr, so pasta inherits exactly these.
fn place_fds(targets: &[(RawFd, RawFd)]) -> Result<(), NetworkError> {
    // First out of the way (above every target), then into place: a source may sit on
    // another entry's target number.
    let mut moved = Vec::new();
    for &(source, target) in targets {
        let high = nix::fcntl::fcntl(
            // SAFETY: `source` is open for the duration of this call.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(source) },
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64),
        )
        .map_err(call("fcntl(F_DUPFD)"))?;
        moved.push((high, target));
    }
    for (high, target) in moved {
        // SAFETY: dup2 onto a fixed number in this single-threaded child about to exec;
        // whatever was there is replaced on purpose. dup2's copy is not close-on-exec.
        if unsafe { libc::dup2(high, target) } < 0 {
            return Err(NetworkError::Call { call: "dup2", errno: Errno::last() });
        }
    }
    let first_free = READY_FD as u32 + 1;
    // SAFETY: closes descriptors nothing in this process uses any more (the child execs next).
    if unsafe { libc::syscall(libc::SYS_close_range, first_free, u32::MAX, 0u32) } != 0 {
        return Err(NetworkError::Call { call: "close_range", errno: Errno::last() });
    }
    Ok(())
}
