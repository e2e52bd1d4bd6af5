//! Running one daemon of `spiderweb up`: start it, wait for `READY=1`, restart it when it
//! crashes, stop it on request.
//!
//! Why it exists: `up` is a tiny service manager for three daemons. Readiness is the daemons'
//! own sd_notify message: each child gets its own datagram socket as `NOTIFY_SOCKET`, so
//! `READY=1` (sent once the daemon serves) is exact and needs no polling.
//!
//! Ordering: the notification socket is bound before the child starts, so no message is lost.
//! A child runs in its own process group, so a Ctrl-C at the terminal reaches `up` alone and
//! `up` decides the order of shutdown; it also gets `PR_SET_PDEATHSIG`, so a killed `up` does
//! not leave daemons behind. Stopping is SIGTERM, then SIGKILL to the whole group after
//! [`STOP_GRACE`].
//!
//! What it must never do: restart without bound. A child that fails before its first
//! readiness is fatal (it is a configuration problem, not a crash); later crashes are
//! restarted with exponential backoff, and more than [`MAX_RESTARTS`] within
//! [`RESTART_WINDOW`] gives up.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a daemon may take to send `READY=1`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon may drain after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Restarts allowed within [`RESTART_WINDOW`] before giving up.
pub const MAX_RESTARTS: usize = 5;
/// The window [`MAX_RESTARTS`] counts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The first restart's delay; each further crash in the window doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest notification datagram read.
const NOTIFY_BUF: usize = 4096;

/// One daemon to run.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// Its binary's name, for messages (`spiderweb-broker`).
    pub name: &'static str,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its whole environment; `None` inherits `up`'s (only for the broker, which holds keys).
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Where its `NOTIFY_SOCKET` is bound.
    pub notify_socket: PathBuf,
}

/// What a supervised child reports to `up`.
#[derive(Clone, Debug)]
pub enum Report {
    /// It sent `READY=1` (first start or after a restart).
    Ready {
        /// The daemon's name.
        name: &'static str,
        /// Its pid.
        pid: u32,
        /// The `STATUS=` it sent with `READY=1`, if any.
        status: Option<String>,
    },
}

/// Why supervising a daemon ended.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot bind the notification socket {path}: {source}")]
    Notify { path: PathBuf, source: std::io::Error },
    #[error("cannot start {name} ({program}): {source}")]
    Spawn { name: &'static str, program: PathBuf, source: std::io::Error },
    #[error("{name} exited before it was ready ({status}); see its messages above")]
    ExitedBeforeReady { name: &'static str, status: String },
    #[error("{name} did not report ready within {} s", READY_TIMEOUT.as_secs())]
    NotReady { name: &'static str },
    #[error(
        "{name} keeps crashing ({MAX_RESTARTS} restarts within {} s, last: {status}); giving up",
        RESTART_WINDOW.as_secs()
    )]
    CrashLoop { name: &'static str, status: String },
}

/// Runs `spec` until `stop` is cancelled (then stops it and returns `Ok`), or until it cannot
/// be kept running.
pub async fn supervise(
    spec: ChildSpec,
    stop: CancellationToken,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<(), SuperviseError> {
    let _ = std::fs::remove_file(&spec.notify_socket);
    let notify = UnixDatagram::bind(&spec.notify_socket)
        .map_err(|source| SuperviseError::Notify { path: spec.notify_socket.clone(), source })?;
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut first = true;
    loop {
        let mut child = spawn(&spec)?;
        let pid = child.id().unwrap_or_default();
        let ready = tokio::select! {
            ready = wait_ready(&spec, &notify, &mut child) => ready,
            () = stop.cancelled() => {
                stop_child(&mut child).await;
                return Ok(());
            }
        };
        let status = match ready {
            Ok(status) => {
                let _ = reports.send(Report::Ready { name: spec.name, pid, status });
                first = false;
                tokio::select! {
                    exit = child.wait() => describe(exit),
                    () = stop.cancelled() => {
                        stop_child(&mut child).await;
                        return Ok(());
                    }
                }
            }
            Err(e) if first => {
                stop_child(&mut child).await;
                return Err(e);
            }
            Err(e) => {
                stop_child(&mut child).await;
                e.to_string()
            }
        };
        kill_group(pid);
        let now = Instant::now();
        crashes.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        crashes.push_back(now);
        if crashes.len() > MAX_RESTARTS {
            return Err(SuperviseError::CrashLoop { name: spec.name, status });
        }
        let backoff = FIRST_BACKOFF.saturating_mul(1 << (crashes.len() - 1)).min(MAX_BACKOFF);
        eprintln!(
            "spiderweb up: {} (pid {pid}) exited: {status}; restarting in {} ms (restart {} of at most {MAX_RESTARTS} per {} s)",
            spec.name,
            backoff.as_millis(),
            crashes.len(),
            RESTART_WINDOW.as_secs()
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
}

fn spawn(spec: &ChildSpec) -> Result<Child, SuperviseError> {
    let spawn_error = |source| SuperviseError::Spawn { name: spec.name, program: spec.program.clone(), source };
    // The daemons' stdout carries banners for people: keep `up`'s own stdout for its banner.
    let stdout = std::io::stderr().as_fd().try_clone_to_owned().map_err(spawn_error)?;
    let mut command = Command::new(&spec.program);
    if let Some(env) = &spec.env {
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    command
        .args(&spec.args)
        .env("NOTIFY_SOCKET", &spec.notify_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(spawn_error)
}

/// Waits for `READY=1`; returns the `STATUS=` that came with it.
async fn wait_ready(
    spec: &ChildSpec,
    notify: &UnixDatagram,
    child: &mut Child,
) -> Result<Option<String>, SuperviseError> {
    let deadline = tokio::time::sleep(READY_TIMEOUT);
    tokio::pin!(deadline);
    let mut buf = vec![0u8; NOTIFY_BUF];
    loop {
        tokio::select! {
            received = notify.recv(&mut buf) => {
                let Ok(n) = received else { continue };
                let message = String::from_utf8_lossy(&buf[..n]);
                if message.lines().any(|l| l == "READY=1") {
                    let status = message.lines().find_map(|l| l.strip_prefix("STATUS=")).map(str::to_owned);
                    return Ok(status);
                }
            }
            exit = child.wait() => {
                return Err(SuperviseError::ExitedBeforeReady { name: spec.name, status: describe(exit) });
            }
            () = &mut deadline => return Err(SuperviseError::NotReady { name: spec.name }),
        }
    }
}

/// SIGTERM, then SIGKILL to the process group after [`STOP_GRACE`]; always reaps.
async fn stop_child(child: &mut Child) {
    let Some(pid) = child.id() else {
        // Already reaped.
        return;
    };
    send_signal(pid as libc::pid_t, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        eprintln!("spiderweb up: pid {pid} did not stop within {} s; killing it", STOP_GRACE.as_secs());
        kill_group(pid);
        let _ = child.wait().await;
    }
    kill_group(pid);
}

/// SIGKILL to what is left of the child's process group (its own children).
fn kill_group(pid: u32) {
    if pid != 0 {
        send_signal(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

fn send_signal(target: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; a target that is gone gives ESRCH, which is fine.
    unsafe {
        libc::kill(target, signal);
    }
}

/// "exit status 3" / "signal 9 (SIGKILL)".
pub fn describe(exit: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match exit {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("signal {signal} ({})", signal_name(signal)),
            _ => status.to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGSYS => "SIGSYS",
        _ => "other",
    }
}

/// The executable `name`: next to the running one, else on `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
