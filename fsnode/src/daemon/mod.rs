//! Daemon mode of `spiderweb-fs-node` (`--control-url`, spec §8): pair with a gateway, keep
//! a lease, advertise services, and serve the exports through a reverse tunnel (§7) instead of
//! listening.
//!
//! Order: the state file is read and the gateway's address resolved *before* the node
//! confines itself (main); then [`Daemon::run`]: pair (`pairing`) unless the state file holds
//! credentials, make the node secret the token every relayed hello must carry, refresh the
//! lease and upsert the services (`lease`), then keep the lease refreshed while the tunnel
//! (`tunnel`) serves. Every state change is saved before it is relied on.
//!
//! It never retries in a tight loop: control calls and tunnel connects that fail wait with
//! [`backoff::Backoff`]. It never guesses around a refusal: a gateway that refuses to pair the
//! node, or no longer knows it, ends the daemon with an error that says what to do.

pub mod backoff;
mod lease;
mod pairing;
pub mod services;
pub mod state_file;
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::control::{ControlError, ControlUrl};
use crate::node::NodeState;
use backoff::Backoff;
use services::Advertised;
use state_file::{NodeRecord, StateFile, StateFileError};

/// How the node gets its credentials the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairMode {
    /// `control.node_join` with this invite token.
    Invite(String),
    /// `control.node_join_request`, then `control.node_join_approve` until approved.
    Request,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("the gateway refused to pair this node: {0}")]
    PairingRefused(ControlError),
    #[error(
        "join request {request_id} is no longer pending (denied, or approved by someone else, which cannot hand \
         this node its secret); it was removed from {state_file}: start the node again to file a new request, or \
         pair it with an invite"
    )]
    RequestGone { request_id: String, state_file: String },
    /// The control token is not an admin token (the gateway answered `forbidden`, or the
    /// connect gate of a user with no project), so no join request of this node can complete.
    #[error(
        "pairing by request needs an admin control token, because only the approver of a join request receives \
         the node's secret; pair with an invite instead (--invite-token, or the invite-token credential), for which \
         a user token is enough (the gateway answered: {0})"
    )]
    RequestNeedsAdmin(ControlError),
    #[error(
        "the gateway no longer knows node {node_id} ({code}: its lease expired and it was reaped, or it was \
         deleted); its credentials were removed from {state_file}: start the node again to pair anew"
    )]
    NodeForgotten { node_id: String, code: String, state_file: String },
    #[error("the gateway's reply to control.{op} lacks {field}")]
    BadReply { op: String, field: &'static str },
}

/// Settings of daemon mode (the command line's, checked).
#[derive(Clone, Debug)]
pub struct Daemon {
    pub control: ControlUrl,
    pub control_token: Option<String>,
    pub operator_token: Option<String>,
    pub pairing: PairMode,
    pub node_name: String,
    pub fs_url: Option<String>,
    pub lease_ttl_ms: u64,
    pub refresh_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub advertised: Advertised,
}

/// Request ids of the daemon's control calls start with this.
const ID_PREFIX: &str = "fs-node";

impl Daemon {
    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_base, self.backoff_max)
    }

    async fn call(&self, op: &str, payload: Value) -> Result<Value, ControlError> {
        self.control.call(self.control_token.as_deref(), ID_PREFIX, op, payload).await
    }

    /// Runs until the gateway refuses the node for good (the error says why). `auth_token` is
    /// the `--auth-token` flag, which the node secret overrides.
    pub async fn run(
        &self,
        node: Arc<NodeState>,
        file: StateFile,
        mut record: NodeRecord,
        auth_token: Option<&str>,
    ) -> Result<(), DaemonError> {
        record.node_name = Some(self.node_name.clone());
        record.fs_url = self.fs_url.clone();
        let (node_id, secret) = pairing::pair(self, &file, &mut record).await?;
        announce(&format!("paired as {node_id}"));
        if auth_token.is_some_and(|t| t != secret) {
            tracing::warn!("--auth-token is ignored in daemon mode: relayed clients authenticate with the node secret");
        }
        if !node.require_auth_token(&secret) {
            // Unreachable from main, which configures no token in daemon mode; refuse anyway.
            return Err(DaemonError::BadReply {
                op: "node_join".into(),
                field: "a node secret matching the node's token",
            });
        }
        let mut leases =
            lease::Leases { daemon: self, file: &file, record, node_id: node_id.clone(), secret: secret.clone() };
        leases.refresh_until_ok().await?;
        leases.upsert().await?;
        tokio::select! {
            result = leases.keep_refreshing() => result,
            never = tunnel::serve_forever(self, &node_id, &secret, node) => match never {},
        }
    }
}

/// A progress line on stdout for whoever started the node (tests, operators). Never fails:
/// `println!` would panic, and end the daemon, once the reader of stdout has gone away.
fn announce(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// A refusal worth retrying (the gateway's trouble, not a verdict on this node).
fn is_transient(e: &ControlError) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(code, "control_plane_error" | "storage_error" | "queue_saturated" | "execution_failed"),
    }
}

/// Copies the node credential envelope N (`unified-v2.md` §6.6) into `record`.
fn apply_credentials(op: &str, n: &Value, record: &mut NodeRecord) -> Result<(String, String), DaemonError> {
    let text = |field: &'static str| {
        n.get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| DaemonError::BadReply { op: op.to_owned(), field })
    };
    let (node_id, secret) = (text("node_id")?, text("node_secret")?);
    record.node_id = Some(node_id.clone());
    record.node_secret = Some(secret.clone());
    record.lease_token = n.get("lease_token").and_then(Value::as_str).map(str::to_owned);
    record.lease_expires_at_ms = n.get("lease_expires_at_ms").and_then(Value::as_u64);
    Ok((node_id, secret))
}
