//! Turning a [`ToolRequest`] into a [`ConfinementPlan`], refusing anything the configuration
//! does not allow. The gateway chooses the profile (from `spiderweb_policy::sandbox`); the
//! supervisor decides everything else from its own configuration: which uid the tenant gets,
//! which directories may be workspaces, each profile's protected paths and limits.

use std::path::{Path, PathBuf};

use spiderweb_proto::worker::ToolRequest;

use super::config::SupervisorConfig;
use crate::ids::check_workspace_owner;
use crate::plan::{ConfinementPlan, Ids};

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
    let tenant_ids = match switch_ids {
        true => Some(*config.tenants.get(&request.tenant).ok_or_else(|| format!("unknown tenant `{}`", request.tenant))?),
        false => None,
    };
    provision_workspace(config, &request.workspace, tenant_ids)?;
    let workspace = check_workspace(config, &request.workspace)?;
    let ids = if let Some(ids) = tenant_ids {
        check_workspace_owner(&workspace, ids).map_err(|e| e.to_string())?;
        Some(ids)
    } else {
        None
    };
    let rules = config.sandbox.rules(request.profile);
    Ok(ConfinementPlan::new(workspace, rules, ids, config.search_backend))
}

/// Creates a missing workspace that is a direct child of a workspace root (a new project's
/// first tool call): mode 0700, owned by the tenant when ids are switched. Anything deeper,
/// or outside the roots, is left to [`check_workspace`] to refuse. `mkdir` does not follow a
/// symlink in the last component, and an existing entry is never touched.
fn provision_workspace(config: &SupervisorConfig, workspace: &str, ids: Option<Ids>) -> Result<(), String> {
    let path = Path::new(workspace);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return Ok(()) };
    if path.symlink_metadata().is_ok() || name == "." || name == ".." {
        return Ok(());
    }
    let under_root = config.workspace_roots.iter().any(|root| root.canonicalize().is_ok_and(|root| root == parent));
    if !under_root {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(format!("cannot create workspace {workspace}: {e}")),
    }
    if let Some(ids) = ids {
        std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid))
            .map_err(|e| format!("cannot give workspace {workspace} to its tenant: {e}"))?;
    }
    tracing::info!(workspace, "created a new workspace");
    Ok(())
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
