//! `spiderweb-fs-mount`: the client and router of spec §9 — one-shot commands and a FUSE mount.
//!
//! Endpoints come from `--endpoint` flags and/or a gateway's workspace (`--workspace-url`,
//! §9.2); in `mount` mode the workspace is fetched again every `--workspace-sync-interval-ms`.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use spiderweb_fsnode::client::CallError;
use spiderweb_fsnode::control::ControlUrl;
use spiderweb_fsnode::router::workspace::Workspace;
use spiderweb_fsnode::router::{EndpointConfig, EndpointSpec, Router};

#[derive(Parser, Debug)]
#[command(name = "spiderweb-fs-mount", version, about = "Mount client and router for spiderweb fs nodes")]
struct Cli {
    /// `<name>=<ws-url>[#<export>][@<mount>]`, repeatable; endpoints sharing a mount path fail
    /// over to each other. Default `a=ws://127.0.0.1:18891/v2/fs` at `/a`.
    #[arg(long = "endpoint", value_parser = EndpointSpec::parse)]
    endpoints: Vec<EndpointSpec>,
    /// Token for every `--endpoint`'s hello, and the bearer token of `--workspace-url`.
    #[arg(long, env = "SPIDERWEB_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Gateway whose workspace (`control.workspace_status`) lists the mounts: `ws://host:port/`.
    #[arg(long)]
    workspace_url: Option<String>,
    /// Project whose workspace is mounted (default: the session's active project).
    #[arg(long, requires = "workspace_url")]
    project_id: Option<String>,
    #[arg(long, requires = "project_id")]
    project_token: Option<String>,
    /// How often `mount` re-reads the workspace and adds/removes endpoints.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    workspace_sync_interval_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the attributes of a path as one JSON line.
    Getattr {
        path: String,
    },
    /// Print one page of a directory listing as one JSON line.
    Readdir {
        path: String,
        #[arg(default_value_t = 0)]
        cookie: u64,
        #[arg(default_value_t = 256)]
        max: u32,
    },
    /// Write a file's bytes to stdout.
    Cat {
        path: String,
    },
    /// Replace a file's content (created if missing).
    Write {
        path: String,
        content: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        old: String,
        new: String,
    },
    Truncate {
        path: String,
        size: u64,
    },
    /// Router status as JSON (probes every endpoint first unless --no-probe).
    Status {
        #[arg(long)]
        no_probe: bool,
    },
    /// Mount the namespace with FUSE until SIGINT/SIGTERM or unmount.
    Mount {
        mountpoint: std::path::PathBuf,
    },
}

/// Reads per request of `cat`.
const CAT_CHUNK: u32 = 256 * 1024;

fn main() -> ExitCode {
    spiderweb_service::logging::init(spiderweb_service::logging::LogFormat::detect(), "warn", "SPIDERWEB_LOG");
    let mut cli = Cli::parse();
    if cli.endpoints.is_empty() && cli.workspace_url.is_none() {
        cli.endpoints.push(EndpointSpec::parse("a=ws://127.0.0.1:18891/v2/fs").expect("default endpoint parses"));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spiderweb-fs-mount: {e}");
            return ExitCode::FAILURE;
        }
    };
    let auth_token = cli.auth_token.filter(|t| !t.is_empty());
    let flag_endpoints: Vec<EndpointConfig> =
        cli.endpoints.into_iter().map(|spec| EndpointConfig { spec, auth_token: auth_token.clone() }).collect();
    let mut endpoints = flag_endpoints.clone();
    let workspace = match &cli.workspace_url {
        None => None,
        Some(url) => {
            let hydrated = ControlUrl::parse(url).map_err(anyhow::Error::from).and_then(|control| {
                let workspace = Workspace {
                    control,
                    token: auth_token.clone(),
                    project_id: cli.project_id.clone(),
                    project_token: cli.project_token.clone(),
                };
                let found = runtime.block_on(workspace.fetch())?;
                Ok((workspace, found))
            });
            match hydrated {
                Ok((workspace, found)) => {
                    endpoints.extend(found);
                    Some(workspace)
                }
                Err(e) => {
                    eprintln!("spiderweb-fs-mount: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let router = Router::empty();
    router.set_endpoints(endpoints);
    if let Command::Mount { mountpoint } = cli.command {
        if let Some(workspace) = workspace {
            let _enter = runtime.enter();
            let every = std::time::Duration::from_millis(cli.workspace_sync_interval_ms);
            workspace.spawn_sync(Arc::downgrade(&router), every, flag_endpoints);
        }
        return match spiderweb_fsnode::fuse::mount(router, runtime, &mountpoint) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spiderweb-fs-mount: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = runtime.block_on(run(&router, cli.command));
    let failovers = router.failover_events_total();
    if failovers > 0 {
        eprintln!("spiderweb-fs-mount: failover_events_total={failovers}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spiderweb-fs-mount: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(router: &Arc<Router>, command: Command) -> Result<(), CallError> {
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| CallError::Transport(format!("stdout: {e}"));
    match command {
        Command::Getattr { path } => {
            let attr = router.getattr(&path).await?;
            writeln!(out, "{}", serde_json::to_string(&attr).unwrap_or_default()).map_err(io)?;
        }
        Command::Readdir { path, cookie, max } => {
            let page = router.readdir(&path, cookie, max).await?;
            writeln!(out, "{}", serde_json::to_string(&page).unwrap_or_default()).map_err(io)?;
        }
        Command::Cat { path } => {
            let mut off = 0u64;
            loop {
                let (data, eof) = router.read(&path, off, CAT_CHUNK).await?;
                out.write_all(&data).map_err(io)?;
                off += data.len() as u64;
                if eof || data.is_empty() {
                    break;
                }
            }
            out.flush().map_err(io)?;
            router.release(&path).await;
        }
        Command::Write { path, content } => {
            router.create(&path, 0o644, false).await?;
            router.truncate(&path, 0).await?;
            router.write(&path, 0, content.as_bytes()).await?;
            router.release(&path).await;
            writeln!(out, "ok").map_err(io)?;
        }
        Command::Mkdir { path } => ok(&mut out, router.mkdir(&path).await)?,
        Command::Rmdir { path } => ok(&mut out, router.rmdir(&path).await)?,
        Command::Unlink { path } => ok(&mut out, router.unlink(&path).await)?,
        Command::Rename { old, new } => ok(&mut out, router.rename(&old, &new).await)?,
        Command::Truncate { path, size } => ok(&mut out, router.truncate(&path, size).await)?,
        Command::Status { no_probe } => {
            if !no_probe {
                router.probe_all().await;
            }
            writeln!(out, "{}", router.status()).map_err(io)?;
        }
        Command::Mount { .. } => unreachable!("handled before the runtime is entered"),
    }
    Ok(())
}

fn ok(out: &mut impl std::io::Write, result: Result<(), CallError>) -> Result<(), CallError> {
    result?;
    writeln!(out, "ok").map_err(|e| CallError::Transport(format!("stdout: {e}")))
}
