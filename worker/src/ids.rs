//! Which uid/gid a tool runs as.
//!
//! A launcher that may switch ids (root, or holding CAP_SETUID and CAP_SETGID) runs every tenant
//! under its own uid/gid from a configured range, so tenants are separated by the kernel's
//! ordinary permission checks on top of the sandbox, and requires the workspace to be owned by
//! that uid. A launcher without those capabilities cannot: every worker then runs as the
//! launcher's uid (mapped to root inside a user namespace, with no capabilities), and only the
//! sandbox separates tenants.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use caps::{CapSet, Capability};
use serde::{Deserialize, Serialize};

use crate::plan::Ids;

/// How the launcher can give tools their tenant's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSwitch {
    /// Root: the worker builds its namespaces and mounts, then switches ids.
    Root,
    /// CAP_SETUID + CAP_SETGID, raised to the ambient set so workers inherit them: the worker
    /// switches ids first, then builds its namespaces in a user namespace as the tenant.
    Capabilities,
    /// Neither: workers run as the launcher's uid.
    Unavailable,
}

impl IdSwitch {
    /// Whether tenants get their own ids.
    pub fn available(self) -> bool {
        self != IdSwitch::Unavailable
    }
}

/// Finds out how ids can be switched, making CAP_SETUID/CAP_SETGID ambient when that is the
/// way. Call before any thread starts: ambient capabilities are per thread, inherited by
/// threads created later. A launcher holding the capabilities but unable to pass them on is an
/// error, not a silent fall-back to one uid for all tenants.
pub fn id_switch() -> Result<IdSwitch, String> {
    if nix::unistd::geteuid().is_root() {
        return Ok(IdSwitch::Root);
    }
    let needed = [Capability::CAP_SETUID, Capability::CAP_SETGID];
    let held = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if !needed.iter().all(|cap| held(*cap)) {
        return Ok(IdSwitch::Unavailable);
    }
    for cap in needed {
        caps::raise(None, CapSet::Inheritable, cap)
            .and_then(|()| caps::raise(None, CapSet::Ambient, cap))
            .map_err(|e| format!("holding {cap} but cannot pass it to workers (ambient): {e}"))?;
    }
    Ok(IdSwitch::Capabilities)
}

/// The uids/gids tenants may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    /// First id.
    pub start: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdRange {
    fn contains(&self, id: u32) -> bool {
        id >= self.start && id - self.start < self.count
    }
}

/// Why a call cannot get ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The tenant has no configured ids.
    #[error("tenant `{0}` has no uid configured")]
    UnknownTenant(String),
    /// A configured id is outside the range or is 0.
    #[error("tenant `{tenant}`: uid/gid {uid}/{gid} outside the configured range")]
    OutOfRange {
        /// The tenant.
        tenant: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// Two tenants share a uid.
    #[error("tenants `{0}` and `{1}` share a uid")]
    Shared(String, String),
    /// The workspace is owned by someone else.
    #[error("workspace {path} is owned by uid {owner}, not the tenant's uid {uid}")]
    WrongOwner {
        /// The workspace.
        path: String,
        /// Its owner.
        owner: u32,
        /// The tenant's uid.
        uid: u32,
    },
    /// The workspace could not be inspected.
    #[error("workspace {path}: {message}")]
    Workspace {
        /// The workspace.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Tenant → ids, checked against the range.
pub fn check_tenants(range: &IdRange, tenants: &BTreeMap<String, Ids>) -> Result<(), IdError> {
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    for (tenant, ids) in tenants {
        if ids.uid == 0 || ids.gid == 0 || !range.contains(ids.uid) || !range.contains(ids.gid) {
            return Err(IdError::OutOfRange { tenant: tenant.clone(), uid: ids.uid, gid: ids.gid });
        }
        if let Some(other) = seen.insert(ids.uid, tenant) {
            return Err(IdError::Shared(other.to_owned(), tenant.clone()));
        }
    }
    Ok(())
}

/// The workspace must belong to the uid the tool runs as.
pub fn check_workspace_owner(path: &str, ids: Ids) -> Result<(), IdError> {
    let meta =
        std::fs::metadata(path).map_err(|e| IdError::Workspace { path: path.to_owned(), message: e.to_string() })?;
    if !meta.is_dir() {
        return Err(IdError::Workspace { path: path.to_owned(), message: "not a directory".into() });
    }
    if meta.uid() != ids.uid {
        return Err(IdError::WrongOwner { path: path.to_owned(), owner: meta.uid(), uid: ids.uid });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_must_be_unique_nonzero_and_in_range() {
        let range = IdRange { start: 100_000, count: 100 };
        let ids = |uid, gid| Ids { uid, gid };
        let ok = BTreeMap::from([("a".to_string(), ids(100_000, 100_000)), ("b".to_string(), ids(100_099, 100_001))]);
        check_tenants(&range, &ok).unwrap();
        let table = [
            BTreeMap::from([("a".to_string(), ids(100_100, 100_000))]),
            BTreeMap::from([("a".to_string(), ids(99_999, 100_000))]),
            BTreeMap::from([("a".to_string(), ids(100_000, 5))]),
            BTreeMap::from([("a".to_string(), ids(100_001, 100_001)), ("b".to_string(), ids(100_001, 100_002))]),
        ];
        for tenants in table {
            assert!(check_tenants(&range, &tenants).is_err(), "{tenants:?}");
        }
        assert!(
            check_tenants(&IdRange { start: 0, count: 10 }, &BTreeMap::from([("r".to_string(), ids(0, 0))])).is_err()
        );
    }
}
