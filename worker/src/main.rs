//! `spiderweb-worker`: `supervise` (the daemon), `run` (one tool, for operators and tests),
//! `schemas` (the tools' JSON Schemas), and the hidden `confined` (the worker itself).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use spiderweb_policy::sandbox::SandboxConfig;
use spiderweb_proto::worker::{OutputStream, SandboxProfile, ToolOutcome, WorkerTask, tool_schemas};
use spiderweb_service::activation::Activation;
use spiderweb_service::logging::{self, LogFormat};
use spiderweb_service::notify::Notifier;
use spiderweb_worker::ids::id_switch;
use spiderweb_worker::launch::{Launcher, run_task};
use spiderweb_worker::plan::{ConfinementPlan, Ids, SearchBackend};
use spiderweb_worker::supervise::{config::SupervisorConfig, server};
use spiderweb_worker::{entry, forkserver};

#[derive(Parser)]
#[command(name = "spiderweb-worker", version, about = "spiderweb tool-worker supervisor and confined workers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve tool calls on a Unix socket.
    Supervise {
        /// Configuration file (JSON).
        #[arg(long, env = "SPIDERWEB_WORKER_CONFIG")]
        config: PathBuf,
    },
    /// Run one tool in a confined worker and print its outcome as JSON.
    Run {
        /// The workspace directory.
        #[arg(long)]
        workspace: PathBuf,
        /// Sandbox profile.
        #[arg(long, default_value = "workspace-write")]
        profile: SandboxProfile,
        /// uid to run as (root only; default: the workspace's owner).
        #[arg(long)]
        uid: Option<u32>,
        /// gid to run as (root only; default: the workspace's group).
        #[arg(long)]
        gid: Option<u32>,
        /// `search_code` implementation.
        #[arg(long, value_enum, default_value = "auto")]
        search_backend: SearchBackend,
        /// Sandbox configuration (JSON, the `sandbox` section: limits, protected paths).
        #[arg(long)]
        sandbox_config: Option<PathBuf>,
        /// Wall-clock limit in ms (default: the profile's).
        #[arg(long)]
        wall_clock_ms: Option<u64>,
        /// Copy streamed output to stderr as it arrives.
        #[arg(long)]
        stream: bool,
        /// Exec the worker instead of forking it from a fork server (the supervisor's
        /// fallback path).
        #[arg(long, hide = true)]
        exec: bool,
        /// Tool name.
        tool: String,
        /// Arguments object (JSON).
        #[arg(default_value = "{}")]
        args: String,
    },
    /// Print the tools' names, descriptions and argument schemas.
    Schemas,
    /// The confined worker (started by `run` and `supervise`; reads its plan, then its task,
    /// from stdin).
    #[command(hide = true)]
    Confined,
    /// Forks confined workers on request (started by `run` and `supervise`, one per tenant).
    #[command(hide = true)]
    ForkServer,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Confined => match entry::read_plan() {
            Ok(plan) => entry::run(&plan),
            Err(e) => {
                eprintln!("spiderweb-worker confined: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Cmd::ForkServer => forkserver::serve(),
        Cmd::Schemas => {
            println!("{}", serde_json::to_string_pretty(&tool_schemas()).expect("schemas serialise"));
            std::process::ExitCode::SUCCESS
        }
        Cmd::Supervise { config } => {
            // Both read and clear environment variables: before any thread exists.
            // SAFETY: single-threaded until the runtime below starts.
            let activation = match unsafe { Activation::take() } {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("spiderweb-worker supervise: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            // SAFETY: as above.
            let notifier = unsafe { Notifier::take() };
            logging::init(LogFormat::detect(), "info", "SPIDERWEB_LOG");
            // Before the runtime starts its threads: ambient capabilities are per thread.
            let result = id_switch().map_err(anyhow::Error::msg).and_then(|switch| {
                let config = SupervisorConfig::load(&config, switch.available())?;
                runtime()?.block_on(server::serve(config, switch, activation, notifier))
            });
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spiderweb-worker supervise: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            workspace,
            profile,
            uid,
            gid,
            search_backend,
            sandbox_config,
            wall_clock_ms,
            stream,
            exec,
            tool,
            args,
        } => {
            let options = RunOptions { profile, uid, gid, search_backend, sandbox_config, wall_clock_ms, stream, exec };
            match run_one(workspace, options, tool, &args) {
                Ok(outcome) => {
                    println!("{}", serde_json::to_string(&outcome).expect("outcome serialises"));
                    match outcome {
                        ToolOutcome::Ok { .. } => std::process::ExitCode::SUCCESS,
                        ToolOutcome::Failed { .. } => std::process::ExitCode::FAILURE,
                    }
                }
                Err(e) => {
                    eprintln!("spiderweb-worker run: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

struct RunOptions {
    profile: SandboxProfile,
    uid: Option<u32>,
    gid: Option<u32>,
    search_backend: SearchBackend,
    sandbox_config: Option<PathBuf>,
    wall_clock_ms: Option<u64>,
    stream: bool,
    exec: bool,
}

fn run_one(workspace: PathBuf, options: RunOptions, tool: String, args: &str) -> anyhow::Result<ToolOutcome> {
    let RunOptions { profile, uid, gid, search_backend, sandbox_config, wall_clock_ms, stream, exec } = options;
    let workspace = workspace.canonicalize().map_err(|e| anyhow::anyhow!("workspace {}: {e}", workspace.display()))?;
    let args: serde_json::Value =
        serde_json::from_str(args).map_err(|e| anyhow::anyhow!("arguments are not JSON: {e}"))?;
    let ids = if nix::unistd::geteuid().is_root() {
        let meta = std::fs::metadata(&workspace)?;
        let ids = Ids { uid: uid.unwrap_or(meta.uid()), gid: gid.unwrap_or(meta.gid()) };
        if ids.uid == 0 || ids.gid == 0 {
            anyhow::bail!("running as root: pass --uid/--gid, or chown the workspace to an unprivileged user");
        }
        Some(ids)
    } else if uid.is_some() || gid.is_some() {
        anyhow::bail!("--uid/--gid need root");
    } else {
        None
    };
    let sandbox = match sandbox_config {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let config: SandboxConfig =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            config.validate()?;
            config
        }
        None => SandboxConfig::default(),
    };
    let mut rules = sandbox.rules(profile);
    if let Some(ms) = wall_clock_ms {
        rules.limits.wall_clock_ms = ms;
    }
    let plan = ConfinementPlan::new(workspace.display().to_string(), rules, ids, search_backend);
    let exe = std::env::current_exe()?;
    let launcher = if exec { Launcher::exec_only(exe) } else { Launcher::new(exe) };
    let task = WorkerTask { tool, args };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(async {
        let outcome = run_task(&launcher, &plan, &task, |s, data| {
            if stream {
                let tag = if s == OutputStream::Stdout { "stdout" } else { "stderr" };
                eprint!("[{tag}] {data}");
            }
        })
        .await;
        launcher.shutdown().await;
        outcome
    }))
}
