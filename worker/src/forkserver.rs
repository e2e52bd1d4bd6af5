//! The fork server (`spiderweb-worker fork-server`, hidden): a started, single-threaded copy of
//! this executable that forks worker processes on request, so a worker does not pay for an
//! exec of this binary.
//!
//! Why: an exec of this executable (the kernel's ELF loading, ld.so's relocations, glibc's
//! CPU-feature and cache detection, whose `cpuid` instructions each trap to the hypervisor on
//! a VM) was a fifth to a third of a `shell_exec true` call's CPU on the 2-vCPU VM of
//! `docs/benchmarks.md`. A fork of a process that has already been through all of it skips
//! that. The forked child then takes exactly the path of an exec'd `spiderweb-worker
//! confined` ([`crate::entry`]): it reads its plan from stdin, confines itself, and only then
//! reads its task. Nothing of the confinement is done, or skipped, by the server.
//!
//! What it must never do:
//! - hold anything of a call: it receives three pipe ends and answers with a pidfd, never a
//!   plan or a task;
//! - start a thread (it forks; a forked child of a multi-threaded process may find a lock
//!   held forever);
//! - serve more than one tenant: forked children share the server's address-space layout
//!   (ASLR is chosen at exec), so each tenant's workers come from a server of their own, and
//!   learning that layout in one's own worker tells nothing about another tenant's workers
//!   (the launcher keys servers by the tenant's ids);
//! - outlive its launcher: it dies with it (parent-death signal) and ends when its socket
//!   closes.
//!
//! Protocol, on the server's stdin (a `SOCK_SEQPACKET` socket to the launcher): the launcher
//! sends one byte with three descriptors (the worker's stdin, stdout and stderr); the server
//! forks and answers one byte with the child's pidfd (a byte alone when the fork failed).
//! One request at a time: [`ForkServer::fork`] holds the socket for the whole exchange, in a
//! task of its own so that a cancelled caller cannot leave a reply for the next one. The server
//! reaps its children, but only after their pidfd is open, so a pidfd can never name a reused
//! pid; the launcher learns of a child's exit from its pidfd (readable once it exited), signals
//! it through it, and keeps the server alive while any child it forked is tracked.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use crate::entry;

/// The server's end of its socket.
const SOCKET_FD: RawFd = 0;
/// Request byte.
const FORK: u8 = b'f';
/// Reply bytes.
const FORKED: u8 = b'+';
const FAILED: u8 = b'-';

/// Why a fork through the server failed (the launcher then execs the worker instead).
#[derive(Debug, thiserror::Error)]
pub enum ForkServerError {
    /// Starting the server process failed.
    #[error("starting the fork server: {0}")]
    Start(io::Error),
    /// The socket to the server failed (the server died or broke the protocol).
    #[error("fork server socket: {0}")]
    Socket(Errno),
    /// The server closed its socket.
    #[error("the fork server exited")]
    Gone,
    /// The server could not fork or open the child's pidfd.
    #[error("the fork server could not fork a worker")]
    ForkFailed,
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// Runs the fork server on its stdin. Never returns. Must be called while the process is
/// single-threaded (first thing in `main`).
pub fn serve() -> ! {
    if prctl::set_pdeathsig(Signal::SIGKILL).is_err() {
        std::process::exit(70);
    }
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    // SIGCHLD is read from a signalfd, so it is blocked; children get their mask reset.
    let reaper = match sigprocmask(SigmaskHow::SIG_BLOCK, Some(&children), None)
        .and_then(|()| SignalFd::with_flags(&children, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK))
    {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("spiderweb-worker fork-server: signalfd: {e}");
            std::process::exit(70);
        }
    };
    // SAFETY: descriptor 0 is the socket the launcher gave this process, open for its lifetime.
    let socket = unsafe { BorrowedFd::borrow_raw(SOCKET_FD) };
    loop {
        let mut fds = [PollFd::new(socket, PollFlags::POLLIN), PollFd::new(reaper.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => std::process::exit(70),
        }
        let request = fds[0].revents().is_some_and(|r| !r.is_empty());
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            while let Ok(Some(_)) = reaper.read_signal() {}
            reap_exited();
        }
        if request {
            // Anything but exactly three descriptors is answered as a failure (and closed).
            match receive(socket) {
                Ok((Some(FORK), stdio)) => answer(socket, stdio.try_into().ok().and_then(fork_worker)),
                Ok((Some(_), _)) => answer(socket, None),
                Ok((None, _)) => reap_all_then_exit(),
                Err(_) => std::process::exit(70),
            }
        }
    }
}

/// The launcher is gone or done: waits for the remaining children (each ends once its
/// launcher's pipes are closed, or by its parent-death signal when this process is killed)
/// and exits, so that no child is left unreaped.
fn reap_all_then_exit() -> ! {
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    std::process::exit(0)
}

/// Reaps every child that has exited (their pidfds are all open by now).
fn reap_exited() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Forks; the child becomes a worker, the parent returns the child's pidfd.
fn fork_worker(stdio: [OwnedFd; 3]) -> Option<OwnedFd> {
    // SAFETY: this process is single-threaded (see `serve`), so the child may run anything.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            match pidfd_open(child) {
                Ok(pidfd) => Some(pidfd),
                Err(_) => {
                    // Unreachable by the launcher: end it (it is not reaped yet, so the pid
                    // is still this child's).
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    None
                }
            }
        }
        Ok(ForkResult::Child) => become_worker(stdio),
        Err(_) => None,
    }
}

/// In the forked child: the state an exec'd `spiderweb-worker confined` starts in (its stdio
/// on the three pipes, no other descriptor, no signal blocked), then the same entry point.
fn become_worker(stdio: [OwnedFd; 3]) -> ! {
    let placed = stdio.iter().enumerate().all(|(target, fd)| {
        // SAFETY: dup2 onto 0..=2 in this single-threaded child; the sources are above 2
        // (0..=2 were taken when they were received), so no source is overwritten.
        unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) >= 0 }
    });
    // SAFETY: closes every descriptor above stderr (the server's socket, its signalfd and the
    // sources just placed); nothing in this process uses them afterwards.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0;
    std::mem::forget(stdio);
    let unblocked = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).is_ok();
    if !(placed && closed && unblocked) {
        std::process::exit(70);
    }
    match entry::read_plan() {
        Ok(plan) => entry::run(&plan),
        Err(e) => {
            eprintln!("spiderweb-worker confined: {e}");
            std::process::exit(2)
        }
    }
}

fn answer(socket: BorrowedFd<'_>, pidfd: Option<OwnedFd>) {
    let result = match &pidfd {
        Some(fd) => send_with_fds(socket, FORKED, &[fd.as_raw_fd()]),
        None => send_with_fds(socket, FAILED, &[]),
    };
    if result.is_err() {
        std::process::exit(70);
    }
}

// ---------------------------------------------------------------------------------------------
// The launcher's side.

/// A running fork server. Dropping the last reference ends it (its socket closes; it reaps
/// what is left and exits); each process it forked holds a reference, so a server outlives
/// its children.
pub struct ForkServer {
    process: std::sync::Mutex<Child>,
    socket: tokio::sync::Mutex<AsyncFd<OwnedFd>>,
}

/// A worker process forked by a server: its pidfd, and the server kept alive while it lives.
pub struct Forked {
    pidfd: AsyncFd<OwnedFd>,
    _server: Arc<ForkServer>,
}

impl ForkServer {
    /// Starts `exe fork-server` with an empty environment (as a worker would be).
    pub fn start(exe: &Path) -> Result<Arc<ForkServer>, ForkServerError> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|errno| ForkServerError::Start(errno.into()))?;
        let process = Command::new(exe)
            .arg("fork-server")
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(ForkServerError::Start)?;
        nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(|errno| ForkServerError::Start(errno.into()))?;
        // SAFETY: an OwnedFd moved into the AsyncFd stays open, and the same, until it drops.
        let socket = unsafe { AsyncFd::register(ours) }.map_err(|e| ForkServerError::Start(e.into_parts().1))?;
        Ok(Arc::new(ForkServer { process: std::sync::Mutex::new(process), socket: tokio::sync::Mutex::new(socket) }))
    }

    /// Closes the server's socket and waits for it to exit (killing it after `grace`), if no
    /// worker it forked is still tracked; otherwise the last worker's drop closes it.
    pub async fn close(self: Arc<Self>, grace: Duration) {
        let Ok(server) = Arc::try_unwrap(self) else { return };
        let ForkServer { process, socket } = server;
        drop(socket);
        let mut process = process.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tokio::time::timeout(grace, process.wait()).await.is_err() {
            let _ = process.start_kill();
            let _ = process.wait().await;
        }
    }

    /// Whether the server process is still running.
    pub fn is_alive(&self) -> bool {
        let mut process = self.process.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        matches!(process.try_wait(), Ok(None))
    }

    /// Forks a worker process whose stdin, stdout and stderr are `stdio`.
    pub async fn fork(self: &Arc<Self>, stdio: [OwnedFd; 3]) -> Result<Forked, ForkServerError> {
        let server = self.clone();
        // A task of its own: once the request is sent, its reply is read whatever happens to
        // the caller, so no reply is ever left for the next request.
        let exchange = tokio::spawn(async move {
            let socket = server.socket.lock().await;
            let raw: Vec<RawFd> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
            loop {
                let mut ready = socket.writable().await.map_err(|e| ForkServerError::Socket(errno_of(&e)))?;
                match ready.try_io(|fd| send_with_fds(fd.as_fd(), FORK, &raw).map_err(io::Error::from)) {
                    Ok(sent) => break sent.map_err(|e| ForkServerError::Socket(errno_of(&e)))?,
                    Err(_would_block) => continue,
                }
            }
            drop(stdio);
            loop {
                let mut ready = socket.readable().await.map_err(|e| ForkServerError::Socket(errno_of(&e)))?;
                match ready.try_io(|fd| receive_reply(fd.as_fd()).map_err(io::Error::from)) {
                    Ok(reply) => break reply.map_err(|e| ForkServerError::Socket(errno_of(&e)))?,
                    Err(_would_block) => continue,
                }
            }
        });
        let pidfd = exchange.await.map_err(|_| ForkServerError::Gone)??;
        // SAFETY: as for the socket above.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| ForkServerError::Socket(errno_of(&e.into_parts().1)))?;
        Ok(Forked { pidfd, _server: self.clone() })
    }
}

impl Forked {
    /// Sends `signal` through the pidfd (never to a reused pid).
    pub fn signal(&self, signal: Signal) {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.get_ref().as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Waits until the process has exited (the pidfd turns readable).
    pub async fn exited(&self) {
        while !self.has_exited() {
            match self.pidfd.readable().await {
                Ok(mut ready) => ready.clear_ready(),
                Err(_) => return,
            }
        }
    }
}

fn errno_of(error: &io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open returns a new descriptor that this process then owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: just returned by the kernel, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn send_with_fds(socket: BorrowedFd<'_>, byte: u8, fds: &[RawFd]) -> Result<(), Errno> {
    let byte = [byte];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&byte)], cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

fn receive_reply(socket: BorrowedFd<'_>) -> Result<Result<OwnedFd, ForkServerError>, Errno> {
    let (byte, mut fds) = receive(socket)?;
    Ok(match (byte, fds.pop()) {
        (None, _) => Err(ForkServerError::Gone),
        (Some(FORKED), Some(pidfd)) if fds.is_empty() => Ok(pidfd),
        _ => Err(ForkServerError::ForkFailed),
    })
}

/// One message: its byte (`None` at end of file) and the descriptors it carried (at most
/// three; the kernel closes any beyond that).
fn receive(socket: BorrowedFd<'_>) -> Result<(Option<u8>, Vec<OwnedFd>), Errno> {
    let mut byte = [0u8];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: descriptors just received are owned by this process and by nothing else.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if message.bytes == 0 {
        return Ok((None, fds));
    }
    Ok((Some(byte[0]), fds))
}
