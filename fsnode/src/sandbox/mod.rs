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

use crate::node::Export;

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

/// Confines the calling thread (and every thread it creates later) to `exports`.
pub fn confine(exports: &[Export]) -> Result<(), SandboxError> {
    capabilities::drop_all()?;
    landlock::restrict_to_exports(exports)?;
    seccomp::install()?;
    Ok(())
}
