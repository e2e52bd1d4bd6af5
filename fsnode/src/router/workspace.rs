//! Workspace hydration (spec §9.2): the router's endpoints taken from a gateway's
//! `control.workspace_status` instead of (or besides) `--endpoint` flags.
//!
//! Each entry of the status's `desired_mounts` (else `mounts`, see [`endpoints_of`]) whose
//! `fs_url` is a `ws://…/v2/fs…` URL becomes an endpoint: name = `node_name` (else `node_id`), URL = `fs_url`, export = `export_name`, mount
//! = `mount_path`, hello token = `fs_auth_token` (the node secret, which the gateway shows only
//! to `mother`). In `mount` mode a task fetches the status again every interval and replaces
//! the router's endpoints with the result, so mounts and failover groups follow the project.
//!
//! Not done: the peer's push path (`control.debug_subscribe` and `debug.event` topology
//! deltas). The original gateway rejects `debug_subscribe`, so that path never worked there;
//! polling is what works against both gateways.
//!
//! A failed fetch leaves the endpoints as they were (a gateway restart must not empty a live
//! mount); a successful one is applied even when it removes everything.

use std::sync::Weak;
use std::time::Duration;

use serde_json::{Value, json};

use super::{EndpointConfig, EndpointSpec, Router};
use crate::control::{ControlError, ControlUrl};

/// Most endpoints taken from one status (a project has a handful of mounts).
pub const MAX_HYDRATED_ENDPOINTS: usize = 256;
/// Request ids of the mount client's control calls start with this (`fs-mount-workspace`, …).
const ID_PREFIX: &str = "fs-mount";

/// Why hydration failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(
        "the workspace{} has no mount reachable over ws:// …/v2/fs ({total} mount(s) listed); mount a node's \
         export into the project first",
        project.as_deref().map(|p| format!(" of project {p}")).unwrap_or_default()
    )]
    NoUsableMount { project: Option<String>, total: usize },
}

/// Where the workspace comes from.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub control: ControlUrl,
    /// Bearer token of the control channel.
    pub token: Option<String>,
    pub project_id: Option<String>,
    pub project_token: Option<String>,
}

impl Workspace {
    /// The endpoints of the current `workspace_status`; an error when none is usable.
    pub async fn fetch(&self) -> Result<Vec<EndpointConfig>, WorkspaceError> {
        let mut payload = json!({});
        if let Some(p) = &self.project_id {
            payload["project_id"] = p.as_str().into();
        }
        if let Some(t) = &self.project_token {
            payload["project_token"] = t.as_str().into();
        }
        let status = self.control.call(self.token.as_deref(), ID_PREFIX, "workspace_status", payload).await?;
        let endpoints = endpoints_of(&status);
        if endpoints.is_empty() {
            let total = ["desired_mounts", "mounts"]
                .iter()
                .filter_map(|k| status.get(*k).and_then(Value::as_array))
                .map(Vec::len)
                .max()
                .unwrap_or(0);
            return Err(WorkspaceError::NoUsableMount { project: self.project_id.clone(), total });
        }
        Ok(endpoints)
    }

    /// Re-fetches every `interval` for as long as `router` lives; each result, after the
    /// `fixed` endpoints (from flags), becomes the router's endpoint list.
    pub fn spawn_sync(
        self,
        router: Weak<Router>,
        interval: Duration,
        fixed: Vec<EndpointConfig>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let result = self.fetch().await;
                let Some(router) = router.upgrade() else { return };
                let found = match result {
                    Ok(found) => found,
                    Err(WorkspaceError::NoUsableMount { .. }) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(error = %e, "workspace sync failed; keeping the current endpoints");
                        continue;
                    }
                };
                let (added, removed) = router.set_endpoints(fixed.iter().cloned().chain(found).collect());
                if added + removed > 0 {
                    tracing::info!(added, removed, "workspace endpoints changed");
                }
            }
        })
    }
}

/// The usable mounts of a `workspace_status` payload, as endpoints.
///
/// From `desired_mounts` (every visible mount) when present, else `mounts` (the spec's field:
/// one selected node per path). With `mounts` alone a path never has two endpoints, so a
/// failover group could only change at the next sync, once the gateway has noticed the node
/// is gone (its lease expired); with every node of the path in the group, the router's health
/// checks fail over at once.
pub fn endpoints_of(status: &Value) -> Vec<EndpointConfig> {
    let listed = |key: &str| status.get(key).and_then(Value::as_array).filter(|m| !m.is_empty());
    let Some(mounts) = listed("desired_mounts").or_else(|| listed("mounts")) else {
        return Vec::new();
    };
    let text = |m: &Value, k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let mut endpoints = Vec::new();
    for mount in mounts {
        let Some(url) = text(mount, "fs_url").filter(|u| u.starts_with("ws://") && u.contains("/v2/fs")) else {
            continue;
        };
        let Some(name) = text(mount, "node_name").or_else(|| text(mount, "node_id")) else {
            continue;
        };
        let export = text(mount, "export_name");
        let mount_path = text(mount, "mount_path").unwrap_or_else(|| "/".into());
        match EndpointSpec::from_parts(&name, &url, export.as_deref(), &mount_path) {
            Ok(spec) => endpoints.push(EndpointConfig { spec, auth_token: text(mount, "fs_auth_token") }),
            Err(e) => tracing::warn!(mount = %mount, error = %e, "skipping a workspace mount"),
        }
        if endpoints.len() == MAX_HYDRATED_ENDPOINTS {
            tracing::warn!(
                limit = MAX_HYDRATED_ENDPOINTS,
                "more workspace mounts than endpoints allowed; the rest are ignored"
            );
            break;
        }
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_mounts_become_endpoints() {
        let status = json!({"mounts": [
            {"mount_path": "/src", "node_id": "node-1", "export_name": "work", "node_name": "laptop",
             "fs_url": "ws://127.0.0.1:18790/v2/fs/node/node-1", "fs_auth_token": "secret-1", "online": true, "state": "online"},
            {"mount_path": "/gone", "node_id": "node-2", "export_name": "w", "node_name": null, "fs_url": null,
             "fs_auth_token": null, "online": false, "state": "missing"},
            {"mount_path": "docs/", "node_id": "node-3", "export_name": "d", "node_name": null,
             "fs_url": "ws://h:1/v2/fs", "fs_auth_token": null},
            {"mount_path": "/x", "node_id": "node-4", "export_name": "e", "fs_url": "http://h:1/v2/fs"},
            {"mount_path": "/y/../z", "node_id": "node-5", "export_name": "e", "fs_url": "ws://h:1/v2/fs"}
        ]});
        let endpoints = endpoints_of(&status);
        assert_eq!(endpoints.len(), 2, "{endpoints:?}");
        assert_eq!(
            endpoints[0],
            EndpointConfig {
                spec: EndpointSpec::parse("laptop=ws://127.0.0.1:18790/v2/fs/node/node-1#work@/src").unwrap(),
                auth_token: Some("secret-1".into()),
            }
        );
        assert_eq!(endpoints[1].spec.name, "node-3", "node id when the name is null");
        assert_eq!(endpoints[1].spec.mount, "/docs");
        assert_eq!(endpoints[1].auth_token, None);
        assert!(endpoints_of(&json!({"mounts": []})).is_empty());
        let group = json!({
            "mounts": [{"mount_path": "/src", "node_id": "node-1", "export_name": "w", "fs_url": "ws://g/v2/fs/node/node-1"}],
            "desired_mounts": [
                {"mount_path": "/src", "node_id": "node-1", "export_name": "w", "fs_url": "ws://g/v2/fs/node/node-1"},
                {"mount_path": "/src", "node_id": "node-2", "export_name": "w", "fs_url": "ws://g/v2/fs/node/node-2"}
            ]
        });
        let names: Vec<String> = endpoints_of(&group).into_iter().map(|e| e.spec.name).collect();
        assert_eq!(names, ["node-1", "node-2"], "every node of a path: a failover group");
        assert!(endpoints_of(&json!({})).is_empty());
    }
}
