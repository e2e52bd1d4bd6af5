//! `spiderweb-broker`: hardens itself, loads its configuration, listens, serves until
//! SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use spiderweb_broker::codex::{CodexAuth, CodexSettings};
use spiderweb_broker::credentials::{EnvKeys, Resolver};
use spiderweb_broker::egress::{Egress, http_client};
use spiderweb_broker::providers::Catalogue;
use spiderweb_broker::server::{self, Listener, Shared};
use spiderweb_broker::{config, hardening, paths};
use spiderweb_service::activation::Activation;
use spiderweb_service::logging::{self, LogFormat};
use spiderweb_service::notify::Notifier;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "spiderweb-broker", version, about = "spiderweb's credential broker")]
struct Args {
    /// Config file (default `$SPIDERWEB_BROKER_CONFIG`, else `~/.config/spiderweb/broker.json`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Socket path (default `socket.path`, else `$XDG_RUNTIME_DIR/spiderweb/broker.sock`).
    /// Ignored when systemd passes a socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log format on stderr: text, json, or journal (syslog priority prefixes).
    /// Default: journal when stderr is the journal, else text.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
    Journal,
}

fn main() -> std::process::ExitCode {
    // Before anything else, and before the runtime has threads: see hardening.rs.
    if let Err(e) = hardening::apply() {
        eprintln!("spiderweb-broker: {e}; refusing to run unprotected");
        return std::process::ExitCode::FAILURE;
    }
    // Both read and clear environment variables: before the runtime starts threads.
    // SAFETY: single-threaded here.
    let activation = match unsafe { Activation::take() } {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spiderweb-broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // SAFETY: as above.
    let notifier = unsafe { Notifier::take() };
    let args = Args::parse();
    let config_path = config::config_path(args.config.as_deref());
    let loaded = match config::load(&config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spiderweb-broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let format = match args.log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Journal) => LogFormat::Journal,
        None => LogFormat::detect(),
    };
    logging::init(format, &loaded.config.log.level, "SPIDERWEB_BROKER_LOG");
    for warning in &loaded.warnings {
        tracing::warn!(path = %config_path.display(), "{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(args, loaded.config, activation, notifier)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, config: config::Config, mut activation: Activation, notifier: Notifier) -> anyhow::Result<()> {
    let catalogue = Catalogue::build(&config.providers).map_err(anyhow::Error::msg)?;
    let http = http_client(&config.limits);
    let codex = CodexAuth::new(
        CodexSettings {
            auth_path: CodexSettings::auth_path(config.codex.home.clone()),
            token_url: CodexSettings::token_url(config.codex.token_url.clone()),
            client_id: config.codex.client_id.clone(),
            stale_after: Duration::from_secs(config.codex.refresh_after_days * 86_400),
            exchange_timeout: config.limits.response_timeout(),
        },
        http.clone(),
    );
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()).map(PathBuf::from);
    let resolver = Arc::new(Resolver::new(
        credentials_dir,
        EnvKeys::from_process(catalogue.iter().filter_map(|p| p.plugin.as_ref()?.key_env.as_deref())),
        Arc::new(codex),
        config.limits.credential_cache(),
    ));
    let egress = Egress::new(http, config.limits.clone(), catalogue, resolver.clone());
    let listener = match activation.unix("broker")? {
        Some(l) => {
            tracing::info!("listening on the socket passed by systemd");
            Listener::Activated(tokio::net::UnixListener::from_std(l)?)
        }
        None => {
            let path = args.socket.or(config.socket.path.clone()).unwrap_or_else(paths::default_socket_path);
            let listener = server::bind(&path, config.socket.group)?;
            tracing::info!(socket = %path.display(), non_dumpable = hardening::is_non_dumpable(), "spiderweb-broker listening");
            Listener::Created { listener, path }
        }
    };
    let shared = Arc::new(Shared {
        access: config.access,
        own_uid: nix::unistd::getuid().as_raw(),
        limits: config.limits,
        egress,
        resolver,
    });
    for name in activation.unclaimed() {
        tracing::warn!(name, "ignoring a socket passed by the service manager: the broker serves one socket");
    }
    // Handlers first: a SIGTERM that follows READY=1 at once must not meet the default action
    // (which would end the broker without STOPPING=1 or removing its socket).
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    notifier.ready("serving provider requests");
    let watchdog = notifier.spawn_watchdog();
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let stopping = notifier.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        stopping.stopping("finishing requests in flight");
        signals.cancel();
    });
    server::run(listener, shared, shutdown).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    // STOPPING=1 goes out before the process does.
    notifier.flush(Duration::from_secs(1));
    Ok(())
}
