//! What a confined tool worker may touch: sandbox profiles, protected paths and resource
//! limits, and which profile a tenant/project gets.
//!
//! The worker (`spiderweb-worker`) enforces these rules with mount namespaces, Landlock,
//! seccomp and rlimits; this module only says what they are, from configuration. A profile
//! never grants more than its name says: no profile reaches outside the workspace, only
//! `workspace-write+network` reaches the network, and protected paths stay read-only in every
//! profile. Configuration can tighten limits but never lift them past the hard caps here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use spiderweb_proto::worker::SandboxProfile;

/// Paths inside a workspace that stay read-only even when the workspace is writable: a tool
/// that could write them would run code on the host the next time someone uses git there.
pub const DEFAULT_PROTECTED_PATHS: [&str; 2] = [".git/hooks", ".git/config"];

/// Resource limits of one worker (and everything it starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// `RLIMIT_CPU`, seconds of CPU time.
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`, bytes of address space per process.
    pub address_space_bytes: u64,
    /// `RLIMIT_NOFILE`, open descriptors per process.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`, largest file a process may write.
    pub file_size_bytes: u64,
    /// `RLIMIT_NPROC`, processes of the worker's uid.
    pub processes: u64,
    /// Wall-clock limit of the whole worker, enforced by the supervisor (tree kill).
    pub wall_clock_ms: u64,
    /// Size of the worker's private `/tmp` (tmpfs).
    pub tmp_bytes: u64,
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The most configuration may grant; above this a value is refused, not clamped.
pub const HARD_CAPS: ResourceLimits = ResourceLimits {
    cpu_seconds: 3600,
    address_space_bytes: 64 * GIB,
    open_files: 65536,
    file_size_bytes: 64 * GIB,
    processes: 4096,
    wall_clock_ms: 3_600_000,
    tmp_bytes: 8 * GIB,
};

impl ResourceLimits {
    /// The built-in limits of a profile. The wall clock exceeds `shell_exec`'s 300 s cap so
    /// the tool's own timeout (exit 124 → `timeout`) fires first.
    pub const fn defaults(profile: SandboxProfile) -> Self {
        let base = ResourceLimits {
            cpu_seconds: 300,
            address_space_bytes: 8 * GIB,
            open_files: 1024,
            file_size_bytes: GIB,
            processes: 512,
            wall_clock_ms: 330_000,
            tmp_bytes: 256 * MIB,
        };
        match profile {
            // Nothing in the workspace can grow, so files are bounded by /tmp.
            SandboxProfile::ReadOnly => ResourceLimits { file_size_bytes: 256 * MIB, ..base },
            SandboxProfile::WorkspaceWrite | SandboxProfile::WorkspaceWriteNetwork => base,
        }
    }

    fn check(&self) -> Result<(), SandboxConfigError> {
        let fields = [
            ("cpu_seconds", self.cpu_seconds, HARD_CAPS.cpu_seconds),
            ("address_space_bytes", self.address_space_bytes, HARD_CAPS.address_space_bytes),
            ("open_files", self.open_files, HARD_CAPS.open_files),
            ("file_size_bytes", self.file_size_bytes, HARD_CAPS.file_size_bytes),
            ("processes", self.processes, HARD_CAPS.processes),
            ("wall_clock_ms", self.wall_clock_ms, HARD_CAPS.wall_clock_ms),
            ("tmp_bytes", self.tmp_bytes, HARD_CAPS.tmp_bytes),
        ];
        for (field, value, cap) in fields {
            if value == 0 || value > cap {
                return Err(SandboxConfigError::LimitOutOfRange { field, value, cap });
            }
        }
        // Fewer descriptors than this and the worker cannot run bash with its pipes.
        if self.open_files < 16 || self.processes < 8 {
            return Err(SandboxConfigError::LimitTooSmall);
        }
        Ok(())
    }
}

/// Everything the worker enforces for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRules {
    /// The profile these rules come from.
    pub profile: SandboxProfile,
    /// The workspace is writable (except `protected_paths`).
    pub workspace_writable: bool,
    /// TCP/UDP sockets are allowed (the worker shares the host network namespace).
    pub network: bool,
    /// Workspace-relative paths kept read-only (validated, no `..`).
    pub protected_paths: Vec<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
}

/// Per-tenant choices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSandbox {
    /// The tenant's profile when its project has none.
    #[serde(default)]
    pub profile: Option<SandboxProfile>,
    /// Per-project profiles.
    #[serde(default)]
    pub projects: BTreeMap<String, SandboxProfile>,
}

/// The `sandbox` configuration section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Profile for tenants/projects without one.
    #[serde(default)]
    pub default_profile: SandboxProfile,
    /// Extra protected paths, added to [`DEFAULT_PROTECTED_PATHS`] (which cannot be removed).
    #[serde(default)]
    pub protected_paths: Vec<String>,
    /// Limits per profile, replacing that profile's defaults.
    #[serde(default)]
    pub limits: BTreeMap<SandboxProfile, ResourceLimits>,
    /// Per-tenant choices.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSandbox>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            default_profile: SandboxProfile::WorkspaceWrite,
            protected_paths: Vec::new(),
            limits: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// A configuration value the sandbox refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxConfigError {
    /// A limit is zero or above its hard cap.
    #[error("sandbox limit {field} = {value} is outside 1..={cap}")]
    LimitOutOfRange {
        /// The limit's key.
        field: &'static str,
        /// The configured value.
        value: u64,
        /// Its hard cap.
        cap: u64,
    },
    /// Too few descriptors or processes for a shell to run.
    #[error("sandbox limits need open_files >= 16 and processes >= 8")]
    LimitTooSmall,
    /// A protected path is not a plain workspace-relative path.
    #[error("protected path `{path}`: {reason}")]
    BadProtectedPath {
        /// The configured value.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Checks that a protected path is a plain relative path inside the workspace: non-empty,
/// not absolute, no `.`/`..`/empty components, no NUL, at most 16 components and 1024 bytes.
pub fn check_protected_path(path: &str) -> Result<(), SandboxConfigError> {
    let refuse = |reason| Err(SandboxConfigError::BadProtectedPath { path: path.to_owned(), reason });
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > 1024 || path.split('/').count() > 16 {
        return refuse("too long");
    }
    if path.starts_with('/') {
        return refuse("must be relative to the workspace");
    }
    if path.contains('\0') {
        return refuse("contains NUL");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return refuse("empty, `.` or `..` component");
    }
    Ok(())
}

impl SandboxConfig {
    /// Refuses limits outside their caps and malformed protected paths.
    pub fn validate(&self) -> Result<(), SandboxConfigError> {
        for limits in self.limits.values() {
            limits.check()?;
        }
        for path in &self.protected_paths {
            check_protected_path(path)?;
        }
        Ok(())
    }

    /// The profile for a call: the project's, else the tenant's, else the default.
    pub fn profile_for(&self, tenant: &str, project: Option<&str>) -> SandboxProfile {
        let tenant_cfg = self.tenants.get(tenant);
        project
            .and_then(|p| tenant_cfg.and_then(|t| t.projects.get(p)).copied())
            .or_else(|| tenant_cfg.and_then(|t| t.profile))
            .unwrap_or(self.default_profile)
    }

    /// The rules of a profile under this configuration.
    pub fn rules(&self, profile: SandboxProfile) -> SandboxRules {
        let mut protected_paths: Vec<String> = DEFAULT_PROTECTED_PATHS.iter().map(|p| p.to_string()).collect();
        for extra in &self.protected_paths {
            if !protected_paths.contains(extra) {
                protected_paths.push(extra.clone());
            }
        }
        SandboxRules {
            profile,
            workspace_writable: profile != SandboxProfile::ReadOnly,
            network: profile == SandboxProfile::WorkspaceWriteNetwork,
            protected_paths,
            limits: self.limits.get(&profile).copied().unwrap_or(ResourceLimits::defaults(profile)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxProfile::*;
    use serde_json::json;

    fn config() -> SandboxConfig {
        serde_json::from_value(json!({
            "default_profile": "read-only",
            "tenants": {
                "alice": {"profile": "workspace-write", "projects": {"web": "workspace-write+network", "audit": "read-only"}},
                "bob": {"projects": {"tools": "workspace-write"}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn profile_choice_prefers_project_then_tenant_then_default() {
        let cfg = config();
        let table: [(&str, Option<&str>, SandboxProfile); 8] = [
            ("alice", Some("web"), WorkspaceWriteNetwork),
            ("alice", Some("audit"), ReadOnly),
            ("alice", Some("other"), WorkspaceWrite),
            ("alice", None, WorkspaceWrite),
            ("bob", Some("tools"), WorkspaceWrite),
            ("bob", Some("web"), ReadOnly),
            ("bob", None, ReadOnly),
            ("carol", Some("web"), ReadOnly),
        ];
        for (tenant, project, want) in table {
            assert_eq!(cfg.profile_for(tenant, project), want, "{tenant}/{project:?}");
        }
        assert_eq!(SandboxConfig::default().profile_for("anyone", None), WorkspaceWrite);
    }

    #[test]
    fn each_profile_grants_exactly_what_its_name_says() {
        let cfg = SandboxConfig::default();
        let table = [(ReadOnly, false, false), (WorkspaceWrite, true, false), (WorkspaceWriteNetwork, true, true)];
        for (profile, writable, network) in table {
            let rules = cfg.rules(profile);
            assert_eq!((rules.workspace_writable, rules.network), (writable, network), "{profile}");
            assert_eq!(rules.protected_paths, [".git/hooks", ".git/config"], "{profile}");
            assert_eq!(rules.limits, ResourceLimits::defaults(profile));
            rules.limits.check().unwrap();
        }
    }

    #[test]
    fn extra_protected_paths_add_to_the_defaults_which_cannot_be_removed() {
        let cfg: SandboxConfig =
            serde_json::from_value(json!({"protected_paths": [".envrc", ".git/hooks", ".vscode/tasks.json"]})).unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.rules(WorkspaceWrite).protected_paths,
            [".git/hooks", ".git/config", ".envrc", ".vscode/tasks.json"]
        );
    }

    #[test]
    fn protected_paths_must_be_plain_relative_paths() {
        let table: [(&str, bool); 11] = [
            (".git/hooks", true),
            ("a/b/c", true),
            (".envrc", true),
            ("", false),
            ("/etc/passwd", false),
            ("../x", false),
            ("a/../b", false),
            ("a//b", false),
            ("./a", false),
            ("a/", false),
            ("a\0b", false),
        ];
        for (path, ok) in table {
            assert_eq!(check_protected_path(path).is_ok(), ok, "{path:?}");
        }
        assert!(check_protected_path(&"a/".repeat(17)).is_err());
    }

    #[test]
    fn limits_are_per_profile_and_refused_outside_their_caps() {
        let mut limits = ResourceLimits::defaults(WorkspaceWrite);
        limits.processes = 64;
        let cfg = SandboxConfig { limits: BTreeMap::from([(ReadOnly, limits)]), ..Default::default() };
        cfg.validate().unwrap();
        assert_eq!(cfg.rules(ReadOnly).limits.processes, 64);
        assert_eq!(cfg.rules(WorkspaceWrite).limits.processes, 512);

        let bad = [
            ResourceLimits { cpu_seconds: 0, ..limits },
            ResourceLimits { processes: 5000, ..limits },
            ResourceLimits { wall_clock_ms: HARD_CAPS.wall_clock_ms + 1, ..limits },
            ResourceLimits { open_files: 3, ..limits },
        ];
        for l in bad {
            let cfg = SandboxConfig { limits: BTreeMap::from([(WorkspaceWrite, l)]), ..Default::default() };
            assert!(cfg.validate().is_err(), "{l:?}");
        }
    }

    #[test]
    fn unknown_keys_and_profiles_are_refused() {
        assert!(serde_json::from_value::<SandboxConfig>(json!({"default_profile": "danger-full-access"})).is_err());
        assert!(serde_json::from_value::<SandboxConfig>(json!({"network": true})).is_err());
        assert!(serde_json::from_value::<SandboxConfig>(json!({"tenants": {"a": {"uid": 5}}})).is_err());
    }
}
