//! The node's lease (spec §8.4–§8.5): `control.node_lease_refresh` at start and every refresh
//! interval, each new lease saved to the state file, then `control.node_service_upsert` so the
//! catalog follows.
//!
//! A failed refresh is retried with backoff (sooner than the next interval, so a short
//! gateway outage does not cost the lease); `node_not_found`/`node_auth_failed` mean the
//! gateway dropped this node, which no retry fixes: the credentials are removed from the state
//! file and the daemon stops with [`DaemonError::NodeForgotten`].

use serde_json::json;

use super::state_file::{NodeRecord, StateFile};
use super::{Daemon, DaemonError, apply_credentials};
use crate::control::ControlError;

pub struct Leases<'a> {
    pub daemon: &'a Daemon,
    pub file: &'a StateFile,
    pub record: NodeRecord,
    pub node_id: String,
    pub secret: String,
}

impl Leases<'_> {
    /// Refreshes now, retrying until it works or the node is forgotten.
    pub async fn refresh_until_ok(&mut self) -> Result<(), DaemonError> {
        let mut backoff = self.daemon.backoff();
        loop {
            match self.refresh().await {
                Ok(()) => return Ok(()),
                Err(e) => self.check_forgotten(&e)?,
            }
            backoff.wait().await;
        }
    }

    /// Every refresh interval: refresh, save, upsert. Returns only when the node is forgotten.
    pub async fn keep_refreshing(&mut self) -> Result<(), DaemonError> {
        loop {
            tokio::time::sleep(self.daemon.refresh_interval).await;
            self.refresh_until_ok().await?;
            self.upsert().await?;
        }
    }

    /// `node_service_upsert`; a failure other than "forgotten" is logged and left to the next
    /// refresh.
    pub async fn upsert(&mut self) -> Result<(), DaemonError> {
        let payload = self.daemon.advertised.upsert_payload(&self.node_id, &self.secret);
        match self.daemon.call("node_service_upsert", payload).await {
            Ok(_) => Ok(()),
            Err(e) => self.check_forgotten(&e),
        }
    }

    async fn refresh(&mut self) -> Result<(), ControlError> {
        let fs_url = self.daemon.control.url(&format!("/v2/fs/node/{}", self.node_id));
        let payload = json!({
            "node_id": self.node_id,
            "node_secret": self.secret,
            "fs_url": fs_url,
            "lease_ttl_ms": self.daemon.lease_ttl_ms,
        });
        let n = self.daemon.call("node_lease_refresh", payload).await?;
        if apply_credentials("node_lease_refresh", &n, &mut self.record).is_err() {
            return Err(ControlError::Protocol {
                op: "node_lease_refresh".into(),
                detail: "no node credentials".into(),
            });
        }
        if let Err(e) = self.file.save(&self.record) {
            // The lease is live at the gateway; a later save may work. Say so loudly.
            tracing::error!(error = %e, "lease refreshed but not saved");
        }
        tracing::info!(lease_expires_at_ms = self.record.lease_expires_at_ms, "lease refreshed");
        Ok(())
    }

    /// `Err` when `e` says the gateway forgot this node (credentials then cleared); else logs.
    fn check_forgotten(&mut self, e: &ControlError) -> Result<(), DaemonError> {
        match e.code() {
            Some(code @ ("node_not_found" | "node_auth_failed")) => {
                self.record.forget_pairing();
                self.file.save(&self.record)?;
                Err(DaemonError::NodeForgotten {
                    node_id: self.node_id.clone(),
                    code: code.to_owned(),
                    state_file: self.file.path().display().to_string(),
                })
            }
            _ => {
                tracing::warn!(error = %e, code = e.code().unwrap_or("transport"), "control call failed; retrying");
                Ok(())
            }
        }
    }
}
