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
//! (`LoadCredential=auth-token:…`), so it never sits in the environment or the unit.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use spiderweb_fsnode::node::{DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, NodeConfig, NodeState};
use spiderweb_policy::export::ExportSpec;
use spiderweb_service::activation::Activation;
use spiderweb_service::logging::{self, LogFormat};
use spiderweb_service::notify::{ConnectedNotifier, Notifier};

/// Name of the systemd credential holding the auth token.
const TOKEN_CREDENTIAL: &str = "auth-token";
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

fn run(cli: Cli, mut activation: Activation, notifier: ConnectedNotifier) -> anyhow::Result<()> {
    let exports = ExportSpec::parse_all(&cli.exports)?;
    let auth_token = match cli.auth_token.filter(|t| !t.is_empty()) {
        Some(token) => Some(token),
        None => credential_token()?,
    };
    let state = NodeState::new(NodeConfig {
        exports,
        auth_token,
        max_connections: cli.max_connections as usize,
        hello_timeout: std::time::Duration::from_millis(cli.hello_timeout_ms),
        hide_sandbox_dir: false,
        events_to_subscribers_only: false,
    })?;
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
    spiderweb_fsnode::sandbox::confine(&state.exports)?;
    let notifier = notifier.start();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        state.start_watcher()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        println!("listening on {}", listener.local_addr()?);
        for export in &state.exports {
            tracing::info!(name = %export.spec.name, path = %export.spec.path, read_only = export.read_only(), "export");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        notifier.ready(&format!("serving {} export(s)", state.exports.len()));
        // Ends with the runtime, which is what the watchdog watches.
        let _watchdog = notifier.spawn_watchdog();
        let shutdown = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            notifier.stopping("shutting down");
            notifier.flush(std::time::Duration::from_secs(1));
            anyhow::Ok(())
        };
        tokio::select! {
            () = spiderweb_fsnode::listener::run(listener, state) => Ok(()),
            r = shutdown => r,
        }
    })
}

/// The token from `$CREDENTIALS_DIRECTORY/auth-token`, if systemd passed one.
fn credential_token() -> anyhow::Result<Option<String>> {
    use std::io::Read as _;
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir).join(TOKEN_CREDENTIAL);
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
