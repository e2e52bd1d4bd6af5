//! The gateway's embedded node `spiderweb-local` (spec unified-v2 §8).
//!
//! When the gateway has `fs.exports`, it is a node itself: registered in the node table with
//! `fs_url` = its own `/v2/fs` and secret = `fs.auth_token` (so `mother` gets the token from
//! `workspace_status`, like for any node), its lease renewed every half lease, and its exports
//! mounted in the `system` project at the original's paths — only those whose export exists.
//! Without exports, a local node left over from an earlier run is removed at start.
//!
//! The synthetic exports (`system-meta`, `system-chat`, `system-jobs`, served by
//! `crate::fs_exports` on the same `/v2/fs`) are among the export names the caller passes, so
//! they are mounted where the original mounts them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::LocalNode;
use crate::plane::ControlPlane;

pub const LOCAL_NODE_ID: &str = "spiderweb-local";

/// The export that backs `/nodes/local/fs`: `system-workspace` if configured, else the first.
fn workspace_export(exports: &[String]) -> Option<&str> {
    exports.iter().find(|e| *e == "system-workspace").or(exports.first()).map(String::as_str)
}

/// `(mount_path, export_name)` of the `system` project for these export names.
pub fn system_mounts(exports: &[String]) -> Vec<(String, String)> {
    let mut mounts = Vec::new();
    let mut add = |paths: &[&str], export: &str| {
        for path in paths {
            mounts.push(((*path).to_owned(), export.to_owned()));
        }
    };
    for (export, paths) in [
        ("system-meta", &["/meta", "/projects/system/meta"][..]),
        ("system-chat", &["/agents/self/chat", "/projects/system/agents/self/chat"][..]),
        ("system-jobs", &["/agents/self/jobs", "/projects/system/agents/self/jobs"][..]),
    ] {
        if exports.iter().any(|e| e == export) {
            add(paths, export);
        }
    }
    if let Some(export) = workspace_export(exports) {
        add(&["/nodes/local/fs", "/projects/system/nodes/local/fs", "/projects/system/fs/local::fs"], export);
    }
    mounts
}

/// Registers the local node now, then renews it every half lease until `shutdown`.
pub async fn renew_forever<S: AsRef<ControlPlane>>(
    owner: Arc<S>,
    local: LocalNode,
    mounts: Vec<(String, String)>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_millis((local.lease_ttl_ms / 2).max(1000));
    loop {
        let plane: &ControlPlane = (*owner).as_ref();
        if let Err(e) = plane.ensure_local_node(&local, &mounts) {
            tracing::error!(error = ?e, "could not renew the local node's lease; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_the_exports_that_exist() {
        let names = |m: Vec<(String, String)>| m.into_iter().map(|(p, e)| format!("{p}={e}")).collect::<Vec<_>>();
        assert_eq!(
            names(system_mounts(&["work".into(), "docs".into()])),
            ["/nodes/local/fs=work", "/projects/system/nodes/local/fs=work", "/projects/system/fs/local::fs=work"]
        );
        let all = names(system_mounts(&["docs".into(), "system-workspace".into(), "system-meta".into()]));
        assert!(all.contains(&"/meta=system-meta".to_owned()));
        assert!(all.contains(&"/nodes/local/fs=system-workspace".to_owned()));
        assert!(!all.iter().any(|m| m.contains("chat")));
        assert!(system_mounts(&[]).is_empty());
    }
}
