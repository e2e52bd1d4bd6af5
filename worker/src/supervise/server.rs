//! The listener: binds the socket, admits only allowed peer uids (`SO_PEERCRED`), bounds the
//! number of concurrent workers, and stops on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

use super::config::SupervisorConfig;
use super::connection;
use super::pool::WarmPool;
use crate::ids::IdSwitch;

/// What every connection shares.
pub struct Shared {
    /// The configuration.
    pub config: SupervisorConfig,
    /// This executable (the worker binary).
    pub exe: PathBuf,
    /// Concurrent workers.
    pub workers: Semaphore,
    /// How tenants get their own uids (if at all).
    pub switch_ids: IdSwitch,
    /// Confined workers started ahead of calls.
    pub warm: WarmPool,
}

/// Serves until SIGTERM/SIGINT.
pub async fn serve(config: SupervisorConfig, switch_ids: IdSwitch) -> anyhow::Result<()> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let exe = std::env::current_exe()?;
    let _ = std::fs::remove_file(&config.socket);
    let listener =
        UnixListener::bind(&config.socket).map_err(|e| anyhow::anyhow!("binding {}: {e}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(config.socket_mode))?;
    let warm_ttl = std::time::Duration::from_millis(config.warm_ttl_ms);
    let shared = Arc::new(Shared {
        warm: WarmPool::new(config.warm_workers_per_plan, config.max_workers, warm_ttl),
        workers: Semaphore::new(config.max_workers),
        switch_ids,
        exe,
        config,
    });
    tracing::info!(socket = %shared.config.socket.display(), switch_ids = ?shared.switch_ids, "supervisor listening");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
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
            _ = expiry.tick() => shared.warm.expire(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&shared.config.socket);
    Ok(())
}
