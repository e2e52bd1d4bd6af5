//! Process hardening applied before the broker reads any credential.
//!
//! The broker holds keys in memory, so: it is made non-dumpable (`PR_SET_DUMPABLE=0`: no core
//! dumps, and `/proc/<pid>/mem`, `environ` and ptrace are closed to other processes of the
//! same uid), core dumps are disabled by rlimit as a second fence, and the umask is 0077 so
//! that nothing it creates (socket, temporary files) is briefly readable by others.
//!
//! Must run first in `main`, before the runtime starts threads and before any key is read.
//! Failing to apply any of this is fatal: the broker never runs unprotected.

/// A hardening step failed.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot make the process non-dumpable: {0}")]
    Dumpable(nix::Error),
    /// `setrlimit(RLIMIT_CORE, 0)` failed.
    #[error("cannot disable core dumps: {0}")]
    CoreLimit(nix::Error),
}

/// Applies every step, in order.
pub fn apply() -> Result<(), HardeningError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    nix::sys::prctl::set_dumpable(false).map_err(HardeningError::Dumpable)?;
    // Already 0 (systemd `LimitCORE=0`): not calling setrlimit lets the unit filter out the
    // @resources system calls. Anything else is lowered, or the broker refuses to run.
    if getrlimit(Resource::RLIMIT_CORE).map_err(HardeningError::CoreLimit)? != (0, 0) {
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HardeningError::CoreLimit)?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    Ok(())
}

/// Whether the process is currently non-dumpable (for tests and the startup log).
pub fn is_non_dumpable() -> bool {
    nix::sys::prctl::get_dumpable().is_ok_and(|d| !d)
}
