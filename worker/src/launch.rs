//! Starting a confined worker and driving it to a result: the single path shared by
//! `spiderweb-worker run` and the supervisor.
//!
//! A worker process is forked by the tenant's fork server ([`crate::forkserver`]), or, when no
//! fork server can serve (too many tenants at once, or it failed), started as this same
//! executable with the hidden `confined` subcommand. Either way it starts with an empty
//! environment (no secret of the launcher's can reach it), its stdio on three fresh pipes and
//! no other descriptor, and takes the same path ([`crate::entry`]): the plan is its first stdin
//! frame, then it confines itself.
//! [`Launcher::start`] returns a [`ReadyWorker`] only once the worker has announced that it is
//! confined; [`ReadyWorker::run`] then sends the task, relays output chunks and enforces the
//! wall clock: on expiry the worker's relay process gets SIGTERM, SIGKILLs PID 1 (the kernel
//! then kills every process of the worker's PID namespace), reaps it and exits.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use spiderweb_proto::frame::{JsonFrames, write_frame};
use spiderweb_proto::worker::{FailureCode, MAX_FRAME_BYTES, OutputStream, ToolOutcome, WorkerEvent, WorkerTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio_util::codec::FramedRead;

use crate::entry::MAX_PLAN_BYTES;
use crate::forkserver::{ForkServer, Forked};
use crate::plan::{ConfinementPlan, Ids};

/// How long a worker may take to confine itself.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker may take to exit after its result before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Pipe buffer asked for the worker's stdout.
const RESULT_PIPE_BYTES: i32 = 1024 * 1024;
/// Bytes of the worker's stderr kept for an error message.
const STDERR_KEEP: u64 = 16 * 1024;
/// Most fork servers (tenants with recent calls) at once; further tenants' workers are exec'd.
pub const MAX_FORK_SERVERS: usize = 64;

type Events = FramedRead<pipe::Receiver, JsonFrames<WorkerEvent, ()>>;
/// Fork servers by the ids their workers run as, with when each was last used.
type ForkServers = Mutex<HashMap<Option<Ids>, (Instant, Arc<ForkServer>)>>;

/// Where workers come from: one fork server per tenant (per uid/gid; a launcher that does not
/// switch ids has one), or an exec of this executable.
pub struct Launcher {
    exe: PathBuf,
    fork_servers: Option<ForkServers>,
}

impl Launcher {
    /// Workers forked by fork servers of `exe` (exec'd when that fails).
    pub fn new(exe: PathBuf) -> Self {
        Launcher { exe, fork_servers: Some(Mutex::new(HashMap::new())) }
    }

    /// Every worker exec'd (`spiderweb-worker run --exec`: the fallback path, for tests).
    pub fn exec_only(exe: PathBuf) -> Self {
        Launcher { exe, fork_servers: None }
    }

    /// Starts a worker for `plan` and waits until it reports itself confined. A worker that
    /// cannot confine itself yields its `sandbox_unavailable` outcome.
    pub async fn start(&self, plan: &ConfinementPlan) -> Result<ReadyWorker, ToolOutcome> {
        let cannot_start = |e: std::io::Error| {
            ToolOutcome::failed(FailureCode::SandboxUnavailable, format!("cannot start worker: {e}"))
        };
        if let Some(server) = self.fork_server(plan.ids) {
            let (ours, theirs) = stdio_pipes().map_err(cannot_start)?;
            match server.fork(theirs.0).await {
                Ok(forked) => return ours.confine(WorkerProcess::Forked(forked), plan).await,
                Err(e) => {
                    tracing::warn!(error = %e, "fork server failed; starting the worker by exec");
                    self.forget_fork_server(plan.ids, &server);
                }
            }
        }
        let (ours, theirs) = stdio_pipes().map_err(cannot_start)?;
        let child = exec(&self.exe, theirs).map_err(cannot_start)?;
        ours.confine(WorkerProcess::Exec(child), plan).await
    }

    /// The fork server for `ids`, started if needed; `None` when there are too many.
    fn fork_server(&self, ids: Option<Ids>) -> Option<Arc<ForkServer>> {
        let mut servers = self.fork_servers.as_ref()?.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((used, server)) = servers.get_mut(&ids) {
            *used = Instant::now();
            return Some(server.clone());
        }
        if servers.len() >= MAX_FORK_SERVERS {
            return None;
        }
        match ForkServer::start(&self.exe) {
            Ok(server) => {
                servers.insert(ids, (Instant::now(), server.clone()));
                Some(server)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a fork server; starting workers by exec");
                None
            }
        }
    }

    fn forget_fork_server(&self, ids: Option<Ids>, failed: &Arc<ForkServer>) {
        if let Some(servers) = &self.fork_servers {
            let mut servers = servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if servers.get(&ids).is_some_and(|(_, server)| Arc::ptr_eq(server, failed)) {
                servers.remove(&ids);
            }
        }
    }

    /// Ends the fork servers unused for `idle` that have no worker left (each worker holds
    /// its server), and those that died.
    pub fn expire_fork_servers(&self, idle: Duration) {
        if let Some(servers) = &self.fork_servers {
            let mut servers = servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            servers.retain(|_, (used, server)| {
                server.is_alive() && (used.elapsed() < idle || Arc::strong_count(server) > 1)
            });
        }
    }

    /// Ends every fork server and waits for it to exit (`run` does this before it exits, so
    /// that it leaves no process behind, not even an unreaped one).
    pub async fn shutdown(&self) {
        let servers: Vec<_> = match &self.fork_servers {
            Some(servers) => servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain().collect(),
            None => Vec::new(),
        };
        for (_, (_, server)) in servers {
            server.close(EXIT_GRACE).await;
        }
    }
}

/// Starts `exe confined` on the worker's ends of its pipes.
fn exec(exe: &Path, theirs: StdioFds) -> std::io::Result<Child> {
    let [stdin, stdout, stderr] = theirs.0;
    Command::new(exe)
        .arg("confined")
        .env_clear()
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
}

/// The worker's ends of its stdin, stdout and stderr pipes.
struct StdioFds([OwnedFd; 3]);

/// The launcher's ends.
struct LauncherEnds {
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

fn stdio_pipes() -> std::io::Result<(LauncherEnds, StdioFds)> {
    let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // A result frame can be MiBs; a larger pipe saves dozens of wake-ups per frame. Best
    // effort: the kernel caps it at fs.pipe-max-size.
    let _ = nix::fcntl::fcntl(stdout_r.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(RESULT_PIPE_BYTES));
    let ours = LauncherEnds {
        stdin: pipe::Sender::from_owned_fd(stdin_w)?,
        stdout: pipe::Receiver::from_owned_fd(stdout_r)?,
        stderr: pipe::Receiver::from_owned_fd(stderr_r)?,
    };
    Ok((ours, StdioFds([stdin_r, stdout_w, stderr_w])))
}

impl LauncherEnds {
    /// Sends the plan to a just-started worker and waits for it to report itself confined.
    async fn confine(self, process: WorkerProcess, plan: &ConfinementPlan) -> Result<ReadyWorker, ToolOutcome> {
        let mut plan_frame = Vec::new();
        write_frame(&mut plan_frame, plan, MAX_PLAN_BYTES)
            .map_err(|e| ToolOutcome::failed(FailureCode::Rejected, format!("plan: {e}")))?;
        let LauncherEnds { mut stdin, stdout, stderr } = self;
        let mut worker = ReadyWorker {
            process,
            events: FramedRead::new(stdout, JsonFrames::new(MAX_FRAME_BYTES)),
            stdin: None,
            stderr: Some(stderr),
            wall_clock_ms: plan.limits.wall_clock_ms,
        };
        if stdin.write_all(&plan_frame).await.is_err() {
            return Err(ToolOutcome::failed(FailureCode::SandboxUnavailable, "the worker closed its input"));
        }
        worker.stdin = Some(stdin);
        match tokio::time::timeout(START_TIMEOUT, worker.events.next()).await {
            Ok(Some(Ok(Ok(WorkerEvent::Confined)))) => Ok(worker),
            Ok(Some(Ok(Ok(WorkerEvent::Done { outcome })))) => Err(outcome),
            Ok(_) => Err(worker.failure("the worker stopped before confining itself").await),
            Err(_) => {
                Err(ToolOutcome::failed(FailureCode::SandboxUnavailable, "the worker did not confine itself in time"))
            }
        }
    }
}

/// A worker's process: the relay of its PID namespace.
enum WorkerProcess {
    /// Exec'd by this process (tokio reaps it).
    Exec(Child),
    /// Forked by a fork server (which reaps it); known by its pidfd.
    Forked(Forked),
}

impl WorkerProcess {
    fn signal(&self, signal: Signal) {
        match self {
            WorkerProcess::Exec(child) => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), signal);
                }
            }
            WorkerProcess::Forked(forked) => forked.signal(signal),
        }
    }

    fn is_alive(&mut self) -> bool {
        match self {
            WorkerProcess::Exec(child) => matches!(child.try_wait(), Ok(None)),
            WorkerProcess::Forked(forked) => !forked.has_exited(),
        }
    }

    async fn exited(&mut self) {
        match self {
            WorkerProcess::Exec(child) => drop(child.wait().await),
            WorkerProcess::Forked(forked) => forked.exited().await,
        }
    }
}

/// A worker that is fully confined and waits for its one task. Dropping it ends it.
pub struct ReadyWorker {
    process: WorkerProcess,
    events: Events,
    stdin: Option<pipe::Sender>,
    stderr: Option<pipe::Receiver>,
    wall_clock_ms: u64,
}

/// Runs `task` in a fresh confined worker.
pub async fn run_task(
    launcher: &Launcher,
    plan: &ConfinementPlan,
    task: &WorkerTask,
    on_output: impl FnMut(OutputStream, String),
) -> ToolOutcome {
    match launcher.start(plan).await {
        Ok(worker) => worker.run(task, on_output).await,
        Err(outcome) => outcome,
    }
}

impl ReadyWorker {
    /// Whether the worker is still waiting (not killed, not exited).
    pub fn is_alive(&mut self) -> bool {
        self.process.is_alive()
    }

    /// Sends the task and drives the worker to its result within its wall clock, then waits
    /// for the worker to exit.
    pub async fn run(self, task: &WorkerTask, on_output: impl FnMut(OutputStream, String)) -> ToolOutcome {
        let (outcome, exited) = self.run_then_exit(task, on_output).await;
        exited.await;
        outcome
    }

    /// As [`ReadyWorker::run`], but returns as soon as the result is in, with the worker's exit
    /// as a future to await after the result has been passed on: the end of a PID namespace
    /// (every process killed and reaped, the mount tree torn down) takes a while and is no part
    /// of the call.
    pub async fn run_then_exit(
        mut self,
        task: &WorkerTask,
        mut on_output: impl FnMut(OutputStream, String),
    ) -> (ToolOutcome, impl Future<Output = ()> + Send + 'static) {
        let wall_clock = Duration::from_millis(self.wall_clock_ms);
        let outcome = match tokio::time::timeout(wall_clock, self.drive(task, &mut on_output)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.terminate();
                ToolOutcome::failed(
                    FailureCode::Timeout,
                    format!("worker exceeded its wall-clock limit of {} ms and was killed", self.wall_clock_ms),
                )
            }
        };
        // After its result the worker exits by itself and its relay reaps it; kill only a
        // worker that lingers, so every process is reaped by its own parent.
        let exited = async move {
            if tokio::time::timeout(EXIT_GRACE, self.process.exited()).await.is_err() {
                self.process.signal(Signal::SIGKILL);
                self.process.exited().await;
            }
        };
        (outcome, exited)
    }

    async fn drive(&mut self, task: &WorkerTask, on_output: &mut impl FnMut(OutputStream, String)) -> ToolOutcome {
        let mut frame = Vec::new();
        if let Err(e) = write_frame(&mut frame, task, MAX_FRAME_BYTES) {
            return ToolOutcome::failed(FailureCode::InvalidParams, e.to_string());
        }
        let Some(mut stdin) = self.stdin.take() else {
            return ToolOutcome::failed(FailureCode::ExecutionFailed, "the worker already ran a task");
        };
        if stdin.write_all(&frame).await.is_err() {
            return self.failure("the worker closed its input").await;
        }
        drop(stdin);
        loop {
            match self.events.next().await {
                Some(Ok(Ok(WorkerEvent::Output { stream, data }))) => on_output(stream, data),
                Some(Ok(Ok(WorkerEvent::Done { outcome }))) => return outcome,
                Some(Ok(Ok(WorkerEvent::Confined))) => return self.failure("the worker broke the protocol").await,
                Some(Ok(Err(malformed))) => return self.failure(&format!("the worker sent a {malformed}")).await,
                Some(Err(e)) => return self.failure(&format!("reading the worker: {e}")).await,
                None => return self.failure("the worker exited without a result").await,
            }
        }
    }

    /// SIGTERM to the relay: it SIGKILLs PID 1, reaps it and exits.
    fn terminate(&mut self) {
        self.process.signal(Signal::SIGTERM);
    }

    async fn failure(&mut self, what: &str) -> ToolOutcome {
        self.terminate();
        let mut stderr = String::new();
        if let Some(err) = self.stderr.take() {
            let _ = err.take(STDERR_KEEP).read_to_string(&mut stderr).await;
        }
        let detail = stderr.trim();
        let message = if detail.is_empty() { what.to_owned() } else { format!("{what}: {detail}") };
        ToolOutcome::failed(FailureCode::ExecutionFailed, message)
    }
}

impl Drop for ReadyWorker {
    /// An unused or abandoned worker ends through its relay; tokio or the fork server reaps
    /// the relay.
    fn drop(&mut self) {
        self.terminate();
    }
}
