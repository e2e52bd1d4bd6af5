//! Step 4: a new session, the tenant's uid/gid, no capabilities, `no_new_privs`, no inherited
//! descriptors.
//!
//! Why: the tool must hold no privilege on the host or in its namespaces: no capability in any
//! set (including the bounding set, so exec of a setuid/file-capability binary grants nothing),
//! no way to regain one (`no_new_privs`, securebits locked), no controlling terminal to inject
//! keystrokes into (`setsid`), and no descriptor it did not get from us.
//!
//! Order: after mounts and rlimits (both need capabilities), before Landlock and seccomp
//! (`no_new_privs` is their precondition). The bounding set is dropped first because dropping
//! it needs CAP_SETPCAP, which the uid switch removes. The parent-death signal is re-armed
//! after the uid switch, which clears it.

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, setgroups, sethostname, setresgid, setresuid, setsid};

use crate::plan::Ids;

/// `SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | …_LOCKED | SECBIT_KEEP_CAPS_LOCKED
/// | SECBIT_NO_CAP_AMBIENT_RAISE | …_LOCKED`: uid 0 (inside a user namespace) gains nothing on exec.
const SECUREBITS_LOCKED_DOWN: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

/// A privilege step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A system call failed.
    #[error("{call} failed: {errno}")]
    Call {
        /// The call.
        call: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The caps crate could not change a capability set.
    #[error("dropping capabilities ({set}): {message}")]
    Caps {
        /// The set.
        set: &'static str,
        /// The error.
        message: String,
    },
    /// A capability survived the drop.
    #[error("capability set {set} still holds {left:?} after dropping")]
    CapsLeft {
        /// The set.
        set: &'static str,
        /// What is left.
        left: Vec<Capability>,
    },
}

fn call(name: &'static str) -> impl Fn(Errno) -> PrivilegeError {
    move |errno| PrivilegeError::Call { call: name, errno }
}

const SETS: [(CapSet, &str); 4] = [
    (CapSet::Effective, "effective"),
    (CapSet::Permitted, "permitted"),
    (CapSet::Inheritable, "inheritable"),
    (CapSet::Ambient, "ambient"),
];

/// Step 0 for a launcher that is not root but holds CAP_SETUID/CAP_SETGID: become the tenant
/// before any namespace exists, so everything the worker creates belongs to the tenant.
/// Dumpable is restored because the uid change clears it and a non-dumpable process cannot
/// open its own `/proc/self/uid_map` to map itself into its user namespace (step 1); step 4
/// clears it again.
pub fn assume_tenant(ids: Ids) -> Result<(), PrivilegeError> {
    let needs = |name: &'static str| move |errno| PrivilegeError::Call { call: name, errno };
    let (uid, gid) = (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid));
    setgroups(&[gid]).map_err(needs("setgroups (needs root or CAP_SETGID)"))?;
    setresgid(gid, gid, gid).map_err(needs("setresgid (needs root or CAP_SETGID)"))?;
    setresuid(uid, uid, uid).map_err(needs("setresuid (needs root or CAP_SETUID)"))?;
    prctl::set_dumpable(true).map_err(call("prctl(PR_SET_DUMPABLE)"))
}

/// Drops every privilege; `ids` switches uid/gid when the launcher is root.
pub fn drop_all(ids: Option<Ids>) -> Result<(), PrivilegeError> {
    setsid().map_err(call("setsid"))?;
    sethostname("spiderweb-worker").map_err(call("sethostname"))?;
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| PrivilegeError::Caps { set: "bounding", message: e.to_string() })?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::Call { call: "prctl(PR_SET_SECUREBITS)", errno: Errno::last() });
    }
    if let Some(Ids { uid, gid }) = ids {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[gid]).map_err(call("setgroups"))?;
        setresgid(gid, gid, gid).map_err(call("setresgid"))?;
        setresuid(uid, uid, uid).map_err(call("setresuid"))?;
    }
    for (set, name) in SETS {
        caps::set(None, set, &CapsHashSet::new())
            .map_err(|e| PrivilegeError::Caps { set: name, message: e.to_string() })?;
    }
    for (set, name) in SETS.into_iter().chain([(CapSet::Bounding, "bounding")]) {
        let left = caps::read(None, set).map_err(|e| PrivilegeError::Caps { set: name, message: e.to_string() })?;
        if !left.is_empty() {
            return Err(PrivilegeError::CapsLeft { set: name, left: left.into_iter().collect() });
        }
    }
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(call("prctl(PDEATHSIG)"))?;
    prctl::set_dumpable(false).map_err(call("prctl(PR_SET_DUMPABLE)"))?;
    prctl::set_no_new_privs().map_err(call("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    close_inherited_fds()
}

/// Closes every descriptor above stderr: nothing the launcher held may leak to the tool.
fn close_inherited_fds() -> Result<(), PrivilegeError> {
    // SAFETY: close_range on descriptors this single-threaded process does not use afterwards;
    // Rust objects owning descriptors above 2 were dropped before this step.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(PrivilegeError::Call { call: "close_range", errno: Errno::last() });
    }
    Ok(())
}
