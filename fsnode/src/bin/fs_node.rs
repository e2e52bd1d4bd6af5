//! `spiderweb-fs-node`: serves directories over `unified-v2-fs` on `/v2/fs`.
//!
//! Start-up order is a security property: open the exports and bind the listener, then
//! confine this (still single-threaded) process with Landlock and seccomp, and only then start
//! the tokio runtime and the watcher thread, which inherit the confinement. If confinement is
//! impossible the node exits with an error instead of serving unconfined. The service
//! manager's notification socket is connected before confinement too (the seccomp filter
//! forbids creating sockets), and its sender thread started after.
//!
//! Under systemd the auth token may come as the credential `auth-token`
//! (`LoadCredential=auth-token:…`), so it never sits in the environment or the unit; in
//! daemon mode so may the control, invite and operator tokens (`control-token`,
//! `invite-token`, `operator-token`).
//!
//! With `--control-url` the node runs as a daemon (spec §8, `spiderweb_fsnode::daemon`): it
//! does not listen; it pairs with the gateway and serves through a reverse tunnel. The same
//! order holds: the state file is read and the gateway's address resolved before confinement,
//! which then also allows TCP to the gateway's port and file rights in the state directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use spiderweb_fsnode::control::ControlUrl;
use spiderweb_fsnode::daemon::services::{self, Advertised};
use spiderweb_fsnode::daemon::state_file::StateFile;
use spiderweb_fsnode::daemon::{Daemon, PairMode};
use spiderweb_fsnode::node::{DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, NodeConfig, NodeState};
use spiderweb_fsnode::sandbox::DaemonAccess;
use spiderweb_policy::export::ExportSpec;
use spiderweb_service::activation::Activation;
use spiderweb_service::logging::{self, LogFormat};
use spiderweb_service::notify::{ConnectedNotifier, Notifier};

/// Names of the systemd credentials the node reads when the matching flag is absent
/// (`LoadCredential=<name>:<file>`), so tokens stay out of command lines and environments.
const TOKEN_CREDENTIAL: &str = "auth-token";
const CONTROL_TOKEN_CREDENTIAL: &str = "control-token";
const INVITE_TOKEN_CREDENTIAL: &str = "invite-token";
const OPERATOR_TOKEN_CREDENTIAL: &str = "operator-token";
/// Longest token file read (a token is a few dozen bytes; a larger file is a mistake).
const MAX_TOKEN_BYTES: u64 = 4096;

#[derive(Parser, Debug)]
#[command(name = "spiderweb-fs-node", version, about = "Export directories over unified-v2-fs")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port (0 = any free port; the chosen one is printed as `listening on <addr>`).
    #[arg(long, default_value_t = 18891)]
    port: u16,
    /// `<name>=<path>[:ro|:rw]`, repeatable; default `work=.` read-write.
    #[arg(long = "export")]
    exports: Vec<String>,
    /// Token the hello must carry.
    #[arg(long, env = "SPIDERWEB_FS_NODE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Concurrent connections accepted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_connections: u32,
    /// Milliseconds a new connection has to send its hello before it is closed.
    #[arg(long, default_value_t = DEFAULT_HELLO_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    hello_timeout_ms: u64,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// `--pair-mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PairModeArg {
    Invite,
    Request,
}

/// Daemon mode (spec §8): given `--control-url`, the node pairs with that gateway and serves
/// through a reverse tunnel instead of listening.
#[derive(clap::Args, Debug)]
struct DaemonArgs {
    /// Gateway to pair with and tunnel to: `ws://host:port/`. Enables daemon mode.
    #[arg(long)]
    control_url: Option<String>,
    /// Bearer token for the gateway's control channel. A user token is enough and
    /// recommended (the invite and the node secret authorise pairing, lease refresh and
    /// service upserts); only --pair-mode request needs the admin token.
    #[arg(long, env = "SPIDERWEB_AUTH_TOKEN", hide_env_values = true, requires = "control_url")]
    control_auth_token: Option<String>,
    /// Operator token sent with node_join_approve (when the gateway requires one).
    #[arg(long, requires = "control_url")]
    operator_token: Option<String>,
    /// `invite` (implied by --invite-token) or `request` (default).
    #[arg(long, value_enum, requires = "control_url")]
    pair_mode: Option<PairModeArg>,
    #[arg(long, requires = "control_url")]
    invite_token: Option<String>,
    #[arg(long, default_value = "spiderweb-fs-node")]
    node_name: String,
    /// The node's own fs URL, sent when pairing (`ws://…/v2/fs…`).
    #[arg(long, requires = "control_url")]
    fs_url: Option<String>,
    /// Where the pairing credentials and lease are kept (0600; give it a directory of its own).
    #[arg(long, default_value = ".spiderweb-fs-node-state.json")]
    state_file: PathBuf,
    #[arg(long, default_value_t = 900_000, value_parser = clap::value_parser!(u64).range(1_000..=2_592_000_000))]
    lease_ttl_ms: u64,
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    refresh_interval_ms: u64,
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    reconnect_backoff_ms: u64,
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    reconnect_backoff_max_ms: u64,
    /// Do not advertise the fs service.
    #[arg(long)]
    no_fs_service: bool,
    /// Advertise a terminal service `terminal-<id>` (repeatable).
    #[arg(long = "terminal-id")]
    terminal_ids: Vec<String>,
    /// `key=value` label of the node (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
}

/// Longest token accepted from the command line (the gateway's limit).
const MAX_TOKEN_CHARS: usize = 256;

impl DaemonArgs {
    /// Fills the tokens not given as flags from systemd credentials.
    fn tokens_from_credentials(&mut self) -> anyhow::Result<()> {
        for (token, name) in [
            (&mut self.control_auth_token, CONTROL_TOKEN_CREDENTIAL),
            (&mut self.invite_token, INVITE_TOKEN_CREDENTIAL),
            (&mut self.operator_token, OPERATOR_TOKEN_CREDENTIAL),
        ] {
            if token.as_ref().is_none_or(String::is_empty) {
                *token = credential(name)?;
            }
        }
        Ok(())
    }

    /// The checked settings, or a message naming the flag. Resolves the gateway's address.
    fn settings(&self, control_url: &str, exports: &[ExportSpec]) -> anyhow::Result<Daemon> {
        let control = ControlUrl::parse(control_url)?;
        let token_ok =
            |t: &Option<String>| t.as_ref().is_none_or(|t| (1..=MAX_TOKEN_CHARS).contains(&t.chars().count()));
        for (flag, token) in [
            ("--control-auth-token", &self.control_auth_token),
            ("--operator-token", &self.operator_token),
            ("--invite-token", &self.invite_token),
        ] {
            anyhow::ensure!(token_ok(token), "{flag} must be 1-{MAX_TOKEN_CHARS} characters");
        }
        let pairing = match (self.pair_mode, &self.invite_token) {
            (Some(PairModeArg::Invite) | None, Some(token)) => PairMode::Invite(token.clone()),
            (Some(PairModeArg::Invite), None) => anyhow::bail!("--pair-mode invite needs --invite-token"),
            (Some(PairModeArg::Request), Some(_)) => {
                anyhow::bail!("--invite-token cannot be used with --pair-mode request")
            }
            (Some(PairModeArg::Request) | None, None) => PairMode::Request,
        };
        let name_ok =
            (1..=128).contains(&self.node_name.chars().count()) && !self.node_name.chars().any(char::is_control);
        anyhow::ensure!(name_ok, "--node-name must be 1-128 characters without control characters");
        if let Some(url) = &self.fs_url {
            anyhow::ensure!(
                url.starts_with("ws://") && url.contains("/v2/fs") && url.len() <= 512,
                "--fs-url must be a ws:// URL containing /v2/fs, at most 512 characters"
            );
        }
        anyhow::ensure!(
            self.refresh_interval_ms < self.lease_ttl_ms,
            "--refresh-interval-ms ({}) must be shorter than --lease-ttl-ms ({}), or the lease lapses between refreshes",
            self.refresh_interval_ms,
            self.lease_ttl_ms
        );
        let fs = (!self.no_fs_service)
            .then(|| (exports.iter().any(|e| e.access != spiderweb_policy::export::Access::ReadOnly), exports.len()));
        Ok(Daemon {
            control,
            control_token: self.control_auth_token.clone().filter(|t| !t.is_empty()),
            operator_token: self.operator_token.clone(),
            pairing,
            node_name: self.node_name.clone(),
            fs_url: self.fs_url.clone(),
            lease_ttl_ms: self.lease_ttl_ms,
            refresh_interval: Duration::from_millis(self.refresh_interval_ms),
            backoff_base: Duration::from_millis(self.reconnect_backoff_ms),
            backoff_max: Duration::from_millis(self.reconnect_backoff_max_ms),
            advertised: Advertised {
                fs,
                terminals: services::parse_terminals(&self.terminal_ids)?,
                labels: services::parse_labels(&self.labels)?,
            },
        })
    }
}

fn main() -> ExitCode {
    // Reads and clears LISTEN_FDS: before any thread exists.
    // SAFETY: single-threaded here.
    let activation = match unsafe { Activation::take() } {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spiderweb-fs-node: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: as above.
    let notifier = unsafe { Notifier::connect() };
    logging::init(LogFormat::detect(), "info", "SPIDERWEB_LOG");
    match run(Cli::parse(), activation, notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spiderweb-fs-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut cli: Cli, activation: Activation, notifier: ConnectedNotifier) -> anyhow::Result<()> {
    let exports = ExportSpec::parse_all(&cli.exports)?;
    let auth_token = match cli.auth_token.clone().filter(|t| !t.is_empty()) {
        Some(token) => Some(token),
        None => credential(TOKEN_CREDENTIAL)?,
    };
    if cli.daemon.control_url.is_some() {
        cli.daemon.tokens_from_credentials()?;
    }
    let config = |auth_token| NodeConfig {
        exports: exports.clone(),
        auth_token,
        max_connections: cli.max_connections as usize,
        hello_timeout: Duration::from_millis(cli.hello_timeout_ms),
        hide_sandbox_dir: false,
        events_to_subscribers_only: false,
    };
    match &cli.daemon.control_url {
        Some(url) => {
            let daemon = cli.daemon.settings(url, &exports)?;
            // The node secret becomes the token once paired; the flag only earns a warning.
            run_daemon(daemon, &cli.daemon.state_file, NodeState::new(config(None))?, auth_token, activation, notifier)
        }
        None => run_listener(&cli, NodeState::new(config(auth_token))?, activation, notifier),
    }
}

fn run_listener(
    cli: &Cli,
    state: Arc<NodeState>,
    mut activation: Activation,
    notifier: ConnectedNotifier,
) -> anyhow::Result<()> {
    // A socket passed by systemd (`FileDescriptorName=fs`) replaces --bind/--port.
    let listener = match activation.tcp("fs")? {
        Some(passed) => passed,
        None => {
            let listener = std::net::TcpListener::bind(SocketAddr::new(cli.bind, cli.port))?;
            listener.set_nonblocking(true)?;
            listener
        }
    };
    for name in activation.unclaimed() {
        tracing::warn!(name, "ignoring a socket passed by the service manager: the node serves one socket");
    }
    spiderweb_fsnode::sandbox::confine(&state.exports, None)?;
    let notifier = notifier.start();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        state.start_watcher()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("listening on {}", listener.local_addr()?);
        log_exports(&state);
        notifier.ready(&format!("serving {} export(s)", state.exports.len()));
        // Ends with the runtime, which is what the watchdog watches.
        let _watchdog = notifier.spawn_watchdog();
        tokio::select! {
            () = spiderweb_fsnode::listener::run(listener, state) => Ok(()),
            r = until_signalled(&notifier) => r,
        }
    })
}

fn run_daemon(
    daemon: Daemon,
    state_path: &std::path::Path,
    state: Arc<NodeState>,
    auth_token: Option<String>,
    activation: Activation,
    notifier: ConnectedNotifier,
) -> anyhow::Result<()> {
    let file = StateFile::open(state_path)?;
    let record = file.load()?;
    for name in activation.unclaimed() {
        tracing::warn!(
            name,
            "ignoring a socket passed by the service manager: in daemon mode the node does not listen"
        );
    }
    let access = DaemonAccess { state_dir: file.dir(), gateway_port: daemon.control.port() };
    spiderweb_fsnode::sandbox::confine(&state.exports, Some(access)).context("confining the node")?;
    let notifier = notifier.start();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        state.start_watcher()?;
        log_exports(&state);
        notifier.ready(&format!("pairing with {}", daemon.control.url("/")));
        let _watchdog = notifier.spawn_watchdog();
        tokio::select! {
            r = daemon.run(state, file, record, auth_token.as_deref()) => Ok(r?),
            r = until_signalled(&notifier) => r,
        }
    })
}

fn log_exports(state: &NodeState) {
    for export in &state.exports {
        tracing::info!(name = %export.spec.name, path = %export.spec.path, read_only = export.read_only(), "export");
    }
}

/// Returns on SIGINT/SIGTERM, after telling the service manager.
async fn until_signalled(notifier: &Notifier) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    notifier.stopping("shutting down");
    notifier.flush(Duration::from_secs(1));
    Ok(())
}

/// The token in `$CREDENTIALS_DIRECTORY/<name>`, if systemd passed one.
fn credential(name: &str) -> anyhow::Result<Option<String>> {
    use std::io::Read as _;
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir).join(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read the credential {}: {e}", path.display()),
    };
    let mut text = String::new();
    file.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        anyhow::bail!("the credential {} is larger than {MAX_TOKEN_BYTES} bytes", path.display());
    }
    Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
}
