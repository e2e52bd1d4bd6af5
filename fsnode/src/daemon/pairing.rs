//! Getting the node's credentials (spec §8.2): by invite (`control.node_join`), or by request
//! (`control.node_join_request` once, its id saved, then `control.node_join_approve` retried
//! with backoff until someone with the right to approve does, which with an admin control
//! token and `--operator-token` when the gateway wants one is the daemon itself).
//!
//! A user control token is enough for pairing by invite (the invite authorises `node_join`);
//! pairing by request needs an admin token, because the approval's reply is the only way the
//! node's secret is handed out, so the node must be the approver.
//!
//! Credentials are saved to the state file before they are used, so a node that crashes right
//! after pairing does not pair twice. A refusal (bad invite, token without the right role) ends
//! pairing with the gateway's code; only transport failures and the gateway's own trouble are
//! retried — except the approval, which is *expected* to fail until someone approves (but never
//! will for a token that may not approve at all: that ends pairing too).

use serde_json::{Value, json};
use spiderweb_proto::codes::control as code;

use super::services::platform;
use super::state_file::{NodeRecord, StateFile};
use super::{Daemon, DaemonError, apply_credentials, is_transient};
use crate::control::ControlError;

pub async fn pair(d: &Daemon, file: &StateFile, record: &mut NodeRecord) -> Result<(String, String), DaemonError> {
    if let Some((id, secret)) = record.credentials() {
        return Ok((id.to_owned(), secret.to_owned()));
    }
    let mut backoff = d.backoff();
    let n = match &d.pairing {
        super::PairMode::Invite(invite) => {
            let mut payload = json!({"invite_token": invite, "node_name": d.node_name, "lease_ttl_ms": d.lease_ttl_ms});
            with_fs_url(d, &mut payload);
            loop {
                match d.call("node_join", payload.clone()).await {
                    Ok(n) => break n,
                    Err(e) if is_transient(&e) => tracing::warn!(error = %e, "pairing by invite failed; retrying"),
                    Err(e) => return Err(DaemonError::PairingRefused(e)),
                }
                backoff.wait().await;
            }
        }
        super::PairMode::Request => {
            let request_id = match record.request_id.clone() {
                Some(id) => id,
                None => {
                    let id = request(d, &mut backoff).await?;
                    record.request_id = Some(id.clone());
                    file.save(record)?;
                    id
                }
            };
            super::announce(&format!("join request {request_id} filed; waiting for approval"));
            backoff.reset();
            let mut payload = json!({"request_id": request_id, "lease_ttl_ms": d.lease_ttl_ms});
            if let Some(token) = &d.operator_token {
                payload["operator_token"] = token.as_str().into();
            }
            loop {
                match d.call("node_join_approve", payload.clone()).await {
                    Ok(n) => break n,
                    Err(e) if e.code() == Some("pending_join_not_found") => {
                        record.request_id = None;
                        file.save(record)?;
                        return Err(DaemonError::RequestGone {
                            request_id,
                            state_file: file.path().display().to_string(),
                        });
                    }
                    Err(e) if refuses_the_role(&e) => return Err(DaemonError::RequestNeedsAdmin(e)),
                    Err(e) => tracing::info!(request_id, error = %e, "not approved yet; retrying"),
                }
                backoff.wait().await;
            }
        }
    };
    let credentials = apply_credentials("node_join", &n, record)?;
    record.request_id = None;
    file.save(record)?;
    Ok(credentials)
}

/// Files the join request; its id.
async fn request(d: &Daemon, backoff: &mut super::Backoff) -> Result<String, DaemonError> {
    let mut payload = json!({"node_name": d.node_name, "platform": platform()});
    with_fs_url(d, &mut payload);
    loop {
        match d.call("node_join_request", payload.clone()).await {
            Ok(reply) => {
                return reply
                    .get("request_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or(DaemonError::BadReply { op: "node_join_request".into(), field: "request_id" });
            }
            Err(e) if refuses_the_role(&e) => return Err(DaemonError::RequestNeedsAdmin(e)),
            Err(e) if is_transient(&e) => tracing::warn!(error = %e, "join request failed; retrying"),
            Err(e) => return Err(DaemonError::PairingRefused(e)),
        }
        backoff.wait().await;
    }
}

/// A refusal that says the control token's role cannot do this: `forbidden`, or the connect
/// gate a user token meets on a gateway where it has no project yet.
fn refuses_the_role(e: &ControlError) -> bool {
    matches!(e.code(), Some(code::FORBIDDEN | code::PROVISIONING_REQUIRED | code::PROJECT_CONTEXT_REQUIRED))
}

/// `fs_url` only when `--fs-url` was given. The original node sends `""` instead; both
/// gateways treat an absent URL like an empty one, and absent cannot fail a URL check.
fn with_fs_url(d: &Daemon, payload: &mut Value) {
    if let Some(url) = &d.fs_url {
        payload["fs_url"] = url.as_str().into();
    }
}
