//! Starting one confined worker and driving it to a result: the single path shared by
//! `spiderweb-worker run` and the supervisor.
//!
//! The worker is this same executable with the hidden `confined` subcommand, started with an
//! empty environment (no secret of the launcher's can reach it) and the plan as its argument.
//! The launcher sends the task only after the worker announced that it is confined, relays
//! output chunks, and enforces the wall clock: on expiry it SIGKILLs the worker's relay
//! process, whose death SIGKILLs PID 1, whose death makes the kernel kill every process of the
//! worker's PID namespace.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use spiderweb_proto::frame::{JsonFrames, write_frame};
use spiderweb_proto::worker::{FailureCode, MAX_FRAME_BYTES, OutputStream, ToolOutcome, WorkerEvent, WorkerTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::codec::FramedRead;

use crate::plan::ConfinementPlan;

/// How long a worker may take to exit after its result before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Bytes of the worker's stderr kept for an error message.
const STDERR_KEEP: u64 = 16 * 1024;

/// Runs `task` in a fresh confined worker.
pub async fn run_task(
    exe: &Path,
    plan: &ConfinementPlan,
    task: &WorkerTask,
    mut on_output: impl FnMut(OutputStream, String),
) -> ToolOutcome {
    let plan_json = match serde_json::to_string(plan) {
        Ok(json) => json,
        Err(e) => return ToolOutcome::failed(FailureCode::Rejected, format!("plan: {e}")),
    };
    let mut child = match Command::new(exe)
        .arg("confined")
        .arg(plan_json)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return ToolOutcome::failed(FailureCode::SandboxUnavailable, format!("cannot start worker: {e}"));
        }
    };
    let wall_clock = Duration::from_millis(plan.limits.wall_clock_ms);
    let outcome = match tokio::time::timeout(wall_clock, drive(&mut child, task, &mut on_output)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            // The relay kills PID 1 (and with it the namespace), reaps it, and exits.
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            ToolOutcome::failed(
                FailureCode::Timeout,
                format!("worker exceeded its wall-clock limit of {} ms and was killed", plan.limits.wall_clock_ms),
            )
        }
    };
    // After its result the worker exits by itself and its relay reaps it; kill only a worker
    // that lingers (or already failed), so every process is reaped by its own parent.
    if tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

async fn drive(child: &mut Child, task: &WorkerTask, on_output: &mut impl FnMut(OutputStream, String)) -> ToolOutcome {
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return ToolOutcome::failed(FailureCode::SandboxUnavailable, "worker pipes missing");
    };
    let mut events = FramedRead::new(stdout, JsonFrames::<WorkerEvent, ()>::new(MAX_FRAME_BYTES));
    let mut stdin = Some(stdin);
    let mut confined = false;
    loop {
        match events.next().await {
            Some(Ok(Ok(WorkerEvent::Confined))) if !confined => {
                confined = true;
                let mut frame = Vec::new();
                if let Err(e) = write_frame(&mut frame, task, MAX_FRAME_BYTES) {
                    return ToolOutcome::failed(FailureCode::InvalidParams, e.to_string());
                }
                let Some(mut pipe) = stdin.take() else {
                    continue;
                };
                if pipe.write_all(&frame).await.is_err() {
                    return exited(child, "the worker closed its input").await;
                }
            }
            Some(Ok(Ok(WorkerEvent::Output { stream, data }))) if confined => on_output(stream, data),
            Some(Ok(Ok(WorkerEvent::Done { outcome }))) => return outcome,
            Some(Ok(Ok(_))) => return exited(child, "the worker broke the protocol").await,
            Some(Ok(Err(malformed))) => {
                return exited(child, &format!("the worker sent a {malformed}")).await;
            }
            Some(Err(e)) => return exited(child, &format!("reading the worker: {e}")).await,
            None => return exited(child, "the worker exited without a result").await,
        }
    }
}

async fn exited(child: &mut Child, what: &str) -> ToolOutcome {
    let _ = child.start_kill();
    let mut stderr = String::new();
    if let Some(err) = child.stderr.take() {
        let _ = err.take(STDERR_KEEP).read_to_string(&mut stderr).await;
    }
    let detail = stderr.trim();
    let message = if detail.is_empty() { what.to_owned() } else { format!("{what}: {detail}") };
    ToolOutcome::failed(FailureCode::ExecutionFailed, message)
}
