//! `spiderweb-worker confined`: the worker process itself.
//!
//! It reads its [`ConfinementPlan`] (built by the launcher from its own configuration, sent as
//! the first frame on stdin rather than in argv, where every host user could read it), confines
//! itself (all of [`crate::confine`]), announces [`WorkerEvent::Confined`] on stdout, and only
//! then reads its one [`WorkerTask`] from stdin, runs it, streams output and writes
//! [`WorkerEvent::Done`]. If confinement fails it writes a `sandbox_unavailable` result naming
//! the failed step and exits without reading the task.

use std::io::{self, Write};
use std::os::fd::OwnedFd;

use spiderweb_proto::frame::{read_frame, write_frame};
use spiderweb_proto::worker::{FailureCode, MAX_FRAME_BYTES, ToolOutcome, WorkerEvent, WorkerTask};

use crate::confine::confine;
use crate::plan::{ConfinementPlan, SANDBOX_WORKSPACE};
use crate::tools::{self, ToolContext};

/// Largest plan frame accepted.
pub const MAX_PLAN_BYTES: usize = 64 * 1024;

/// Reads the plan frame. Only `read` calls on stdin happen before confinement.
pub fn read_plan() -> Result<ConfinementPlan, String> {
    match read_frame(&mut io::stdin().lock(), MAX_PLAN_BYTES) {
        Ok(Some(Ok(plan))) => Ok(plan),
        Ok(Some(Err(malformed))) => Err(format!("bad plan: {malformed}")),
        Ok(None) => Err("no plan on stdin".into()),
        Err(e) => Err(format!("reading the plan: {e}")),
    }
}

/// Exit status when confinement failed.
pub const EXIT_UNCONFINED: i32 = 70;

fn send(event: &WorkerEvent) {
    // A supervisor that stopped reading has given up on this worker; exit quietly.
    if write_frame(&mut io::stdout().lock(), event, MAX_FRAME_BYTES).is_err() {
        std::process::exit(0);
    }
}

fn done(outcome: ToolOutcome) -> ! {
    send(&WorkerEvent::Done { outcome });
    let _ = io::stdout().flush();
    std::process::exit(0)
}

/// Runs the worker. Never returns.
pub fn run(plan: &ConfinementPlan) -> ! {
    if let Err(e) = confine(plan) {
        let message = format!("worker not started, sandbox unavailable: {e}");
        eprintln!("spiderweb-worker: {message}");
        send(&WorkerEvent::Done { outcome: ToolOutcome::failed(FailureCode::SandboxUnavailable, message) });
        std::process::exit(EXIT_UNCONFINED);
    }
    let workspace: OwnedFd = match std::fs::File::open(SANDBOX_WORKSPACE).and_then(|f| {
        std::env::set_current_dir(SANDBOX_WORKSPACE)?;
        Ok(f)
    }) {
        Ok(f) => f.into(),
        Err(e) => done(ToolOutcome::failed(FailureCode::ExecutionFailed, format!("workspace unavailable: {e}"))),
    };
    send(&WorkerEvent::Confined);
    // Started after confinement, before the task is read; a shell that cannot start now is
    // simply started cold by shell_exec.
    let prestarted_shell = if plan.prestart_shell { tools::shell_exec::PrestartedShell::start().ok() } else { None };
    let task: WorkerTask = match read_frame(&mut io::stdin().lock(), MAX_FRAME_BYTES) {
        Ok(Some(Ok(task))) => task,
        Ok(Some(Err(malformed))) => done(ToolOutcome::failed(FailureCode::InvalidParams, malformed.to_string())),
        Ok(None) | Err(_) => std::process::exit(0),
    };
    let mut emit = |stream, bytes: &[u8]| {
        send(&WorkerEvent::Output { stream, data: String::from_utf8_lossy(bytes).into_owned() });
    };
    let mut ctx =
        ToolContext { workspace: &workspace, search_backend: plan.search_backend, emit: &mut emit, prestarted_shell };
    let outcome = tools::dispatch(&task.tool, task.args, &mut ctx);
    done(outcome)
}
