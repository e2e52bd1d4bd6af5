//! seccomp: syscalls a file server never needs fail with EPERM.
//!
//! A deny list rather than an allow list: the node runs tokio, hyper and the inotify watcher,
//! whose exact syscall set varies with libc and kernel versions; an allow list that missed one
//! would crash the node in production. What is denied is what an attacker who took over the
//! process would want: running programs, creating network sockets (the listener already exists; `socketpair`, used by the signal
//! driver, stays allowed),
//! namespaces, mounts, tracing or reading other processes, loading kernel code, opening by
//! file handle (which bypasses path checks), io_uring (which bypasses seccomp).
//!
//! `clone3` answers ENOSYS so that libc falls back to `clone`, whose flags can be inspected:
//! `clone` with any namespace flag is denied.
//!
//! Daemon mode dials the gateway, so there `connect` is allowed and `socket` only for TCP
//! (`AF_INET`/`AF_INET6`, `SOCK_STREAM`): no UDP (so no DNS: the address was resolved before
//! confinement), no Unix, netlink or raw sockets. Which port it may reach is Landlock's rule.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

use super::SandboxError;

const DENIED: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
];

const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

fn arch() -> Result<seccompiler::TargetArch, SandboxError> {
    std::env::consts::ARCH.try_into().map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno), arch()?)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// `socket(2)` type bits that are not flags (`SOCK_NONBLOCK`, `SOCK_CLOEXEC`).
const SOCK_TYPE_MASK: u64 = 0xf;

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// Denies every `socket(2)` but TCP over IPv4/IPv6: one rule for other families, one per
/// socket type other than `SOCK_STREAM` (seccomp compares masked bits only for equality).
fn socket_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    let (inet, inet6) = (libc::AF_INET as u64, libc::AF_INET6 as u64);
    let mut rules = vec![rule(vec![condition(0, SeccompCmpOp::Ne, inet)?, condition(0, SeccompCmpOp::Ne, inet6)?])?];
    for kind in (0..=SOCK_TYPE_MASK).filter(|t| *t != libc::SOCK_STREAM as u64) {
        rules.push(rule(vec![condition(1, SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK), kind)?])?);
    }
    Ok(rules)
}

/// Installs the filter; `dials_gateway` (daemon mode) lets TCP sockets be created and connected.
pub fn install(dials_gateway: bool) -> Result<(), SandboxError> {
    let err = |e: String| SandboxError::Seccomp(e);
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    if dials_gateway {
        denied.remove(&libc::SYS_connect);
        denied.insert(libc::SYS_socket, socket_rules()?);
    }
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let cond =
                SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag as u64), *flag as u64)
                    .map_err(|e| err(e.to_string()))?;
            SeccompRule::new(vec![cond]).map_err(|e| err(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_clone, clone_rules);
    let eperm = compile(denied, libc::EPERM as u32)?;
    let enosys = compile(BTreeMap::from([(libc::SYS_clone3, Vec::new())]), libc::ENOSYS as u32)?;
    // Landlock's restrict_self already set no_new_privs, which unprivileged seccomp requires.
    seccompiler::apply_filter(&enosys).map_err(|e| err(e.to_string()))?;
    seccompiler::apply_filter(&eperm).map_err(|e| err(e.to_string()))?;
    tracing::info!("seccomp filter installed");
    Ok(())
}
