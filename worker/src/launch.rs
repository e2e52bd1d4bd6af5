//! Starting a confined worker and driving it to a result: the single path shared by
//! `spiderweb-worker run` and the supervisor.
//!
//! The worker is this same executable with the hidden `confined` subcommand, started with an
//! empty environment (no secret of the launcher's can reach it); the plan is its first stdin
//! frame.
//! [`start`] returns a [`ReadyWorker`] only once the worker has announced that it is confined;
//! [`ReadyWorker::run`] then sends the task, relays output chunks and enforces the wall clock:
//! on expiry the worker's relay process gets SIGTERM, SIGKILLs PID 1 (the kernel then kills
//! every process of the worker's PID namespace), reaps it and exits.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use spiderweb_proto::frame::{JsonFrames, write_frame};
use spiderweb_proto::worker::{FailureCode, MAX_FRAME_BYTES, OutputStream, ToolOutcome, WorkerEvent, WorkerTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::codec::FramedRead;

use crate::entry::MAX_PLAN_BYTES;
use crate::plan::ConfinementPlan;

/// How long a worker may take to confine itself.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker may take to exit after its result before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Pipe buffer asked for the worker's stdout.
const RESULT_PIPE_BYTES: i32 = 1024 * 1024;
/// Bytes of the worker's stderr kept for an error message.
const STDERR_KEEP: u64 = 16 * 1024;

type Events = FramedRead<ChildStdout, JsonFrames<WorkerEvent, ()>>;

/// A worker that is fully confined and waits for its one task. Dropping it ends it.
pub struct ReadyWorker {
    child: Child,
    events: Events,
    stdin: Option<ChildStdin>,
    wall_clock_ms: u64,
}

/// Starts a worker and waits until it reports itself confined. A worker that cannot confine
/// itself yields its `sandbox_unavailable` outcome.
pub async fn start(exe: &Path, plan: &ConfinementPlan) -> Result<ReadyWorker, ToolOutcome> {
    let mut plan_frame = Vec::new();
    write_frame(&mut plan_frame, plan, MAX_PLAN_BYTES)
        .map_err(|e| ToolOutcome::failed(FailureCode::Rejected, format!("plan: {e}")))?;
    let mut child = Command::new(exe)
        .arg("confined")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ToolOutcome::failed(FailureCode::SandboxUnavailable, format!("cannot start worker: {e}")))?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(ToolOutcome::failed(FailureCode::SandboxUnavailable, "worker pipes missing"));
    };
    // A result frame can be MiBs; a larger pipe saves dozens of wake-ups per frame. Best
    // effort: the kernel caps it at fs.pipe-max-size.
    let _ = nix::fcntl::fcntl(stdout.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(RESULT_PIPE_BYTES));
    let mut stdin = stdin;
    if stdin.write_all(&plan_frame).await.is_err() {
        let _ = child.start_kill();
        return Err(ToolOutcome::failed(FailureCode::SandboxUnavailable, "the worker closed its input"));
    }
    let mut worker = ReadyWorker {
        child,
        events: FramedRead::new(stdout, JsonFrames::new(MAX_FRAME_BYTES)),
        stdin: Some(stdin),
        wall_clock_ms: plan.limits.wall_clock_ms,
    };
    match tokio::time::timeout(START_TIMEOUT, worker.events.next()).await {
        Ok(Some(Ok(Ok(WorkerEvent::Confined)))) => Ok(worker),
        Ok(Some(Ok(Ok(WorkerEvent::Done { outcome })))) => Err(outcome),
        Ok(_) => Err(worker.failure("the worker stopped before confining itself").await),
        Err(_) => {
            Err(ToolOutcome::failed(FailureCode::SandboxUnavailable, "the worker did not confine itself in time"))
        }
    }
}

/// Runs `task` in a fresh confined worker.
pub async fn run_task(
    exe: &Path,
    plan: &ConfinementPlan,
    task: &WorkerTask,
    on_output: impl FnMut(OutputStream, String),
) -> ToolOutcome {
    match start(exe, plan).await {
        Ok(worker) => worker.run(task, on_output).await,
        Err(outcome) => outcome,
    }
}

impl ReadyWorker {
    /// Whether the worker is still waiting (not killed, not exited).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
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
            if tokio::time::timeout(EXIT_GRACE, self.child.wait()).await.is_err() {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
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
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }

    async fn failure(&mut self, what: &str) -> ToolOutcome {
        self.terminate();
        let mut stderr = String::new();
        if let Some(err) = self.child.stderr.take() {
            let _ = err.take(STDERR_KEEP).read_to_string(&mut stderr).await;
        }
        let detail = stderr.trim();
        let message = if detail.is_empty() { what.to_owned() } else { format!("{what}: {detail}") };
        ToolOutcome::failed(FailureCode::ExecutionFailed, message)
    }
}

impl Drop for ReadyWorker {
    /// An unused or abandoned worker ends through its relay; tokio reaps the relay.
    fn drop(&mut self) {
        self.terminate();
    }
}
