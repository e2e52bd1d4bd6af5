//! Stored shapes of paired nodes, invites and pending join requests (spec unified-v2 §6.6).
//!
//! Why its own file: these records change together (a redeemed invite and the node it
//! created, an approved request and its node, a deleted node and the mounts that named it),
//! so the store writes them as one [`NodeBatch`] in one transaction.
//!
//! What is never here: a node secret or an invite token in plaintext. Both are kept as
//! SHA-256 hex digests (`secret_sha256`, `token_sha256`), which the SQLite schema checks.
//! Lease tokens are handed out and not stored at all: nothing ever verifies one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ProjectRecord;

/// `{os, arch, runtime_kind}` as a node reports it (`unknown` when it did not say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub runtime_kind: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform { os: "unknown".into(), arch: "unknown".into(), runtime_kind: "unknown".into() }
    }
}

/// A paired node and its service catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub fs_url: String,
    /// Lowercase hex SHA-256 of the node secret; stored in its own checked column.
    #[serde(skip)]
    pub secret_sha256: String,
    pub platform: Platform,
    pub labels: BTreeMap<String, String>,
    /// Validated service entries (spec §6.7 SV), in the order the node listed them.
    pub services: Vec<serde_json::Value>,
    pub joined_at_ms: i64,
    pub last_seen_ms: i64,
    pub lease_expires_at_ms: i64,
}

/// A node invite; kept after redemption so a second use says `invite_redeemed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub id: String,
    #[serde(skip)]
    pub token_sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub redeemed: bool,
}

/// A node's request to join, waiting for an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoinRecord {
    pub id: String,
    pub node_name: String,
    pub fs_url: String,
    pub platform: Platform,
    pub requested_at_ms: i64,
}

/// Sequence counters of `node-N`, `invite-N` and `pending-join-N` (each starts at 1 and is
/// only ever raised, so an id is never issued twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSeqs {
    pub node: u64,
    pub invite: u64,
    pub pending_join: u64,
}

impl Default for NodeSeqs {
    fn default() -> Self {
        NodeSeqs { node: 1, invite: 1, pending_join: 1 }
    }
}

/// Node-related changes written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct NodeBatch {
    pub put_nodes: Vec<NodeRecord>,
    pub removed_nodes: Vec<String>,
    pub put_invites: Vec<InviteRecord>,
    pub removed_invites: Vec<String>,
    pub put_pending_joins: Vec<PendingJoinRecord>,
    pub removed_pending_joins: Vec<String>,
    /// Projects whose mount tables changed with the nodes (a removed node's mounts go).
    pub put_projects: Vec<ProjectRecord>,
    pub seqs: NodeSeqs,
}

/// Everything about nodes loaded at start-up.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub nodes: Vec<NodeRecord>,
    pub invites: Vec<InviteRecord>,
    pub pending_joins: Vec<PendingJoinRecord>,
    pub seqs: NodeSeqs,
}
