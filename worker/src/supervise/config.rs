//! The supervisor's configuration file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spiderweb_policy::UidAllowlist;
use spiderweb_policy::sandbox::SandboxConfig;

use crate::ids::{IdRange, check_tenants};
use crate::plan::{Ids, SearchBackend};

fn default_max_workers() -> usize {
    16
}

fn default_socket_mode() -> u32 {
    0o660
}

fn default_warm_workers() -> usize {
    MAX_WARM_PER_PLAN
}

fn default_warm_ttl_ms() -> u64 {
    30_000
}

/// Most idle warm workers per plan a configuration may ask for.
pub const MAX_WARM_PER_PLAN: usize = 8;

/// Most concurrent workers a configuration may ask for.
pub const MAX_WORKERS_CAP: usize = 1024;

/// `spiderweb-worker supervise --config FILE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// Mode of the socket file (the peer uid is checked regardless).
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// Uids allowed to connect (the gateway's); default: only the supervisor's own uid.
    #[serde(default = "UidAllowlist::only_self")]
    pub allowed_uids: UidAllowlist,
    /// Workers running at once; further requests wait.
    #[serde(default = "default_max_workers")]
    pub max_workers: usize,
    /// Most confined workers kept ready per plan (tenant, workspace, profile): the pool keeps
    /// as many as the plan has calls running at once, at least one; 0 disables.
    #[serde(default = "default_warm_workers")]
    pub warm_workers_per_plan: usize,
    /// How long a warm worker may wait for a call before it is ended.
    #[serde(default = "default_warm_ttl_ms")]
    pub warm_ttl_ms: u64,
    /// Directories under which workspaces may live.
    pub workspace_roots: Vec<PathBuf>,
    /// Profiles' protected paths and limits.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Ids tenants may be given (required when running as root).
    #[serde(default)]
    pub uid_range: Option<IdRange>,
    /// Tenant → uid/gid (required when running as root).
    #[serde(default)]
    pub tenants: BTreeMap<String, Ids>,
    /// `search_code` implementation.
    #[serde(default)]
    pub search_backend: SearchBackend,
}

impl SupervisorConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path, switch_ids: bool) -> anyhow::Result<Self> {
        // Unknown keys are refused here (deny_unknown_fields), not just reported: a mistyped
        // confinement setting must not fall back to a default silently.
        let file = spiderweb_service::config::read_json::<SupervisorConfig>(path)?
            .ok_or_else(|| anyhow::anyhow!("config file {} does not exist", path.display()))?;
        file.value.validate(switch_ids)?;
        Ok(file.value)
    }

    /// Refuses values that would weaken or break the supervisor.
    pub fn validate(&self, switch_ids: bool) -> anyhow::Result<()> {
        self.sandbox.validate()?;
        if self.max_workers == 0 || self.max_workers > MAX_WORKERS_CAP {
            anyhow::bail!("max_workers must be 1..={MAX_WORKERS_CAP}");
        }
        if self.warm_workers_per_plan > MAX_WARM_PER_PLAN || !(1_000..=3_600_000).contains(&self.warm_ttl_ms) {
            anyhow::bail!("warm_workers_per_plan must be 0..={MAX_WARM_PER_PLAN}, warm_ttl_ms 1000..=3600000");
        }
        if self.workspace_roots.is_empty() {
            anyhow::bail!("workspace_roots must name at least one directory");
        }
        for root in &self.workspace_roots {
            if !root.is_absolute() {
                anyhow::bail!("workspace root {} must be absolute", root.display());
            }
        }
        if switch_ids {
            let Some(range) = self.uid_range else {
                anyhow::bail!(
                    "running as root or with CAP_SETUID/CAP_SETGID: uid_range and tenants are required (tools never run as root)"
                );
            };
            check_tenants(&range, &self.tenants)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> Result<SupervisorConfig, String> {
        let mut base = json!({"socket": "/run/w.sock", "workspace_roots": ["/srv/ws"]});
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let c = config(json!({})).unwrap();
        assert_eq!(c.allowed_uids, UidAllowlist::only_self());
        assert_eq!((c.socket_mode, c.max_workers, c.warm_workers_per_plan), (0o660, 16, MAX_WARM_PER_PLAN));
        c.validate(false).unwrap();
        let err = c.validate(true).unwrap_err().to_string();
        assert!(err.contains("uid_range"), "switching ids needs tenant ids: {err}");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let table = [
            (json!({"max_workers": 0}), "max_workers"),
            (json!({"max_workers": 5000}), "max_workers"),
            (json!({"warm_workers_per_plan": 9}), "warm_workers_per_plan"),
            (json!({"warm_ttl_ms": 10}), "warm_ttl_ms"),
            (json!({"workspace_roots": []}), "workspace_roots"),
            (json!({"workspace_roots": ["relative/dir"]}), "absolute"),
            (json!({"sandbox": {"protected_paths": ["../x"]}}), "protected path"),
        ];
        for (extra, needle) in table {
            let err = config(extra.clone()).unwrap().validate(false).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        assert!(config(json!({"unknown_key": 1})).unwrap_err().contains("unknown field"));
        let dup = json!({"uid_range": {"start": 1000, "count": 10},
            "tenants": {"a": {"uid": 1001, "gid": 1001}, "b": {"uid": 1001, "gid": 1002}}});
        assert!(config(dup).unwrap().validate(true).unwrap_err().to_string().contains("share a uid"));
    }
}
