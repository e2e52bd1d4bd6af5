//! `spiderweb up`: the whole stack on one machine with one command.
//!
//! Why it exists: a newcomer runs `spiderweb up`, then `spiderweb chat`. `up` prepares a
//! private runtime directory ([`stack`]), picks a provider ([`provider_choice`], starting the
//! [`demo`] provider when nothing else is there), starts the credential broker, the worker
//! supervisor and the gateway as three separate processes with their own sockets
//! ([`supervise`]), prints where to connect, and stops everything on Ctrl-C or SIGTERM.
//!
//! Ordering: signal handlers first (a Ctrl-C during start-up still cleans up); broker and
//! worker start together, the gateway once both are ready (it talks to them); the banner only
//! after all three sent `READY=1`. On stop: gateway first (no new turns), then the others.
//!
//! What it must never do: hold or read a key (the broker does), leave a daemon or the runtime
//! directory behind, or keep restarting a daemon that cannot run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::demo::DemoProvider;
use super::provider_choice::{self, Choice};
use super::stack::{self, RuntimeDir};
use super::supervise::{self, ChildSpec, Report};
use crate::config;

/// The port `spiderweb chat` connects to by default.
pub const DEFAULT_PORT: u16 = 18790;

/// `spiderweb up` flags.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Port of the gateway; 0 picks a free one.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The gateway's state directory (tokens, database, workspaces).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The provider to use (a name the broker knows: openai, anthropic, gemini, …).
    #[arg(long, requires = "model")]
    pub provider: Option<String>,
    /// The model id (with --provider, or to pick one of a local server's models).
    #[arg(long)]
    pub model: Option<String>,
    /// Use the built-in demo provider even if a provider is available.
    #[arg(long, conflicts_with = "provider")]
    pub demo: bool,
    /// Where to look for a local OpenAI-compatible server (Ollama's default address).
    #[arg(long, env = "SPIDERWEB_LOCAL_PROVIDER_URL", default_value = provider_choice::OLLAMA_BASE_URL)]
    pub local_provider_url: String,
    /// Stay in the foreground (the only mode: stop with Ctrl-C).
    #[arg(long, default_value_t = true)]
    pub foreground: bool,
}

/// Runs `up` to the end; the exit code says how it ended.
pub fn run(args: UpArgs) -> ExitCode {
    // One thread: children get PR_SET_PDEATHSIG, which fires when the thread that forked them
    // ends, so that thread must live as long as `up`.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spiderweb up: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(up(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spiderweb up: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Binaries {
    broker: PathBuf,
    worker: PathBuf,
    gateway: PathBuf,
}

impl Binaries {
    fn locate() -> anyhow::Result<Binaries> {
        let find = |name: &str| {
            supervise::find_binary(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot find {name} next to this executable or on PATH: build all binaries \
                     (`cargo build --workspace --bins`) or install them together"
                )
            })
        };
        let gateway = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot locate this executable: {e}"))?;
        Ok(Binaries { broker: find("spiderweb-broker")?, worker: find("spiderweb-worker")?, gateway })
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let started = Instant::now();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let binaries = Binaries::locate()?;
    let as_root = nix_is_root();

    let gateway_config_path = config::config_path(None);
    let mut gateway_config = stack::read_user_config(&gateway_config_path)?;
    let broker_config_path = broker_config_path();
    let mut broker_config = stack::read_user_config(&broker_config_path)?;
    let loaded = config::load(&gateway_config_path)?;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| config::state_dir(None, &loaded.config));
    let workspace_root = state_dir.join("workspaces");
    stack::prepare_workspace(&workspace_root, as_root)?;
    let port = resolve_port(args.port)?;

    let choice = provider_choice::choose(provider_choice::Request {
        force_demo: args.demo,
        provider: args.provider.as_deref(),
        model: args.model.as_deref(),
        configured: gateway_config.get("provider").filter(|_| loaded.file_exists),
        local_base_url: &args.local_provider_url,
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let demo = match &choice {
        Choice::Demo { .. } => Some(DemoProvider::start().await.context("cannot start the demo provider")?),
        _ => None,
    };

    let runtime_dir = RuntimeDir::create()?;
    let broker_socket = runtime_dir.join("broker.sock");
    let worker_socket = runtime_dir.join("worker.sock");
    stack::set(&mut broker_config, "socket.path", json!(broker_socket));
    match (&choice, &demo) {
        (Choice::Local { base_url, .. }, _) => stack::set(
            &mut broker_config,
            &format!("providers.{}", provider_choice::LOCAL_PROVIDER_ID),
            json!({"kind": "openai-compatible", "base_url": base_url}),
        ),
        (Choice::Demo { .. }, Some(demo)) => stack::set(
            &mut broker_config,
            &format!("providers.{}", provider_choice::DEMO_PROVIDER_ID),
            json!({"kind": "openai-compatible", "base_url": demo.base_url()}),
        ),
        _ => {}
    }
    stack::set(&mut gateway_config, "provider", choice.gateway_provider());
    stack::set(&mut gateway_config, "server.port", json!(port));
    stack::set(&mut gateway_config, "runtime.workspace_root", json!(workspace_root));
    let broker_config_file = runtime_dir.write_json("broker.json", &broker_config)?;
    let worker_config_file =
        runtime_dir.write_json("worker.json", &stack::worker_config(&worker_socket, &workspace_root, as_root))?;
    let gateway_config_file = runtime_dir.write_json("gateway.json", &gateway_config)?;

    let spec = |name: &'static str, program: &PathBuf, args: Vec<OsString>| ChildSpec {
        name,
        program: program.clone(),
        args,
        env: Some(stack::daemon_env()),
        notify_socket: runtime_dir.join(&format!("notify-{name}.sock")),
    };
    // The broker alone inherits the user's environment: it is where provider keys belong.
    let broker = ChildSpec {
        env: None,
        ..spec("spiderweb-broker", &binaries.broker, os_args(["--config".as_ref(), broker_config_file.as_os_str()]))
    };
    let worker = spec(
        "spiderweb-worker",
        &binaries.worker,
        os_args(["supervise".as_ref(), "--config".as_ref(), worker_config_file.as_os_str()]),
    );
    let gateway = spec(
        "spiderweb",
        &binaries.gateway,
        os_args([
            "--config".as_ref(),
            gateway_config_file.as_os_str(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
            "--broker-socket".as_ref(),
            broker_socket.as_os_str(),
            "--worker-socket".as_ref(),
            worker_socket.as_os_str(),
        ]),
    );

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    // Separate tokens so the gateway can be stopped before the daemons it talks to.
    let stop_gateway = CancellationToken::new();
    let stop_daemons = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for child in [broker, worker] {
        tasks.spawn(supervise::supervise(child, stop_daemons.clone(), reports_tx.clone()));
    }
    let mut pids: Vec<(&'static str, u32)> = Vec::new();
    let mut gateway_status = None;
    let mut gateway_started = false;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            Some(Report::Ready { name, pid, status }) = reports.recv() => {
                if let Some(entry) = pids.iter_mut().find(|(n, _)| *n == name) {
                    entry.1 = pid;
                    eprintln!("spiderweb up: {name} is ready again (pid {pid})");
                    continue;
                }
                pids.push((name, pid));
                if name == "spiderweb" {
                    gateway_status = status;
                }
                if pids.len() == 2 && !gateway_started {
                    gateway_started = true;
                    tasks.spawn(supervise::supervise(gateway.clone(), stop_gateway.clone(), reports_tx.clone()));
                }
                if pids.len() == 3 {
                    print_banner(&state_dir, port, gateway_status.as_deref(), &choice, &runtime_dir, &pids, started);
                }
            }
            Some(ended) = tasks.join_next() => {
                break match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(anyhow::anyhow!("a supervision task failed: {e}")),
                };
            }
            _ = term.recv() => { eprintln!("spiderweb up: SIGTERM: stopping"); break Ok(()); }
            _ = int.recv() => { eprintln!("spiderweb up: interrupted: stopping"); break Ok(()); }
        }
    };
    stop_gateway.cancel();
    // The gateway drains first; then the broker and the worker supervisor.
    while tasks.len() > 2 {
        if tasks.join_next().await.is_none() {
            break;
        }
    }
    stop_daemons.cancel();
    while let Some(ended) = tasks.join_next().await {
        if let Ok(Err(e)) = ended {
            eprintln!("spiderweb up: {e}");
        }
    }
    drop(demo);
    drop(runtime_dir);
    eprintln!("spiderweb up: stopped");
    outcome
}

fn print_banner(
    state_dir: &std::path::Path,
    port: u16,
    gateway_status: Option<&str>,
    choice: &Choice,
    runtime_dir: &RuntimeDir,
    pids: &[(&'static str, u32)],
    started: Instant,
) {
    let url = gateway_status
        .and_then(|s| s.strip_prefix("serving on "))
        .map_or_else(|| format!("ws://127.0.0.1:{port}/"), str::to_owned);
    let pid_of = |name: &str| pids.iter().find(|(n, _)| *n == name).map_or(0, |(_, pid)| *pid);
    // The first line is machine-readable (tests and scripts parse it); the rest is for people.
    println!("spiderweb up: ready at {url} in {} ms", started.elapsed().as_millis());
    println!("  tokens:   {} (admin and user; mode 0600)", state_dir.join(crate::tokens::FILE_NAME).display());
    println!("  provider: {}", choice.describe());
    println!("  runtime:  {} (broker.sock, worker.sock; removed on exit)", runtime_dir.path().display());
    println!(
        "  pids:     broker {} worker {} gateway {}",
        pid_of("spiderweb-broker"),
        pid_of("spiderweb-worker"),
        pid_of("spiderweb")
    );
    let chat = if port == DEFAULT_PORT { "spiderweb chat".to_owned() } else { format!("spiderweb chat --url {url}") };
    println!("next: {chat}    (Ctrl-C here stops everything)");
}

fn os_args<const N: usize>(args: [&std::ffi::OsStr; N]) -> Vec<OsString> {
    args.iter().map(|a| a.to_os_string()).collect()
}

/// Port 0 becomes a concrete free port, so a restarted gateway comes back on the same one.
fn resolve_port(port: u16) -> anyhow::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    let probe =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| anyhow::anyhow!("cannot find a free port: {e}"))?;
    Ok(probe.local_addr()?.port())
}

/// The broker's own default config file (`spiderweb-broker`'s `--config` default).
fn broker_config_path() -> PathBuf {
    std::env::var_os("SPIDERWEB_BROKER_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| spiderweb_service::config::home_dir().join(".config/spiderweb/broker.json"))
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
