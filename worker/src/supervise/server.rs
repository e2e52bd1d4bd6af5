//! The listener: binds the socket, admits only allowed peer uids (`SO_PEERCRED`), bounds the
//! number of concurrent workers, and stops on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use spiderweb_service::activation::Activation;
use spiderweb_service::notify::Notifier;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

use super::config::SupervisorConfig;
use super::connection;
use super::pool::WarmPool;
use crate::ids::IdSwitch;
use crate::launch::Launcher;

/// What every connection shares.
pub struct Shared {
    /// The configuration.
    pub config: SupervisorConfig,
    /// Starts workers (through per-tenant fork servers of this executable).
    pub launcher: Launcher,
    /// Concurrent workers.
    pub workers: Semaphore,
    /// How tenants get their own uids (if at all).
    pub switch_ids: IdSwitch,
    /// Confined workers started ahead of calls.
    pub warm: Arc<WarmPool>,
}

/// Serves until SIGTERM/SIGINT.
pub async fn serve(
    config: SupervisorConfig,
    switch_ids: IdSwitch,
    mut activation: Activation,
    notifier: Notifier,
) -> anyhow::Result<()> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let exe = std::env::current_exe()?;
    let (listener, created) = match activation.unix("worker")? {
        Some(passed) => {
            tracing::info!("listening on the socket passed by systemd");
            (UnixListener::from_std(passed)?, false)
        }
        None => (bind(&config.socket, config.socket_mode)?, true),
    };
    for name in activation.unclaimed() {
        tracing::warn!(name, "ignoring a socket passed by the service manager: the supervisor serves one socket");
    }
    let warm_ttl = std::time::Duration::from_millis(config.warm_ttl_ms);
    let shared = Arc::new(Shared {
        warm: Arc::new(WarmPool::new(config.warm_workers_per_plan, config.max_workers, warm_ttl)),
        workers: Semaphore::new(config.max_workers),
        switch_ids,
        launcher: Launcher::new(exe),
        config,
    });
    tracing::info!(socket = %shared.config.socket.display(), switch_ids = ?shared.switch_ids, "supervisor listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    notifier.ready("serving tool calls");
    let watchdog = notifier.spawn_watchdog();
    let mut expiry = tokio::time::interval(warm_ttl / 2);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let peer = match stream.peer_cred() {
                    Ok(cred) => cred.uid(),
                    Err(e) => { tracing::warn!(error = %e, "SO_PEERCRED failed; closing"); continue; }
                };
                if !shared.config.allowed_uids.admits(peer, own_uid) {
                    tracing::warn!(peer_uid = peer, "peer uid not allowed; closing");
                    continue;
                }
                tokio::spawn(connection::serve(stream, shared.clone()));
            }
            _ = expiry.tick() => {
                shared.warm.expire();
                shared.launcher.expire_fork_servers(warm_ttl);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notifier.stopping("stopping");
    if let Some(w) = watchdog {
        w.abort();
    }
    if created {
        let _ = std::fs::remove_file(&shared.config.socket);
    }
    // The process exits next; STOPPING=1 must leave first.
    notifier.flush(std::time::Duration::from_secs(1));
    Ok(())
}

/// Binds the socket at `path`, replacing a stale socket but never another kind of file.
fn bind(path: &std::path::Path, mode: u32) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => anyhow::bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(_) => {}
    }
    // Created owner-only (no window in which a default umask leaves it open to others), then
    // given the configured mode. The supervisor creates no other file meanwhile.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}
