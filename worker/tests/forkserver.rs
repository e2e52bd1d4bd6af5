//! The fork server's socket protocol against the real `spiderweb-worker fork-server`: a bad
//! request is refused and the server keeps serving, a forked child is a worker that reads its
//! plan from the pipes it was given (and refuses a bad one), and the server leaves when its
//! launcher does, reaping what it forked.

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};

fn send(socket: &OwnedFd, byte: u8, fds: &[RawFd]) {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&[byte])], cmsgs, MsgFlags::empty(), None).unwrap();
}

/// The reply byte and the descriptors it carried.
fn reply(socket: &OwnedFd) -> (u8, Vec<OwnedFd>) {
    let mut byte = [0u8];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    assert_eq!(message.bytes, 1, "the server answers every request");
    (byte[0], fds)
}

fn exited(pidfd: &OwnedFd, within: Duration) -> bool {
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(pidfd), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::try_from(within).unwrap()), Ok(1))
}

#[test]
fn bad_requests_are_refused_and_a_forked_worker_takes_the_confined_path() {
    require_root();
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
    let mut server = Command::new(WORKER)
        .arg("fork-server")
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Too few descriptors, or an unknown request: refused, nothing forked, still serving.
    let (_, one) = UnixStream::pair().unwrap();
    send(&ours, b'f', &[one.as_raw_fd()]);
    let (byte, fds) = reply(&ours);
    assert_eq!((byte, fds.len()), (b'-', 0), "one descriptor instead of three");
    send(&ours, b'x', &[]);
    assert_eq!(reply(&ours).0, b'-', "unknown request byte");

    // A well-formed request: a pidfd back; the child is a worker waiting for its plan.
    let (mut plan_w, plan_r) = UnixStream::pair().unwrap();
    let (stdout_r, stdout_w) = UnixStream::pair().unwrap();
    let (mut stderr_r, stderr_w) = UnixStream::pair().unwrap();
    send(&ours, b'f', &[plan_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()]);
    let (byte, mut fds) = reply(&ours);
    assert_eq!((byte, fds.len()), (b'+', 1), "a pidfd for the forked worker");
    let pidfd = fds.pop().unwrap();
    drop((plan_r, stdout_w, stderr_w));
    assert!(!exited(&pidfd, Duration::ZERO), "the worker waits for its plan");
    // A bad plan: the worker says so on its stderr and exits without confining or running.
    plan_w.write_all(&[0, 0, 0, 5, b'{', b'"', b'x', b'"', b'}']).unwrap();
    assert!(exited(&pidfd, Duration::from_secs(10)), "the worker exits after a bad plan");
    let mut stderr = String::new();
    stderr_r.read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("bad plan"), "{stderr}");
    drop(stdout_r);

    // The launcher goes: the server reaps what it forked and exits on its own.
    drop(ours);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            assert!(status.success(), "the fork server exits cleanly at end of input: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the fork server outlived its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}
