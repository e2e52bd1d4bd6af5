//! `shell_exec`: `bash -lc <command>` in the workspace, with a timeout (default 30 s, capped
//! at 300 s), both streams captured (each at most 1 MiB) and streamed as they arrive.
//!
//! The worker is PID 1 of its namespace, so when the command ends (or times out) every
//! process it left behind is killed with `kill(-1, SIGKILL)`, which from a namespace's init
//! reaches exactly the namespace's other processes. Nothing outlives the tool call.
//!
//! A warm worker may start its login shell before the call arrives ([`PrestartedShell`]):
//! starting bash and sourcing the login files (`/etc/profile` execs `id -u`) is most of a
//! short command's cost. That shell is confined like everything the worker starts, has read
//! nothing of the request, and waits for the command on descriptor 3; it then runs it with
//! `eval` with `BASH_EXECUTION_STRING` set to the command, as `bash -lc` would. What differs
//! from a cold `bash -lc`: the login files ran when the worker was warmed, not when the call
//! came, and a syntax error is reported as `bash: eval: line 1: …` instead of
//! `bash: -c: line 1: …`. A call with a `cwd` starts a fresh shell.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
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

/// Descriptor on which a pre-started shell reads its command.
const COMMAND_FD: RawFd = 3;
/// What a pre-started login shell runs: read the command (to end of file), then run it as
/// `bash -c` would, with the command in `BASH_EXECUTION_STRING`.
const PRESTARTED_SCRIPT: &str =
    "IFS= read -r -d '' BASH_EXECUTION_STRING <&3; exec 3<&-; eval \"$BASH_EXECUTION_STRING\"";

/// A login shell started ahead of the call, waiting for its command on descriptor 3.
pub struct PrestartedShell {
    child: Child,
    command: std::fs::File,
}

impl PrestartedShell {
    /// Starts `bash -l` in the workspace, in its own process group, reading its command from a
    /// pipe. Only called in a confined worker.
    pub fn start() -> std::io::Result<PrestartedShell> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let mut command = bash(SANDBOX_WORKSPACE, PRESTARTED_SCRIPT);
        let read_fd = read.as_raw_fd();
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let placed = if read_fd == COMMAND_FD {
                    libc::fcntl(COMMAND_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(read_fd, COMMAND_FD)
                };
                if placed < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        let child = command.spawn()?;
        drop(read);
        Ok(PrestartedShell { child, command: write.into() })
    }

    /// Hands the shell its command; the shell's end of the pipe sees end of file after it.
    fn run(mut self, command: &str) -> Child {
        use std::io::Write;
        // A shell that already exited (a login file ran `exit`) is reported by its status, as
        // a cold `bash -lc` would be.
        let _ = self.command.write_all(command.as_bytes());
        self.child
    }
}

/// `bash -lc <script>` with the sandbox's environment, in its own process group.
fn bash(cwd: &str, script: &str) -> Command {
    let mut command = Command::new("/bin/bash");
    command
        .args(["-lc", script])
        .env_clear()
        .envs(ENVIRONMENT)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    command
}

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<ShellExecResult, ToolError> {
    let args: ShellExecArgs = parse_args(args, &["command"])?;
    if args.command.len() > MAX_COMMAND_BYTES {
        return Err(ToolError::invalid("command is longer than 262144 bytes"));
    }
    // An argv string cannot hold NUL, and a pre-started shell would stop reading at one.
    if args.command.contains('\0') {
        return Err(ToolError::invalid("command contains a NUL character"));
    }
    let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).clamp(1, TIMEOUT_CAP_MS));
    let cwd = match &args.cwd {
        Some(cwd) if !cwd.is_empty() => {
            let relative = paths::relative(cwd)?;
            paths::open_at(ctx.workspace, relative, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
            Some(format!("{SANDBOX_WORKSPACE}/{relative}"))
        }
        _ => None,
    };
    let prestarted = ctx.prestarted_shell.take();
    let mut child = match (cwd, prestarted) {
        (None, Some(shell)) => shell.run(&args.command),
        (cwd, _) => bash(cwd.as_deref().unwrap_or(SANDBOX_WORKSPACE), &args.command)
            .spawn()
            .map_err(|e| ToolError::new(FailureCode::ToolNotExecutable, format!("bash could not start: {e}")))?,
    };
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
