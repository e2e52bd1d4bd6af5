//! Step 5: Landlock, the kernel's own allowlist of what this process tree may touch.
//!
//! Why: the new root already hides the host, but it is built from bind mounts of real host
//! directories; Landlock makes the grant explicit and independent of mount tricks: read and
//! execute on the system directories, `/etc` minus its secrets, read on `/proc`, read/write on
//! the device nodes, full access to `/workspace` (read-only profile: read) and `/tmp`, nothing
//! else. Every access right of ABI 6 is handled (so an unlisted right is denied), TCP bind and
//! connect are denied unless the profile has network, and the domain is scoped: no abstract
//! Unix socket and no signal can reach a process outside it. ABI 7's audit flag is requested so
//! denials of the tool (after exec) are logged.
//!
//! Order: after `no_new_privs` (its precondition for unprivileged callers), before seccomp
//! (which does not block the Landlock syscalls, but keeping the kernel-object setup first
//! keeps the filter minimal). Must never degrade silently: the ruleset is a hard requirement,
//! so a kernel without a needed right fails here, naming the right.

use std::fs;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

use crate::confine::mounts::DEVICES;
use crate::plan::{ConfinementPlan, SANDBOX_WORKSPACE};

/// The ABI whose rights are all required (fs incl. IOCTL_DEV, TCP, scopes).
pub const REQUIRED_ABI: ABI = ABI::V6;

/// Entries of `/etc` (relative paths) the sandbox never reads.
pub const ETC_SECRETS: [&str; 13] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "ssl/private",
    "security/opasswd",
    "spiderweb",
    "credstore",
    "credstore.encrypted",
    "krb5.keytab",
];

/// Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The kernel lacks a Landlock feature the profile needs (or Landlock is disabled).
    #[error("Landlock ABI {abi} (fs, TCP and scopes) is required: {source}")]
    Unsupported {
        /// The required ABI.
        abi: i32,
        /// What the crate reported.
        source: RulesetError,
    },
    /// A path of the grant could not be opened.
    #[error("Landlock rule for {path}: {message}")]
    Rule {
        /// The path.
        path: String,
        /// The error.
        message: String,
    },
    /// The kernel accepted the ruleset only partially.
    #[error("Landlock was not fully enforced ({status:?}); refusing to run unconfined")]
    Partial {
        /// The status reported.
        status: RulesetStatus,
    },
}

/// Restricts this process (and everything it starts) to the sandbox's grant.
pub fn restrict(plan: &ConfinementPlan) -> Result<(), LandlockError> {
    let unsupported = |source| LandlockError::Unsupported { abi: REQUIRED_ABI as i32, source };
    let all = AccessFs::from_all(REQUIRED_ABI);
    let read = AccessFs::from_read(REQUIRED_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(unsupported)?
        .scope(Scope::from_all(REQUIRED_ABI))
        .map_err(unsupported)?;
    if !plan.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(REQUIRED_ABI)).map_err(unsupported)?;
    }
    let mut created = ruleset.create().map_err(unsupported)?;

    // Listing directory names (not reading files) everywhere keeps `ls /`, `find /` working.
    let mut grants: Vec<(PathBuf, BitFlags<AccessFs>)> = vec![("/".into(), AccessFs::ReadDir.into())];
    for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc"] {
        if Path::new(dir).exists() {
            grants.push((dir.into(), read));
        }
    }
    etc_grants(Path::new("/etc"), "", read, &mut grants);
    let device = AccessFs::ReadFile | AccessFs::WriteFile;
    for name in DEVICES {
        grants.push((Path::new("/dev").join(name), device));
    }
    grants.push(("/dev".into(), AccessFs::ReadDir.into()));
    grants.push(("/tmp".into(), all));
    grants.push((SANDBOX_WORKSPACE.into(), if plan.workspace_writable { all } else { read }));

    for (path, access) in grants {
        let fd = PathFd::new(&path)
            .map_err(|e| LandlockError::Rule { path: path.display().to_string(), message: e.to_string() })?;
        // A rule on a file may only carry file rights; the crate rejects the rest.
        let access = if path.is_dir() { access } else { access & AccessFs::from_file(REQUIRED_ABI) };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| LandlockError::Rule { path: path.display().to_string(), message: e.to_string() })?;
    }
    // ABI 7: audit-log denials of the tool after it execs. Best effort: logging is
    // observability, not confinement, so an older kernel does not block the worker.
    let created = created.set_compatibility(CompatLevel::BestEffort).log_new_exec(true).map_err(unsupported)?;
    let status = created.restrict_self().map_err(unsupported)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::Partial { status: status.ruleset });
    }
    Ok(())
}

/// Read grants for `/etc`, one per entry, skipping [`ETC_SECRETS`] and descending into
/// directories that contain one.
fn etc_grants(dir: &Path, prefix: &str, read: BitFlags<AccessFs>, out: &mut Vec<(PathBuf, BitFlags<AccessFs>)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if ETC_SECRETS.contains(&relative.as_str()) {
            continue;
        }
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_symlink() {
            // A rule follows the link: a link to a secret (or to nothing in this root)
            // grants nothing and is skipped.
            let Ok(target) = fs::canonicalize(entry.path()) else { continue };
            if ETC_SECRETS.iter().any(|secret| target.starts_with(Path::new("/etc").join(secret))) {
                continue;
            }
        }
        let holds_secret = ETC_SECRETS.iter().any(|s| s.starts_with(&format!("{relative}/")));
        if holds_secret && kind.is_dir() {
            etc_grants(&entry.path(), &relative, read, out);
        } else {
            out.push((entry.path(), read));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_grants_leave_out_secrets_and_descend_only_where_one_lives() {
        let etc = tempfile::tempdir().unwrap();
        for dir in ["ssl/private", "ssl/certs", "ssh", "sudoers.d", "apt"] {
            fs::create_dir_all(etc.path().join(dir)).unwrap();
        }
        for file in ["passwd", "shadow", "gshadow-", "hostname", "sudoers", "ssl/openssl.cnf", "ssl/private/key.pem"] {
            fs::write(etc.path().join(file), "x").unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent/target", etc.path().join("dangling")).unwrap();
        let mut grants = Vec::new();
        etc_grants(etc.path(), "", AccessFs::from_read(REQUIRED_ABI), &mut grants);
        let mut names: Vec<String> =
            grants.iter().map(|(path, _)| path.strip_prefix(etc.path()).unwrap().display().to_string()).collect();
        names.sort();
        assert_eq!(names, ["apt", "hostname", "passwd", "ssl/certs", "ssl/openssl.cnf"]);
    }
}
