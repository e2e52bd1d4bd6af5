//! Landlock: file access only beneath the export roots (read-only rights for ro exports), no
//! TCP bind/connect (the listener is already bound), no signals or abstract-socket connects
//! outside the sandbox.
//!
//! Daemon mode adds exactly two things: TCP connect to the gateway's port (the control calls
//! and the tunnel; Landlock filters by port, not by address), and the rights to replace a
//! regular file beneath the state file's directory (read, write, truncate, create, remove — no
//! directories, links or devices), which is why that directory should be the node's own.
//!
//! Rules are built from the export-root fds the node already holds, never from path strings,
//! so the confinement covers exactly the directories being served.
//!
//! This backs up `openat2(RESOLVE_BENEATH)`: even a bug in path handling cannot reach a file
//! outside the exports. Requires Landlock ABI 6; anything less is refused, not degraded.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::{DaemonAccess, SandboxError};
use crate::node::Export;

const ABI_REQUIRED: ABI = ABI::V6;

pub fn restrict_to_exports(exports: &[Export], daemon: Option<DaemonAccess<'_>>) -> Result<(), SandboxError> {
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI_REQUIRED))
        .map_err(err)?
        .handle_access(AccessNet::from_all(ABI_REQUIRED))
        .map_err(err)?
        .scope(Scope::from_all(ABI_REQUIRED))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for export in exports {
        let rights =
            if export.read_only() { AccessFs::from_read(ABI_REQUIRED) } else { AccessFs::from_all(ABI_REQUIRED) };
        ruleset = ruleset.add_rule(PathBeneath::new(&export.root, rights)).map_err(err)?;
    }
    if let Some(daemon) = daemon {
        let state_rights =
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::MakeReg | AccessFs::RemoveFile;
        ruleset = ruleset
            .add_rule(PathBeneath::new(daemon.state_dir, state_rights))
            .map_err(err)?
            .add_rule(NetPort::new(daemon.gateway_port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(SandboxError::LandlockNotEnforced(format!("{:?}", status.ruleset)));
    }
    tracing::info!(exports = exports.len(), "landlock fully enforced");
    Ok(())
}
