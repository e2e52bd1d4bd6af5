//! Confinement of a worker, applied by the worker to itself before it reads any request data.
//!
//! Modelled on Firecracker's jailer: one module per mechanism, applied by [`confine`] in this
//! order, each step needing what the previous ones left and removing what the next ones no
//! longer need:
//!
//! 0. Only for a non-root launcher holding CAP_SETUID/CAP_SETGID:
//!    [`privileges::assume_tenant`] switches to the tenant's ids first.
//! 1. [`namespaces`]: mount, PID, IPC, UTS, cgroup and network namespaces, plus a user
//!    namespace when not root; fork so the worker is PID 1. The network profile's namespace is
//!    connected to the outside by pasta ([`network`]), never by sharing the host's.
//! 2. [`mounts`]: a new root with only system directories (read-only), the workspace, a private
//!    `/tmp`, `/dev` nodes and `/proc`; protected paths pinned read-only.
//! 3. [`rlimits`]: CPU, address space, open files, file size, processes, no core dumps.
//! 4. [`privileges`]: new session, tenant uid/gid, every capability dropped, securebits locked,
//!    `no_new_privs`, inherited descriptors closed.
//! 5. [`landlock`]: filesystem, TCP and scope rules (ABI 6 rights required, ABI 7 logging).
//! 6. [`seccomp`]: the syscall filter.
//!
//! Any failure is returned as a [`ConfineError`] naming the step and the missing feature; the
//! caller reports it and exits. There is no fallback: a worker that is not fully confined
//! never runs a tool.

pub mod landlock;
pub mod mounts;
pub mod namespaces;
pub mod network;
pub mod privileges;
pub mod rlimits;
pub mod seccomp;

use crate::plan::ConfinementPlan;

/// The step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The plan itself is unusable (checked before any step).
    #[error("refusing to confine: {0}")]
    Plan(String),
    /// Step 1.
    #[error("namespaces: {0}")]
    Namespaces(#[from] namespaces::NamespaceError),
    /// Step 2.
    #[error("mounts: {0}")]
    Mounts(#[from] mounts::MountError),
    /// Step 3.
    #[error("rlimits: {0}")]
    Rlimits(#[from] rlimits::RlimitError),
    /// Step 4.
    #[error("privileges: {0}")]
    Privileges(#[from] privileges::PrivilegeError),
    /// Step 5.
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::LandlockError),
    /// Step 6.
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Applies every step in order. Returns in PID 1 of the new namespaces, fully confined.
pub fn confine(plan: &ConfinementPlan) -> Result<(), ConfineError> {
    let root = nix::unistd::geteuid().is_root();
    match plan.ids {
        Some(ids) if ids.uid == 0 || ids.gid == 0 => {
            return Err(ConfineError::Plan("tools never run as uid or gid 0".into()));
        }
        None if root => {
            return Err(ConfineError::Plan("running as root: a tenant uid/gid is required".into()));
        }
        // Not root: become the tenant first (needs CAP_SETUID/CAP_SETGID), then build the
        // namespaces in a user namespace exactly as an unprivileged launcher would.
        Some(ids) if !root => privileges::assume_tenant(ids)?,
        _ => {}
    }
    let pasta = match (plan.network, &plan.pasta) {
        (false, _) => None,
        (true, Some(pasta)) => Some(std::path::Path::new(pasta)),
        (true, None) => return Err(namespaces::NamespaceError::from(network::NetworkError::PastaMissing).into()),
    };
    namespaces::enter(pasta)?;
    mounts::build_root(plan)?;
    rlimits::apply(&plan.limits)?;
    // A non-root worker already is the tenant (mapped to root in its user namespace).
    privileges::drop_all(if root { plan.ids } else { None })?;
    landlock::restrict(plan)?;
    seccomp::install(plan.network)?;
    Ok(())
}
