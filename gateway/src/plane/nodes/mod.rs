//! Paired filesystem nodes: invites, join requests, leases and service catalogs
//! (spec unified-v2 §6.6–6.7).
//!
//! A node joins with an invite (`node_join`) or by asking (`node_join_request`) and being
//! approved by an operator; either way it receives a `node_secret` it must present for every
//! later call about itself (lease refresh, catalog upsert, delete) and in its tunnel hello.
//! For `node_join`, `node_lease_refresh` and `node_service_upsert` that credential (the invite
//! token, or the node secret) is the whole authorisation: any role may call them
//! (`spiderweb_policy::role`), so each checks it before it changes anything, and answers a bad
//! one without regard to the caller's role.
//! A node is online while its lease runs; every control-plane call first reaps nodes whose
//! lease expired, removing them and their project mounts in one transaction.
//!
//! What this module must never do: keep a secret in the store (only SHA-256 digests; the
//! plaintext secret is held in memory once the node has shown it, so that `workspace_status`
//! can give it to `mother`), or let input grow state without bound (invites, pending joins,
//! nodes, services and labels are capped with a clear error).
//!
//! Ordering: the store is written before memory changes, so an acknowledged change is durable
//! and a failed write changes nothing (as in `projects.rs`).

pub mod catalog;
pub mod event_log;
pub mod local;
pub mod watch;

use std::collections::BTreeMap;

use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use spiderweb_policy::session::{SYSTEM_PROJECT, valid_display};
use spiderweb_proto::codes::control as code;

use super::args::Args;
use super::{ControlPlane, OpError, OpResult, PlaneState, Project, hex, now_ms};
use crate::store::nodes::{InviteRecord, NodeBatch, NodeRecord, NodeSeqs, NodeSnapshot, PendingJoinRecord, Platform};
use crate::store::{MountRecord, StoreError};
use crate::tokens::{Digest, digest, digests_equal};

/// Paired nodes a gateway keeps.
pub const MAX_NODES: usize = 1024;
/// Join requests waiting for an operator (any role may ask, so this is what bounds them).
pub const MAX_PENDING_JOINS: usize = 256;
/// Invite records kept (redeemed and expired ones are pruned first when full).
pub const MAX_INVITES: usize = 1024;
/// Longest lease or invite lifetime a caller may ask for: 30 days.
const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
const DEFAULT_INVITE_TTL_MS: u64 = 1_800_000;
pub const DEFAULT_LEASE_TTL_MS: u64 = 900_000;

/// Process-lifetime counters of `control.metrics` `invites`/`nodes` and `/metrics`.
#[derive(Default)]
pub struct NodeCounters {
    pub invites_created: Counter,
    pub invites_redeemed: Counter,
    pub joins: Counter,
    pub lease_refreshes: Counter,
    pub ensured: Counter,
    pub deletes: Counter,
    pub reaped: Counter,
}

/// A paired node in memory.
#[derive(Clone, Debug)]
pub struct Node {
    pub record: NodeRecord,
    secret_digest: Digest,
    /// The plaintext secret, once the node has presented it to this process.
    pub secret: Option<String>,
}

impl Node {
    fn new(record: NodeRecord, secret: Option<String>) -> Result<Node, String> {
        let secret_digest = super::projects::parse_digest(&record.secret_sha256)
            .ok_or_else(|| format!("node {}: bad secret digest", record.id))?;
        Ok(Node { record, secret_digest, secret })
    }

    pub fn online(&self, now: i64) -> bool {
        self.record.lease_expires_at_ms > now
    }

    /// Whether `presented` is this node's secret (constant-time on digests).
    pub fn secret_matches(&self, presented: &str) -> bool {
        digests_equal(&digest(presented), &self.secret_digest)
    }

    fn list_item(&self) -> Value {
        let r = &self.record;
        json!({"node_id": r.id, "node_name": r.name, "fs_url": r.fs_url, "platform": platform_json(&r.platform),
               "service_count": r.services.len(), "joined_at_ms": r.joined_at_ms, "last_seen_ms": r.last_seen_ms,
               "lease_expires_at_ms": r.lease_expires_at_ms})
    }

    /// The catalog `C` of spec §6.7.
    pub fn catalog(&self) -> Value {
        let r = &self.record;
        json!({"node_id": r.id, "node_name": r.name, "platform": platform_json(&r.platform),
               "labels": r.labels, "services": r.services})
    }
}

fn platform_json(p: &Platform) -> Value {
    json!({"os": p.os, "arch": p.arch, "runtime_kind": p.runtime_kind})
}

/// The credential envelope `N` (spec §6.6).
fn credential(node: &NodeRecord, secret: &str, lease_token: &str) -> Value {
    json!({"node_id": node.id, "node_name": node.name, "fs_url": node.fs_url, "node_secret": secret,
           "lease_token": lease_token, "platform": platform_json(&node.platform),
           "lease_expires_at_ms": node.lease_expires_at_ms})
}

fn pending_json(p: &PendingJoinRecord) -> Value {
    json!({"request_id": p.id, "node_name": p.node_name, "fs_url": p.fs_url,
           "platform": platform_json(&p.platform), "requested_at_ms": p.requested_at_ms})
}

struct Invite {
    record: InviteRecord,
    digest: Digest,
}

/// Nodes, invites and pending joins; part of [`PlaneState`], so one lock covers them and the
/// project mounts that name them.
#[derive(Default)]
pub struct NodeTable {
    pub nodes: BTreeMap<String, Node>,
    invites: BTreeMap<String, Invite>,
    pending: BTreeMap<String, PendingJoinRecord>,
    seqs: NodeSeqs,
}

impl NodeTable {
    pub fn from_snapshot(snapshot: NodeSnapshot) -> Result<NodeTable, StoreError> {
        let mut table = NodeTable { seqs: snapshot.seqs, ..NodeTable::default() };
        for record in snapshot.nodes {
            let node = Node::new(record, None).map_err(StoreError::Corrupt)?;
            table.nodes.insert(node.record.id.clone(), node);
        }
        for record in snapshot.invites {
            let digest = super::projects::parse_digest(&record.token_sha256)
                .ok_or_else(|| StoreError::Corrupt(format!("invite {}: bad token digest", record.id)))?;
            table.invites.insert(record.id.clone(), Invite { record, digest });
        }
        for record in snapshot.pending_joins {
            table.pending.insert(record.id.clone(), record);
        }
        Ok(table)
    }

    pub fn online_count(&self, now: i64) -> usize {
        self.nodes.values().filter(|n| n.online(now)).count()
    }

    pub fn active_invites(&self, now: i64) -> usize {
        self.invites.values().filter(|i| !i.record.redeemed && i.record.expires_at_ms > now).count()
    }

    /// Builds a batch that carries the current id counters.
    fn batch(&self) -> NodeBatch {
        NodeBatch { seqs: self.seqs, ..NodeBatch::default() }
    }
}

/// `prefix` + 32 lowercase hex of 16 random bytes (spec §6.6 token format).
fn fresh_token(prefix: &str) -> Result<String, OpError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| OpError::new(code::CONTROL_PLANE_ERROR, format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

fn next_id(seq: &mut u64, prefix: &str, taken: impl Fn(&str) -> bool) -> String {
    loop {
        let id = format!("{prefix}{seq}");
        *seq += 1;
        if !taken(&id) {
            return id;
        }
    }
}

fn node_not_found() -> OpError {
    OpError::new(code::NODE_NOT_FOUND, "NodeNotFound")
}
fn node_auth_failed() -> OpError {
    OpError::new(code::NODE_AUTH_FAILED, "NodeAuthFailed")
}
fn pending_not_found() -> OpError {
    OpError::new(code::PENDING_JOIN_NOT_FOUND, "PendingJoinNotFound")
}
fn saturated(what: &str, max: usize) -> OpError {
    OpError::new(code::QUEUE_SATURATED, format!("{what} limit ({max}) reached"))
}

/// A time-to-live argument: a positive integer of at most 30 days.
fn ttl_arg(args: &Args<'_>, key: &str, default: u64) -> Result<u64, OpError> {
    match args.optional_u64(key)? {
        None => Ok(default),
        Some(ms) if (1..=MAX_TTL_MS).contains(&ms) => Ok(ms),
        Some(_) => Err(OpError::new(code::INVALID_PAYLOAD, format!("InvalidPayload: {key} must be 1 to {MAX_TTL_MS}"))),
    }
}

/// `fs_url`: `ws://…/v2/fs…`, at most 512 characters. An empty string means "not given"
/// (the original's daemon sends `""` when it has no URL).
fn fs_url_arg<'a>(args: &Args<'a>) -> Result<Option<&'a str>, OpError> {
    match args.raw("fs_url") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if valid_fs_url(s) => Ok(Some(s)),
        Some(_) => Err(OpError::new(
            code::INVALID_PAYLOAD,
            "InvalidPayload: fs_url must start with ws://, contain /v2/fs and be at most 512 characters",
        )),
    }
}

pub fn valid_fs_url(s: &str) -> bool {
    s.starts_with("ws://") && s.contains("/v2/fs") && s.len() <= 512 && s.chars().all(|c| c > ' ' && c != '\u{7f}')
}

fn node_name_arg<'a>(args: &Args<'a>) -> Result<Option<&'a str>, OpError> {
    match args.raw("node_name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if valid_display(s, 128) => Ok(Some(s)),
        Some(_) => Err(OpError::invalid_payload()),
    }
}

/// A secret argument: 1 to 256 characters.
fn secret_arg<'a>(args: &Args<'a>, key: &str) -> Result<&'a str, OpError> {
    let s = args.required_str(key)?;
    if s.len() > 256 { Err(OpError::invalid_payload()) } else { Ok(s) }
}

/// Mount tables of every project with the mounts of `node_ids` removed; only projects that
/// changed are returned.
fn projects_without_mounts_of(state: &PlaneState, node_ids: &[String]) -> Vec<Project> {
    state
        .projects
        .values()
        .filter(|p| p.record.mounts.iter().any(|m| node_ids.contains(&m.node_id)))
        .map(|p| {
            let mut next = p.clone();
            next.record.mounts.retain(|m| !node_ids.contains(&m.node_id));
            next.record.updated_at_ms = now_ms();
            next
        })
        .collect()
}

impl ControlPlane {
    /// Writes `batch`, then installs `projects` in memory. Called with the lock held.
    fn commit_nodes(&self, state: &mut PlaneState, batch: NodeBatch, projects: Vec<Project>) -> Result<(), OpError> {
        let mut batch = batch;
        batch.put_projects = projects.iter().map(|p| p.record.clone()).collect();
        self.store.write_nodes(&batch).map_err(OpError::storage)?;
        for project in projects {
            state.projects.insert(project.record.id.clone(), project);
        }
        Ok(())
    }

    /// Whether any node's lease has run out (cheap; checked before every control-plane call).
    pub fn has_expired_nodes(&self) -> bool {
        let now = now_ms();
        self.lock().nodes.nodes.values().any(|n| !n.online(now))
    }

    /// Removes nodes whose lease has expired, with their mounts (spec §6.6: before every
    /// control-plane call). Returns the removed ids.
    pub fn reap_expired_nodes(&self) -> Vec<String> {
        let now = now_ms();
        let mut state = self.lock();
        let expired: Vec<String> =
            state.nodes.nodes.values().filter(|n| !n.online(now)).map(|n| n.record.id.clone()).collect();
        if expired.is_empty() {
            return expired;
        }
        let projects = projects_without_mounts_of(&state, &expired);
        let mut batch = state.nodes.batch();
        batch.removed_nodes = expired.clone();
        if let Err(e) = self.commit_nodes(&mut state, batch, projects) {
            tracing::error!(error = ?e, "could not reap expired nodes; will retry on the next call");
            return Vec::new();
        }
        for id in &expired {
            state.nodes.nodes.remove(id);
            tracing::info!(node_id = %id, "node lease expired; node and its mounts removed");
        }
        self.node_counters.reaped.inc_by(expired.len() as u64);
        expired
    }

    pub fn node_invite_create(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let ttl = ttl_arg(&args, "expires_in_ms", DEFAULT_INVITE_TTL_MS)?;
        let now = now_ms();
        let mut state = self.lock();
        let table = &mut state.nodes;
        let mut batch = table.batch();
        if table.invites.len() >= MAX_INVITES {
            let mut spent: Vec<&Invite> =
                table.invites.values().filter(|i| i.record.redeemed || i.record.expires_at_ms <= now).collect();
            spent.sort_by_key(|i| i.record.created_at_ms);
            let excess = table.invites.len() + 1 - MAX_INVITES;
            batch.removed_invites = spent.iter().take(excess).map(|i| i.record.id.clone()).collect();
            if table.invites.len() - batch.removed_invites.len() >= MAX_INVITES {
                return Err(saturated("active invite", MAX_INVITES));
            }
        }
        let token = fresh_token("inv-")?;
        let invites = &table.invites;
        let id = next_id(&mut batch.seqs.invite, "invite-", |id| invites.contains_key(id));
        let record = InviteRecord {
            id: id.clone(),
            token_sha256: hex(&digest(&token)),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl as i64),
            redeemed: false,
        };
        batch.put_invites.push(record.clone());
        let seqs = batch.seqs;
        let removed = batch.removed_invites.clone();
        self.commit_nodes(&mut state, batch, Vec::new())?;
        let table = &mut state.nodes;
        table.seqs = seqs;
        for id in removed {
            table.invites.remove(&id);
        }
        table.invites.insert(id.clone(), Invite { digest: digest(&token), record: record.clone() });
        self.node_counters.invites_created.inc();
        Ok(json!({"invite_id": id, "invite_token": token, "created_at_ms": now, "expires_at_ms": record.expires_at_ms}))
    }

    /// A new node record with a fresh secret; not yet stored.
    fn new_node(
        table: &NodeTable,
        seqs: &mut NodeSeqs,
        name: Option<&str>,
        fs_url: Option<&str>,
        platform: Platform,
        ttl: u64,
    ) -> Result<(NodeRecord, String), OpError> {
        if table.nodes.len() >= MAX_NODES {
            return Err(saturated("node", MAX_NODES));
        }
        let secret = fresh_token("secret-")?;
        let id = next_id(&mut seqs.node, "node-", |id| table.nodes.contains_key(id));
        let now = now_ms();
        let record = NodeRecord {
            name: name.map_or_else(|| id.clone(), str::to_owned),
            id,
            fs_url: fs_url.unwrap_or_default().to_owned(),
            secret_sha256: hex(&digest(&secret)),
            platform,
            labels: BTreeMap::new(),
            services: Vec::new(),
            joined_at_ms: now,
            last_seen_ms: now,
            lease_expires_at_ms: now.saturating_add(ttl as i64),
        };
        Ok((record, secret))
    }

    /// Installs a stored node in memory and answers its credential envelope.
    fn admit(&self, state: &mut PlaneState, record: NodeRecord, secret: String) -> OpResult {
        let lease_token = fresh_token("lease-")?;
        let out = credential(&record, &secret, &lease_token);
        let node = Node::new(record, Some(secret)).map_err(|e| OpError::new(code::CONTROL_PLANE_ERROR, e))?;
        state.nodes.nodes.insert(node.record.id.clone(), node);
        self.node_counters.joins.inc();
        Ok(out)
    }

    pub fn node_join(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let token = secret_arg(&args, "invite_token")?;
        let name = node_name_arg(&args)?;
        let fs_url = fs_url_arg(&args)?;
        let ttl = ttl_arg(&args, "lease_ttl_ms", DEFAULT_LEASE_TTL_MS)?;
        let now = now_ms();
        let mut state = self.lock();
        let presented = digest(token);
        let invite = state
            .nodes
            .invites
            .values()
            .find(|i| digests_equal(&presented, &i.digest))
            .ok_or_else(|| OpError::new(code::INVITE_NOT_FOUND, "InviteNotFound"))?;
        if invite.record.redeemed {
            return Err(OpError::new(code::INVITE_REDEEMED, "InviteRedeemed"));
        }
        if invite.record.expires_at_ms <= now {
            return Err(OpError::new(code::INVITE_EXPIRED, "InviteExpired"));
        }
        let mut redeemed = invite.record.clone();
        redeemed.redeemed = true;
        let mut batch = state.nodes.batch();
        let (record, secret) = Self::new_node(&state.nodes, &mut batch.seqs, name, fs_url, Platform::default(), ttl)?;
        batch.put_invites.push(redeemed.clone());
        batch.put_nodes.push(record.clone());
        let seqs = batch.seqs;
        self.commit_nodes(&mut state, batch, Vec::new())?;
        state.nodes.seqs = seqs;
        if let Some(invite) = state.nodes.invites.get_mut(&redeemed.id) {
            invite.record = redeemed;
        }
        self.node_counters.invites_redeemed.inc();
        self.admit(&mut state, record, secret)
    }

    pub fn node_join_request(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let name = node_name_arg(&args)?;
        let fs_url = fs_url_arg(&args)?;
        let mut platform = Platform::default();
        catalog::merge_platform(&mut platform, args.raw("platform"))?;
        let mut state = self.lock();
        if state.nodes.pending.len() >= MAX_PENDING_JOINS {
            return Err(saturated("pending join", MAX_PENDING_JOINS));
        }
        let mut batch = state.nodes.batch();
        let pending = &state.nodes.pending;
        let id = next_id(&mut batch.seqs.pending_join, "pending-join-", |id| pending.contains_key(id));
        let record = PendingJoinRecord {
            node_name: name.map_or_else(|| id.clone(), str::to_owned),
            id: id.clone(),
            fs_url: fs_url.unwrap_or_default().to_owned(),
            platform,
            requested_at_ms: now_ms(),
        };
        batch.put_pending_joins.push(record.clone());
        let seqs = batch.seqs;
        self.commit_nodes(&mut state, batch, Vec::new())?;
        state.nodes.seqs = seqs;
        let out = pending_json(&record);
        state.nodes.pending.insert(id, record);
        Ok(out)
    }

    pub fn node_join_pending_list(&self) -> OpResult {
        let state = self.lock();
        let mut pending: Vec<&PendingJoinRecord> = state.nodes.pending.values().collect();
        pending.sort_by_key(|p| (p.requested_at_ms, p.id.clone()));
        Ok(json!({"pending": pending.into_iter().map(pending_json).collect::<Vec<_>>()}))
    }

    pub fn node_join_approve(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let request_id = args.required_id("request_id", 128)?;
        let ttl = ttl_arg(&args, "lease_ttl_ms", DEFAULT_LEASE_TTL_MS)?;
        let mut state = self.lock();
        let request = state.nodes.pending.get(request_id).cloned().ok_or_else(pending_not_found)?;
        let mut batch = state.nodes.batch();
        let fs_url = (!request.fs_url.is_empty()).then_some(request.fs_url.as_str());
        let (record, secret) = Self::new_node(
            &state.nodes,
            &mut batch.seqs,
            Some(&request.node_name),
            fs_url,
            request.platform.clone(),
            ttl,
        )?;
        batch.put_nodes.push(record.clone());
        batch.removed_pending_joins.push(request.id.clone());
        let seqs = batch.seqs;
        self.commit_nodes(&mut state, batch, Vec::new())?;
        state.nodes.seqs = seqs;
        state.nodes.pending.remove(request_id);
        self.admit(&mut state, record, secret)
    }

    pub fn node_join_deny(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let request_id = args.required_id("request_id", 128)?;
        let mut state = self.lock();
        if !state.nodes.pending.contains_key(request_id) {
            return Err(pending_not_found());
        }
        let mut batch = state.nodes.batch();
        batch.removed_pending_joins.push(request_id.to_owned());
        self.commit_nodes(&mut state, batch, Vec::new())?;
        state.nodes.pending.remove(request_id);
        Ok(json!({"denied": true, "request_id": request_id}))
    }

    /// The node named by `node_id`, if `node_secret` is its secret; the plaintext is learned.
    fn authenticated<'s>(state: &'s mut PlaneState, args: &Args<'_>) -> Result<&'s mut Node, OpError> {
        let id = args.required_id("node_id", 128)?;
        let secret = secret_arg(args, "node_secret")?;
        let node = state.nodes.nodes.get_mut(id).ok_or_else(node_not_found)?;
        if !node.secret_matches(secret) {
            return Err(node_auth_failed());
        }
        if node.secret.is_none() {
            node.secret = Some(secret.to_owned());
        }
        Ok(node)
    }

    /// Checks a node's secret for its tunnel or a relay client: `Ok(())`, or which failure.
    pub fn check_node_secret(&self, node_id: &str, presented: &str) -> Result<(), NodeAuthError> {
        let mut state = self.lock();
        let node = state.nodes.nodes.get_mut(node_id).ok_or(NodeAuthError::NotFound)?;
        if !node.secret_matches(presented) {
            return Err(NodeAuthError::Failed);
        }
        if node.secret.is_none() {
            node.secret = Some(presented.to_owned());
        }
        Ok(())
    }

    pub fn node_lease_refresh(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let ttl = ttl_arg(&args, "lease_ttl_ms", DEFAULT_LEASE_TTL_MS)?;
        let fs_url = fs_url_arg(&args)?;
        let mut state = self.lock();
        let node = Self::authenticated(&mut state, &args)?;
        let secret = node.secret.clone().unwrap_or_default();
        let mut record = node.record.clone();
        let now = now_ms();
        record.last_seen_ms = now;
        record.lease_expires_at_ms = now.saturating_add(ttl as i64);
        if let Some(url) = fs_url {
            record.fs_url = url.to_owned();
        }
        let mut batch = state.nodes.batch();
        batch.put_nodes.push(record.clone());
        self.commit_nodes(&mut state, batch, Vec::new())?;
        let lease_token = fresh_token("lease-")?;
        let out = credential(&record, &secret, &lease_token);
        if let Some(node) = state.nodes.nodes.get_mut(&record.id) {
            node.record = record;
        }
        self.node_counters.lease_refreshes.inc();
        Ok(out)
    }

    pub fn node_list(&self) -> OpResult {
        let state = self.lock();
        Ok(json!({"nodes": state.nodes.nodes.values().map(Node::list_item).collect::<Vec<_>>()}))
    }

    pub fn node_get(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = args.required_id("node_id", 128)?;
        let state = self.lock();
        let node = state.nodes.nodes.get(id).ok_or_else(node_not_found)?;
        Ok(json!({"node": node.list_item()}))
    }

    pub fn node_delete(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let mut state = self.lock();
        let id = Self::authenticated(&mut state, &args)?.record.id.clone();
        self.remove_nodes(&mut state, std::slice::from_ref(&id))?;
        self.node_counters.deletes.inc();
        Ok(json!({"deleted": true, "node_id": id}))
    }

    fn remove_nodes(&self, state: &mut PlaneState, ids: &[String]) -> Result<(), OpError> {
        let projects = projects_without_mounts_of(state, ids);
        let mut batch = state.nodes.batch();
        batch.removed_nodes = ids.to_vec();
        self.commit_nodes(state, batch, projects)?;
        for id in ids {
            state.nodes.nodes.remove(id);
        }
        Ok(())
    }

    /// `node_service_upsert`: the catalog and its delta; the caller publishes the event.
    pub fn node_service_upsert(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let services = args.raw("services").filter(|v| !v.is_null()).map(catalog::services).transpose()?;
        let labels = args.raw("labels").filter(|v| !v.is_null()).map(catalog::labels).transpose()?;
        let mut state = self.lock();
        let node = Self::authenticated(&mut state, &args)?;
        let mut record = node.record.clone();
        catalog::merge_platform(&mut record.platform, args.raw("platform"))?;
        let now = now_ms();
        let before = std::mem::take(&mut record.services);
        record.services = services.unwrap_or_else(|| before.clone());
        if let Some(labels) = labels {
            record.labels = labels;
        }
        record.last_seen_ms = now;
        let mut batch = state.nodes.batch();
        batch.put_nodes.push(record.clone());
        self.commit_nodes(&mut state, batch, Vec::new())?;
        let delta = catalog::delta(&before, &record.services, now);
        let node = state.nodes.nodes.get_mut(&record.id).ok_or_else(node_not_found)?;
        node.record = record;
        let mut out = node.catalog();
        out["service_delta"] = delta;
        drop(state);
        self.watch.publish(args.required_id("node_id", 128)?, now, &out);
        Ok(out)
    }

    pub fn node_service_get(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = args.required_id("node_id", 128)?;
        let state = self.lock();
        Ok(state.nodes.nodes.get(id).ok_or_else(node_not_found)?.catalog())
    }

    /// Whether a user bound to `project_id` as `agent_id` has `observe` access to it.
    pub fn may_observe(&self, project_id: &str, agent_id: &str, token: Option<&str>) -> bool {
        let state = self.lock();
        state.projects.get(project_id).is_some_and(|p| {
            p.check(spiderweb_policy::Role::User, Some(agent_id), spiderweb_policy::Action::Observe, token).is_ok()
        })
    }

    /// [`Self::may_observe`] and the project mounts `node_id` (watch visibility, spec §6.5).
    pub fn may_observe_node(&self, project_id: &str, agent_id: &str, token: Option<&str>, node_id: &str) -> bool {
        let mounted =
            self.lock().projects.get(project_id).is_some_and(|p| p.record.mounts.iter().any(|m| m.node_id == node_id));
        mounted && self.may_observe(project_id, agent_id, token)
    }

    /// Whether a node with this id exists (mount ops require it).
    pub fn node_exists(&self, node_id: &str) -> bool {
        self.lock().nodes.nodes.contains_key(node_id)
    }

    /// Registers or renews the gateway's own node (spec §8) with `secret`, and makes its
    /// mounts in the `system` project exactly `mounts` (`(mount_path, export_name)`).
    pub fn ensure_local_node(&self, local: &LocalNode, mounts: &[(String, String)]) -> Result<(), OpError> {
        let now = now_ms();
        let mut state = self.lock();
        let existing = state.nodes.nodes.get(&local.id).map(|n| n.record.clone());
        let record = NodeRecord {
            id: local.id.clone(),
            name: local.name.clone(),
            fs_url: local.fs_url.clone(),
            secret_sha256: hex(&digest(&local.secret)),
            platform: Platform {
                os: "linux".into(),
                arch: std::env::consts::ARCH.into(),
                runtime_kind: "embedded".into(),
            },
            labels: existing.as_ref().map(|n| n.labels.clone()).unwrap_or_default(),
            services: existing.as_ref().map(|n| n.services.clone()).unwrap_or_default(),
            joined_at_ms: existing.as_ref().map_or(now, |n| n.joined_at_ms),
            last_seen_ms: now,
            lease_expires_at_ms: now.saturating_add(local.lease_ttl_ms as i64),
        };
        let mut projects = Vec::new();
        if let Some(system) = state.projects.get(SYSTEM_PROJECT) {
            let mut next = system.clone();
            next.record.mounts.retain(|m| m.node_id != local.id);
            next.record.mounts.extend(mounts.iter().map(|(path, export)| MountRecord {
                mount_path: path.clone(),
                node_id: local.id.clone(),
                export_name: export.clone(),
            }));
            if next.record.mounts != system.record.mounts {
                next.record.updated_at_ms = now;
                projects.push(next);
            }
        }
        let mut batch = state.nodes.batch();
        batch.put_nodes.push(record.clone());
        self.commit_nodes(&mut state, batch, projects)?;
        let node =
            Node::new(record, Some(local.secret.clone())).map_err(|e| OpError::new(code::CONTROL_PLANE_ERROR, e))?;
        state.nodes.nodes.insert(local.id.clone(), node);
        self.node_counters.ensured.inc();
        Ok(())
    }

    /// Removes a node regardless of its secret (the local node when `fs.exports` went away).
    pub fn forget_node(&self, node_id: &str) -> Result<bool, OpError> {
        let mut state = self.lock();
        if !state.nodes.nodes.contains_key(node_id) {
            return Ok(false);
        }
        self.remove_nodes(&mut state, &[node_id.to_owned()])?;
        Ok(true)
    }

    /// The `invites` and `nodes` objects of `control.metrics`.
    pub fn node_metrics_json(&self) -> (Value, Value) {
        let now = now_ms();
        let state = self.lock();
        let c = &self.node_counters;
        (
            json!({"active": state.nodes.active_invites(now), "created_total": c.invites_created.get(),
                   "redeemed_total": c.invites_redeemed.get()}),
            json!({"online": state.nodes.online_count(now), "total": state.nodes.nodes.len(),
                   "joins_total": c.joins.get(), "lease_refresh_total": c.lease_refreshes.get(),
                   "ensured_total": c.ensured.get(), "deletes_total": c.deletes.get(),
                   "reaped_total": c.reaped.get()}),
        )
    }
}

/// The gateway's embedded node (spec §8).
#[derive(Clone, Debug)]
pub struct LocalNode {
    pub id: String,
    pub name: String,
    pub fs_url: String,
    pub secret: String,
    pub lease_ttl_ms: u64,
}

/// Why a node secret was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeAuthError {
    #[error("NodeNotFound")]
    NotFound,
    #[error("NodeAuthFailed")]
    Failed,
}

/// Loads the node table; used by [`ControlPlane::open`].
pub(super) fn load(store: &dyn crate::store::Store) -> Result<NodeTable, StoreError> {
    NodeTable::from_snapshot(store.load_nodes()?)
}
