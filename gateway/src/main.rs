//! `spiderweb`: runs the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use spiderweb_fsnode::node::{NodeConfig, NodeState};
use spiderweb_gateway::plane::{ControlPlane, ScopeTokenDigests, nodes, now_ms};
use spiderweb_gateway::runtime::{Runtime, Settings};
use spiderweb_gateway::store::Store;
use spiderweb_gateway::store::sqlite::SqliteStore;
use spiderweb_gateway::tokens::{Origin, RoleTokens};
use spiderweb_gateway::{config, fs_exports, metrics::Metrics, server};
use spiderweb_policy::export::ExportSpec;
use spiderweb_service::activation::Activation;
use spiderweb_service::logging::{self, LogFormat};
use spiderweb_service::notify::Notifier;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
    Journal,
}

/// The spiderweb gateway: WebSocket control plane and world filesystem for AI agents.
#[derive(Parser, Debug)]
#[command(name = "spiderweb", version)]
struct Cli {
    /// Config file (default: $SPIDERWEB_CONFIG, else ~/.config/spiderweb/config.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to bind (overrides server.bind).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// Port to listen on; 0 picks a free one (overrides server.port).
    #[arg(long)]
    port: Option<u16>,
    /// Where tokens and the database live (overrides runtime.ltm_directory).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Log line format on stderr: text for people, json for collectors, journal for journald
    /// (syslog priority prefixes). Default: journal when stderr is the journal, else text.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// The broker's socket (overrides runtime.broker_socket).
    #[arg(long, env = "SPIDERWEB_BROKER_SOCKET")]
    broker_socket: Option<PathBuf>,
    /// The worker supervisor's socket (overrides runtime.worker_socket).
    #[arg(long, env = "SPIDERWEB_WORKER_SOCKET")]
    worker_socket: Option<PathBuf>,
    /// Without a subcommand, spiderweb serves.
    #[command(subcommand)]
    command: Option<spiderweb_gateway::cli::Command>,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return spiderweb_gateway::cli::run(command);
    }
    // Both read and clear environment variables, so they run before any thread exists.
    // SAFETY: nothing else runs yet; the tokio runtime is built below.
    let activation = match unsafe { Activation::take() } {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spiderweb: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: as above.
    let notifier = unsafe { Notifier::take() };
    let config_path = config::config_path(cli.config.as_deref());
    let loaded = match config::load(&config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spiderweb: {e}");
            return ExitCode::from(2);
        }
    };
    let log_format = match cli.log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Journal) => LogFormat::Journal,
        None => LogFormat::detect(),
    };
    logging::init(log_format, &loaded.config.log.level, "SPIDERWEB_LOG");
    for warning in &loaded.warnings {
        tracing::warn!(config = %loaded.path.display(), "{warning}");
    }
    let mut cfg = loaded.config;
    if let Some(bind) = cli.bind {
        cfg.server.bind = bind;
    }
    if let Some(port) = cli.port {
        cfg.server.port = port;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spiderweb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sockets = Sockets { broker: cli.broker_socket, worker: cli.worker_socket };
    match runtime.block_on(run(cfg, cli.state_dir, sockets, activation, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spiderweb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The internal sockets given on the command line.
struct Sockets {
    broker: Option<PathBuf>,
    worker: Option<PathBuf>,
}

async fn run(
    cfg: config::Config,
    state_dir_flag: Option<PathBuf>,
    sockets: Sockets,
    mut activation: Activation,
    notifier: Notifier,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    raise_fd_limit();
    let state_dir = config::state_dir(state_dir_flag.as_deref(), &cfg);
    create_private_dir(&state_dir).with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let now = now_ms();
    let (tokens, origin) = RoleTokens::load_or_create(&state_dir, now)?;
    let db_path = state_dir.join(&cfg.runtime.ltm_filename);
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&db_path).with_context(|| format!("cannot open database {}", db_path.display()))?);
    let agents_dir = state_dir.join(&cfg.runtime.agents_dir);
    let token_file = tokens.path().to_path_buf();
    let plane =
        ControlPlane::open(store.clone(), tokens, ScopeTokenDigests::from_env(), state_dir.clone(), &agents_dir, now)
            .context("cannot load the control-plane state")?;
    let listener = match activation.tcp("http")? {
        Some(passed) => {
            tracing::info!("serving on the socket passed by the service manager");
            tokio::net::TcpListener::from_std(passed)?
        }
        None => server::bind(&cfg)
            .await
            .with_context(|| format!("cannot listen on {}:{}", cfg.server.bind, cfg.server.port))?,
    };
    let addr = listener.local_addr()?;
    let metrics_listener = match (activation.tcp("metrics")?, metrics_port_from_env()?) {
        (Some(passed), _) => Some(tokio::net::TcpListener::from_std(passed)?),
        (None, Some(port)) => Some(
            tokio::net::TcpListener::bind((cfg.server.bind, port))
                .await
                .with_context(|| format!("cannot listen on {}:{port} (SPIDERWEB_METRICS_PORT)", cfg.server.bind))?,
        ),
        (None, None) => None,
    };
    for name in activation.unclaimed() {
        tracing::warn!(
            name,
            "ignoring a socket passed by the service manager: spiderweb serves only \"http\" and \"metrics\""
        );
    }
    if origin == Origin::Created {
        tracing::warn!(path = %token_file.display(), "created new admin and user tokens");
    }
    // Handlers exist before anyone can learn our address, so an early SIGTERM is graceful too.
    let signals = install_signal_handlers()?;
    // The first stdout line is machine-readable (tests and scripts parse it); the rest is for people.
    println!("spiderweb listening on ws://{addr}/");
    println!("  tokens:   {} (admin and user; mode 0600)", token_file.display());
    println!("  state:    {}", state_dir.display());
    println!("  connect:  send 'Authorization: Bearer <token>' to ws://{addr}/ (unified-v2)");
    println!("  health:   http://{addr}/readyz   metrics: http://{addr}/metrics");
    let shutdown = CancellationToken::new();
    let settings = Settings::from_config(&cfg, &state_dir, sockets.broker, sockets.worker);
    println!(
        "  provider: {} model {} (through the broker at {})",
        settings.broker_provider,
        settings.model,
        settings.broker_socket.display()
    );
    let runtime = Arc::new(Runtime::new(settings, store, shutdown.clone()).context("cannot start the agent runtime")?);
    let fs_node = local_exports(&cfg.fs, &runtime, &shutdown)?;
    if let Some(node) = &fs_node {
        tokio::spawn(fs_exports::watch_jobs(Arc::clone(node), Arc::clone(&runtime), shutdown.clone()));
    }
    let local_node = local_node(&cfg, addr);
    let mut metrics = Metrics::new();
    metrics.register_nodes(&plane);
    let shared = server::Shared::new(cfg, plane, metrics, runtime, fs_node, shutdown);
    match local_node {
        Some((local, mounts)) => {
            tokio::spawn(nodes::local::renew_forever(shared.clone(), local, mounts, shared.shutdown.clone()));
        }
        None => {
            if shared.plane.forget_node(nodes::local::LOCAL_NODE_ID).unwrap_or(false) {
                tracing::info!("fs.exports is gone: removed the local node and its mounts");
            }
        }
    }
    if let Some(listener) = metrics_listener {
        println!("  metrics port: http://{}/metrics", listener.local_addr()?);
        tokio::spawn(server::serve_metrics(listener, shared.clone()));
    }
    tracing::info!(%addr, "serving");
    notifier.ready(&format!("serving on ws://{addr}/"));
    let watchdog = notifier.spawn_watchdog();
    let signals = tokio::spawn(wait_for_signal(signals, shared.clone(), notifier));
    server::serve(listener, shared).await;
    signals.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The gateway's own exports (`fs.exports`), served on `/v2/fs` by the fs node's code, with
/// the synthetic `system-*` exports after them.
fn local_exports(
    fs: &config::FsConfig,
    runtime: &Arc<Runtime>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<NodeState>>> {
    use anyhow::Context as _;
    if fs.exports.is_empty() {
        return Ok(None);
    }
    let exports = ExportSpec::parse_all(&fs.exports).context("fs.exports")?;
    let mut names: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
    let config = NodeConfig {
        exports,
        auth_token: fs.token(),
        max_connections: fs.max_connections,
        hello_timeout: std::time::Duration::from_secs(10),
        hide_sandbox_dir: true,
        events_to_subscribers_only: true,
    };
    let node = NodeState::with_synthetic_exports(config, fs_exports::specs(runtime, shutdown))
        .context("cannot open the fs.exports (the names system-meta, system-chat and system-jobs are the gateway's)")?;
    names.extend(fs_exports::NAMES.map(String::from));
    println!("  fs:       ws://<this address>{} exports {}", server::FS_PATH, names.join(", "));
    Ok(Some(node))
}

/// The embedded node `spiderweb-local` and its `system` mounts, when `fs.exports` is set.
fn local_node(cfg: &config::Config, addr: std::net::SocketAddr) -> Option<(nodes::LocalNode, Vec<(String, String)>)> {
    let exports = ExportSpec::parse_all(&cfg.fs.exports).ok().filter(|e| !e.is_empty())?;
    let names: Vec<String> =
        exports.iter().map(|e| e.name.clone()).chain(fs_exports::NAMES.map(String::from)).collect();
    let local = nodes::LocalNode {
        id: nodes::local::LOCAL_NODE_ID.into(),
        name: nodes::local::LOCAL_NODE_ID.into(),
        fs_url: format!("ws://{addr}{}", server::FS_PATH),
        secret: cfg.fs.token()?,
        lease_ttl_ms: cfg.nodes.local_lease_ttl_ms,
    };
    Some((local, nodes::local::system_mounts(&names)))
}

/// `SPIDERWEB_METRICS_PORT` (spec unified-v2 §1): a separate plain-HTTP listener for the
/// operator endpoints, on the same bind address. Unset or empty: none.
fn metrics_port_from_env() -> anyhow::Result<Option<u16>> {
    match std::env::var("SPIDERWEB_METRICS_PORT") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse::<u16>().map(Some).map_err(|_| {
            anyhow::anyhow!("SPIDERWEB_METRICS_PORT must be a TCP port number (0-65535, 0 = any free port), not {v:?}")
        }),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("SPIDERWEB_METRICS_PORT is not valid UTF-8"),
    }
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn install_signal_handlers() -> anyhow::Result<Signals> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok((term, int))
}

async fn wait_for_signal((mut term, mut int): Signals, shared: Arc<server::Shared>, notifier: Notifier) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    notifier.stopping("draining connections");
    shared.shutdown.cancel();
}

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Each connection is a file descriptor; the default soft limit (often 1024) would cap the
/// gateway far below `server.max_connections`.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
