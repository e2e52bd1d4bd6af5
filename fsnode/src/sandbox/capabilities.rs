//! Capabilities: the node keeps none (DESIGN: "its own user, no capabilities").
//!
//! Started as root (as in tests, or by a careless unit file), the node would otherwise keep
//! CAP_DAC_OVERRIDE and friends and could read any file its path resolution were tricked
//! into reaching. The bounding set is emptied first (that needs CAP_SETPCAP, which is dropped
//! last with the rest); an unprivileged start has nothing to drop and an unchangeable bounding
//! set, which no_new_privs and the seccomp exec ban make harmless.

use caps::CapSet;

use super::SandboxError;

pub fn drop_all() -> Result<(), SandboxError> {
    let err = |e: caps::errors::CapsError| SandboxError::Capabilities(e.to_string());
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    if permitted.contains(&caps::Capability::CAP_SETPCAP) {
        caps::clear(None, CapSet::Bounding).map_err(err)?;
    }
    // An empty set is left alone: a service manager that started the node without
    // capabilities may also forbid capset(2) (systemd's @privileged filter), and the check
    // below is what matters.
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        if !caps::read(None, set).map_err(err)?.is_empty() {
            caps::clear(None, set).map_err(err)?;
        }
    }
    for set in [CapSet::Ambient, CapSet::Effective, CapSet::Permitted] {
        if !caps::read(None, set).map_err(err)?.is_empty() {
            return Err(SandboxError::Capabilities(format!("{set:?} set still not empty")));
        }
    }
    tracing::info!("all capabilities dropped");
    Ok(())
}
