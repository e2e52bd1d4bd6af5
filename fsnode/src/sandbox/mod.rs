//! Self-confinement of the node process before it serves (DESIGN: fs nodes are
//! Landlock-confined to their exports; never fall back to unconfined).
//!
//! Order matters: the exports are opened and the listener is bound first; then
//! [`confine`] drops every capability and applies Landlock and seccomp to the calling thread *before any other thread
//! exists* (both are inherited by threads created later, not by existing ones), so the tokio
//! runtime and the watcher thread must be started after it. If either layer cannot be fully
//! enforced the node refuses to start.

mod capabilities;
mod landlock;
mod seccomp;

use std::os::fd::BorrowedFd;

use crate::node::Export;

/// What daemon mode (`--control-url`) needs on top of the exports.
#[derive(Clone, Copy, Debug)]
pub struct DaemonAccess<'a> {
    /// The state file's directory: regular files may be read, written, created and removed
    /// beneath it (the atomic replace of the state file).
    pub state_dir: BorrowedFd<'a>,
    /// The gateway's TCP port: the only one the node may connect to.
    pub gateway_port: u16,
}

/// Why the node could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("landlock is not fully enforced by this kernel ({0}); refusing to serve unconfined")]
    LandlockNotEnforced(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("capabilities: {0}")]
    Capabilities(String),
}

/// Confines the calling thread (and every thread it creates later) to `exports`, plus, in
/// daemon mode, the state directory and outbound TCP to the gateway's port.
pub fn confine(exports: &[Export], daemon: Option<DaemonAccess<'_>>) -> Result<(), SandboxError> {
    capabilities::drop_all()?;
    landlock::restrict_to_exports(exports, daemon)?;
    seccomp::install(daemon.is_some())?;
    Ok(())
}
