//! `shell_exec`: `bash -lc <command>` in the workspace, with a timeout (default 30 s, capped
//! at 300 s), both streams captured (each at most 1 MiB) and streamed as they arrive.
//!
//! The worker is PID 1 of its namespace, so when the command ends (or times out) every
//! process it left behind is killed with `kill(-1, SIGKILL)`, which from a namespace's init
//! reaches exactly the namespace's other processes. Nothing outlives the tool call.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use spiderweb_proto::worker::{FailureCode, MAX_STREAM_BYTES, OutputStream, ShellExecArgs, ShellExecResult};

use super::{ToolContext, ToolError, parse_args, paths};
use crate::plan::SANDBOX_WORKSPACE;

/// Default `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Cap on `timeout_ms`.
pub const TIMEOUT_CAP_MS: u64 = 300_000;
/// Longest command line accepted.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// How long output may keep flowing after bash exited before the leftovers are killed.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// The environment of every command: nothing of the worker's or the host's.
pub const ENVIRONMENT: [(&str, &str); 7] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", SANDBOX_WORKSPACE),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("TMPDIR", "/tmp"),
    ("SHELL", "/bin/bash"),
    ("USER", "spiderweb"),
];

enum Event {
    Chunk(OutputStream, Vec<u8>),
    Closed,
    Exited(ExitStatus),
}

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<ShellExecResult, ToolError> {
    let args: ShellExecArgs = parse_args(args, &["command"])?;
    if args.command.len() > MAX_COMMAND_BYTES {
        return Err(ToolError::invalid("command is longer than 262144 bytes"));
    }
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).clamp(1, TIMEOUT_CAP_MS));
    let cwd = match &args.cwd {
        Some(cwd) if !cwd.is_empty() => {
            let relative = paths::relative(cwd)?;
            paths::open_at(ctx.workspace, relative, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
            format!("{SANDBOX_WORKSPACE}/{relative}")
        }
        _ => SANDBOX_WORKSPACE.to_owned(),
    };
    let mut child = Command::new("/bin/bash")
        .args(["-lc", &args.command])
        .env_clear()
        .envs(ENVIRONMENT)
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| ToolError::new(FailureCode::ToolNotExecutable, format!("bash could not start: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    spawn_reader(OutputStream::Stdout, ReadEnd::Out(stdout), tx.clone());
    spawn_reader(OutputStream::Stderr, ReadEnd::Err(stderr), tx.clone());
    spawn_waiter(child, tx);

    let mut deadline = Instant::now() + timeout;
    let (mut stdout_buf, mut stderr_buf) = (Vec::new(), Vec::new());
    let (mut open_streams, mut status, mut timed_out, mut killed) = (2, None, false, false);
    let mut drain_until: Option<Instant> = None;
    while open_streams > 0 || status.is_none() {
        let wake = drain_until.map_or(deadline, |d| d.min(deadline));
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Chunk(stream, bytes)) => {
                let buf = if stream == OutputStream::Stdout { &mut stdout_buf } else { &mut stderr_buf };
                let room = MAX_STREAM_BYTES.saturating_sub(buf.len());
                let kept = &bytes[..bytes.len().min(room)];
                if !kept.is_empty() {
                    buf.extend_from_slice(kept);
                    (ctx.emit)(stream, kept);
                }
            }
            Ok(Event::Closed) => open_streams -= 1,
            Ok(Event::Exited(s)) => {
                status = Some(s);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            // Killed processes close their pipes at once; if nothing arrives after that,
            // nothing will.
            Err(mpsc::RecvTimeoutError::Timeout) if killed => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = status.is_none();
                kill_everything_else();
                killed = true;
                drain_until = None;
                deadline = Instant::now() + Duration::from_secs(2);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    kill_everything_else();
    if timed_out {
        return Err(ToolError::new(FailureCode::Timeout, "command timed out"));
    }
    let status = status.expect("loop ends with a status");
    Ok(ShellExecResult {
        exit_code: status.code().or(status.signal()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout_buf).into_owned(),
        stderr: String::from_utf8_lossy(&stderr_buf).into_owned(),
    })
}

enum ReadEnd {
    Out(ChildStdout),
    Err(ChildStderr),
}

fn spawn_reader(stream: OutputStream, mut end: ReadEnd, tx: mpsc::Sender<Event>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match &mut end {
                ReadEnd::Out(r) => r.read(&mut buf),
                ReadEnd::Err(r) => r.read(&mut buf),
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Event::Chunk(stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

fn spawn_waiter(mut child: Child, tx: mpsc::Sender<Event>) {
    thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status));
        }
    });
}

/// From PID 1, `kill(-1)` signals every other process of the namespace.
fn kill_everything_else() {
    if nix::unistd::getpid() == Pid::from_raw(1) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
}
