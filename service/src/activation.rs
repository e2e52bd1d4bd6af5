//! Socket activation: listening sockets passed by the service manager (sd_listen_fds(3)).
//!
//! With `spiderweb-gateway.socket` (and the other `.socket` units) systemd binds the port or
//! Unix socket itself and hands the daemon the listening descriptors from fd 3 on, named by
//! `FileDescriptorName=` (`LISTEN_FDNAMES`). That lets the daemon start without the right to
//! bind (e.g. with `PrivateNetwork=yes` on an activated socket) and keeps the socket open
//! across restarts.
//!
//! [`Activation::take`] claims the descriptors and clears the variables so that no child
//! process inherits them. Each descriptor is checked before use: a unit file that passes a
//! datagram socket, or a Unix socket where a TCP port was expected, is refused with an error
//! naming the descriptor instead of failing later in an obscure way.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// The name systemd gives a descriptor when the unit sets no `FileDescriptorName=`.
const UNNAMED: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` are malformed.
    #[error("malformed socket-activation environment (LISTEN_FDS/LISTEN_FDNAMES): {0}")]
    Environment(io::Error),
    /// The passed descriptor is not a listening stream socket of the expected family.
    #[error("the socket passed by the service manager as {name:?} is not {expected}")]
    WrongKind { name: String, expected: &'static str },
    /// Inspecting a passed descriptor failed.
    #[error("cannot inspect the socket passed as {name:?}: {source}")]
    Inspect { name: String, source: io::Error },
}

/// The descriptors passed to this process, until claimed.
#[derive(Debug, Default)]
pub struct Activation {
    passed: Vec<(OwnedFd, String)>,
}

impl Activation {
    /// Claims the passed descriptors (none when the daemon was not socket-activated).
    ///
    /// # Safety
    /// Clears environment variables: call it before any other thread exists (first thing in
    /// `main`, before a tokio runtime is built).
    pub unsafe fn take() -> Result<Activation, ActivationError> {
        // SAFETY: forwarded to the caller (single-threaded at this point).
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }.map_err(ActivationError::Environment)?;
        let passed = fds
            .map(|(fd, name)| {
                // SAFETY: systemd passed us this descriptor and nothing else in the process
                // owns it; the variables naming it are cleared, so it is claimed once.
                (unsafe { OwnedFd::from_raw_fd(fd) }, name)
            })
            .collect();
        Ok(Activation { passed })
    }

    /// Whether the service manager passed any descriptor.
    pub fn is_empty(&self) -> bool {
        self.passed.is_empty()
    }

    /// The TCP listener passed as `name` (or the only unnamed descriptor), ready for tokio.
    pub fn tcp(&mut self, name: &str) -> Result<Option<std::net::TcpListener>, ActivationError> {
        let Some((fd, name)) = self.claim(name) else { return Ok(None) };
        check(&fd, &name, &[libc::AF_INET, libc::AF_INET6], "a listening TCP socket")?;
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true).map_err(|source| ActivationError::Inspect { name, source })?;
        Ok(Some(listener))
    }

    /// The Unix-socket listener passed as `name` (or the only unnamed descriptor).
    pub fn unix(&mut self, name: &str) -> Result<Option<UnixListener>, ActivationError> {
        let Some((fd, name)) = self.claim(name) else { return Ok(None) };
        check(&fd, &name, &[libc::AF_UNIX], "a listening Unix stream socket")?;
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(true).map_err(|source| ActivationError::Inspect { name, source })?;
        Ok(Some(listener))
    }

    /// Names of passed descriptors nobody claimed; the daemon should warn about them (a
    /// socket unit that listens where nobody answers).
    pub fn unclaimed(&self) -> Vec<&str> {
        self.passed.iter().map(|(_, n)| n.as_str()).collect()
    }

    fn claim(&mut self, name: &str) -> Option<(OwnedFd, String)> {
        let at = self.passed.iter().position(|(_, n)| n == name).or_else(|| {
            let unnamed: Vec<usize> =
                self.passed.iter().enumerate().filter(|(_, (_, n))| n == UNNAMED).map(|(i, _)| i).collect();
            (unnamed.len() == 1).then(|| unnamed[0])
        })?;
        Some(self.passed.remove(at))
    }
}

/// Refuses anything but a listening stream socket of one of `families`.
fn check(fd: &OwnedFd, name: &str, families: &[i32], expected: &'static str) -> Result<(), ActivationError> {
    use std::os::fd::AsRawFd as _;
    let raw = fd.as_raw_fd();
    let inspect = |source| ActivationError::Inspect { name: name.to_owned(), source };
    let domain = sockopt(raw, libc::SO_DOMAIN).map_err(inspect)?;
    let kind = sockopt(raw, libc::SO_TYPE).map_err(inspect)?;
    let listening = sockopt(raw, libc::SO_ACCEPTCONN).map_err(inspect)?;
    if families.contains(&domain) && kind == libc::SOCK_STREAM && listening == 1 {
        Ok(())
    } else {
        Err(ActivationError::WrongKind { name: name.to_owned(), expected })
    }
}

fn sockopt(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, option, (&raw mut value).cast(), &mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(items: Vec<(OwnedFd, &str)>) -> Activation {
        Activation { passed: items.into_iter().map(|(fd, n)| (fd, n.to_owned())).collect() }
    }

    #[test]
    fn descriptors_are_checked_before_use() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut a = passed(vec![(OwnedFd::from(tcp), "http"), (OwnedFd::from(udp), "metrics")]);
        assert!(a.unix("http").is_err(), "a TCP socket is not a Unix listener");
        let mut a2 = passed(vec![(OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").unwrap()), "http")]);
        assert!(a2.tcp("http").unwrap().is_some());
        let err = a.tcp("metrics").unwrap_err();
        assert!(err.to_string().contains("\"metrics\""), "{err}");
        assert!(a.unclaimed().is_empty());
    }

    #[test]
    fn a_single_unnamed_descriptor_serves_any_name_and_absent_names_are_none() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut a = passed(vec![(OwnedFd::from(tcp), UNNAMED)]);
        assert!(a.tcp("metrics-missing-but-unnamed").unwrap().is_some_and(|l| l.local_addr().unwrap() == addr));
        assert!(a.tcp("http").unwrap().is_none());
        assert!(a.is_empty());
    }
}
