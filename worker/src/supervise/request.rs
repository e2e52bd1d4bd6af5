//! Turning a [`ToolRequest`] into a [`ConfinementPlan`], refusing anything the configuration
//! does not allow. The gateway chooses the profile (from `spiderweb_policy::sandbox`); the
//! supervisor decides everything else from its own configuration: which uid the tenant gets,
//! which directories may be workspaces, each profile's protected paths and limits.

use std::path::{Path, PathBuf};

use spiderweb_proto::worker::ToolRequest;

use super::config::SupervisorConfig;
use crate::ids::check_workspace_owner;
use crate::plan::ConfinementPlan;

/// Longest `request_id`, `tenant` or `session`.
pub const MAX_ID_BYTES: usize = 256;

/// Checks a request and builds its plan; the error is the `rejected` message.
pub fn plan_for(config: &SupervisorConfig, request: &ToolRequest, switch_ids: bool) -> Result<ConfinementPlan, String> {
    for (field, value) in
        [("request_id", &request.request_id), ("tenant", &request.tenant), ("session", &request.session)]
    {
        if value.is_empty() || value.len() > MAX_ID_BYTES {
            return Err(format!("{field} must be 1..={MAX_ID_BYTES} bytes"));
        }
    }
    let workspace = check_workspace(config, &request.workspace)?;
    let ids = if switch_ids {
        let ids = *config.tenants.get(&request.tenant).ok_or_else(|| format!("unknown tenant `{}`", request.tenant))?;
        check_workspace_owner(&workspace, ids).map_err(|e| e.to_string())?;
        Some(ids)
    } else {
        None
    };
    let rules = config.sandbox.rules(request.profile);
    Ok(ConfinementPlan::new(workspace, rules, ids, config.search_backend))
}

/// The workspace must be an existing directory strictly inside a configured root, named by
/// its canonical path (no symlink, `.` or `..`), so the path the worker binds is the path
/// that was checked.
fn check_workspace(config: &SupervisorConfig, workspace: &str) -> Result<String, String> {
    let path = Path::new(workspace);
    let canonical: PathBuf = path.canonicalize().map_err(|e| format!("workspace {workspace}: {e}"))?;
    if canonical != path {
        return Err(format!("workspace {workspace} must be given as its canonical path"));
    }
    let inside = config.workspace_roots.iter().any(|root| {
        root.canonicalize()
            .is_ok_and(|root| canonical.strip_prefix(&root).is_ok_and(|rest| !rest.as_os_str().is_empty()))
    });
    if !inside {
        return Err(format!("workspace {workspace} is not inside a configured workspace root"));
    }
    if !canonical.is_dir() {
        return Err(format!("workspace {workspace} is not a directory"));
    }
    Ok(workspace.to_owned())
}
