//! Step 6 (last): a seccomp filter that removes the kernel interfaces a tool never needs and
//! that have a history of privilege escalation or sandbox escape.
//!
//! Why: Landlock and namespaces confine what a tool can name; seccomp shrinks the kernel
//! surface it can reach at all. Denied with `EPERM`: ptrace and cross-process memory access,
//! the kernel keyring, io_uring, bpf, perf events, userfaultfd, every mount-API call, chroot,
//! pivot_root, unshare/setns and namespace-creating clone flags, kexec and module loading,
//! handle-based opens, `TIOCSTI`/`TIOCLINUX` ioctls, and socket families other than
//! AF_UNIX/AF_INET/AF_INET6 (without the network profile: other than AF_UNIX). `clone3` gets
//! `ENOSYS` (its flags live in memory a filter cannot read), so libc falls back to `clone`,
//! whose flags are checked. The filter checks the architecture first; a foreign-arch call
//! kills the process.
//!
//! Order: last, after Landlock, because it blocks calls the earlier steps make (mount,
//! unshare). Needs `no_new_privs`. The worker is single-threaded here, so the filter covers
//! every thread it will ever have.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// The filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This CPU architecture has no filter.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
    /// The filter was rejected by the compiler (a bug) or the kernel lacks seccomp filters.
    #[error("seccomp filter: {0}")]
    Filter(#[from] seccompiler::Error),
    /// A rule was malformed (a bug).
    #[error("seccomp rule: {0}")]
    Rule(#[from] seccompiler::BackendError),
}

/// Syscalls denied outright.
const DENIED: &[(libc::c_long, &str)] = &[
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_uselib, "uselib"),
    (libc::SYS_personality, "personality"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_vhangup, "vhangup"),
];

/// Namespace-creating `clone` flags.
const NAMESPACE_FLAGS: [libc::c_int; 8] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conditions)?)
}

fn arg(index: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(index, len, op, value)?)
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// The `EPERM` filter.
fn deny_filter(network: bool) -> Result<BpfProgram, SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED {
        rules.insert(*nr, Vec::new());
    }
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| rule(vec![arg(0, Qword, SeccompCmpOp::MaskedEq(*flag as u64), *flag as u64)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = [libc::TIOCSTI, libc::TIOCLINUX]
        .iter()
        .map(|cmd| rule(vec![arg(1, Dword, SeccompCmpOp::Eq, *cmd)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let allowed_families: &[i32] =
        if network { &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] } else { &[libc::AF_UNIX] };
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        let not_allowed = allowed_families
            .iter()
            .map(|family| arg(0, Dword, SeccompCmpOp::Ne, *family as u64))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, vec![rule(not_allowed)?]);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch()?)?;
    Ok(filter.try_into()?)
}

/// The `ENOSYS` filter for `clone3`.
fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch()?)?;
    Ok(filter.try_into()?)
}

/// Installs both filters on the calling (only) thread.
pub fn install(network: bool) -> Result<(), SeccompError> {
    let deny = deny_filter(network)?;
    let clone3 = clone3_filter()?;
    seccompiler::apply_filter(&deny)?;
    seccompiler::apply_filter(&clone3)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_both_network_settings() {
        assert!(deny_filter(false).unwrap().len() > DENIED.len());
        assert!(deny_filter(true).unwrap().len() > DENIED.len());
        assert!(!clone3_filter().unwrap().is_empty());
    }
}
