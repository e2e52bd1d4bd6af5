//! Step 3: resource limits for the worker and everything it starts.
//!
//! Why: a tool may fork-bomb, allocate without end, fill the disk or spin the CPU. The kernel
//! enforces `RLIMIT_NPROC` per uid (per user namespace), `RLIMIT_AS`/`RLIMIT_FSIZE`/`RLIMIT_CPU`
//! per process; the supervisor adds the wall clock. Core dumps are disabled (a dump could carry
//! data of the tool's process to disk).
//!
//! Order: after the mounts (tmpfs sizes are set there), before privileges are dropped: soft and
//! hard limits are set together so the tool cannot raise them again; setting them while the
//! worker still has CAP_SYS_RESOURCE is harmless because hard limits only go down afterwards.

use nix::errno::Errno;
use nix::sys::resource::{Resource, setrlimit};
use spiderweb_policy::sandbox::ResourceLimits;

/// A limit the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("setrlimit({resource}) failed: {errno}")]
pub struct RlimitError {
    /// The resource's name.
    pub resource: &'static str,
    /// The kernel's answer.
    pub errno: Errno,
}

/// Applies every limit (soft = hard).
pub fn apply(limits: &ResourceLimits) -> Result<(), RlimitError> {
    let table = [
        (Resource::RLIMIT_CPU, "RLIMIT_CPU", limits.cpu_seconds),
        (Resource::RLIMIT_AS, "RLIMIT_AS", limits.address_space_bytes),
        (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.open_files),
        (Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.file_size_bytes),
        (Resource::RLIMIT_NPROC, "RLIMIT_NPROC", limits.processes),
        (Resource::RLIMIT_CORE, "RLIMIT_CORE", 0),
        (Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", 0),
    ];
    for (resource, name, value) in table {
        setrlimit(resource, value, value).map_err(|errno| RlimitError { resource: name, errno })?;
    }
    Ok(())
}
