//! The world filesystem on `/` (`acheron.t_*`, spec `acheron-worldfs.md`).
//!
//! A 9P-like protocol: the client names nodes with fids it chooses, walks them through the
//! [`namespace::Namespace`] of its active binding, and reads or writes files. This module
//! holds the per-connection part (negotiation, fids, the namespace snapshot) and answers
//! each request; it never blocks and never touches a workspace (tool I/O goes to workers).
//!
//! Bounds: at most `server.max_fids_per_connection` fids; reads return at most
//! [`MAX_READ`] bytes whatever `count` asks for.

pub mod namespace;

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::json;
use spiderweb_proto::Envelope;
use spiderweb_proto::codes::acheron as code;
use spiderweb_proto::reply;

use crate::connection::Outbox;
use crate::control::ConnSession;
use crate::server::Shared;
use namespace::{Binding, Kind, Namespace, ROOT, Writable};

pub const VERSION: &str = "acheron-1";
const DEFAULT_MSIZE: u32 = 1024 * 1024;
const IOUNIT: u32 = 65536;
/// Upper bound on one read's data, whatever `count` asks for.
pub const MAX_READ: u32 = 1024 * 1024;
/// Chat replies are stored; this bounds what a client can make us keep.
const MAX_REPLY_BYTES: usize = 256 * 1024;

pub struct FsSession {
    namespace: Option<(String, Namespace)>,
    fids: HashMap<u32, u32>,
    max_fids: usize,
}

type FsResult = Result<serde_json::Value, (&'static str, String)>;

fn fail(code: &'static str, message: impl Into<String>) -> (&'static str, String) {
    (code, message.into())
}

impl FsSession {
    pub fn new(max_fids: usize) -> FsSession {
        FsSession { namespace: None, fids: HashMap::new(), max_fids }
    }

    fn bind_fid(&mut self, fid: u32, node: u32) -> Result<(), (&'static str, String)> {
        if !self.fids.contains_key(&fid) && self.fids.len() >= self.max_fids {
            return Err(fail(
                code::FID_LIMIT,
                format!("too many fids on this connection (limit {}); clunk fids you no longer use", self.max_fids),
            ));
        }
        self.fids.insert(fid, node);
        Ok(())
    }
}

pub fn handle(shared: &Shared, conn: &mut ConnSession, fs: &mut FsSession, env: &Envelope, out: &mut Outbox) {
    let tag = env.acheron.tag;
    if let Some(gate) = conn.gate {
        return out.acheron_error(tag, gate.code, gate.message);
    }
    if env.op == "t_version" {
        if env.acheron.version.as_deref() != Some(VERSION) {
            out.acheron_error(tag, code::PROTOCOL_MISMATCH, "unsupported fsrpc runtime version");
            return out.close_policy("unsupported fsrpc runtime version");
        }
        conn.acheron_versioned = true;
        let payload = json!({"msize": env.acheron.msize.unwrap_or(DEFAULT_MSIZE), "version": VERSION});
        return out.push("acheron.r_version", reply::acheron_ok("acheron.r_version", tag, &payload));
    }
    if !conn.acheron_versioned {
        out.acheron_error(tag, code::PROTOCOL_MISMATCH, "acheron.t_version must be negotiated first");
        return out.close_policy("acheron.t_version must be negotiated first");
    }
    let (reply_kind, result) = match env.op.as_str() {
        "t_attach" => ("acheron.r_attach", with_namespace(shared, conn, fs, env, attach)),
        "t_walk" => ("acheron.r_walk", with_namespace(shared, conn, fs, env, walk)),
        "t_open" => ("acheron.r_open", with_namespace(shared, conn, fs, env, open)),
        "t_read" => ("acheron.r_read", with_namespace(shared, conn, fs, env, read)),
        "t_write" => ("acheron.r_write", with_namespace(shared, conn, fs, env, write)),
        "t_stat" => ("acheron.r_stat", with_namespace(shared, conn, fs, env, stat)),
        "t_clunk" => ("acheron.r_clunk", clunk(fs, env)),
        "t_flush" => ("acheron.r_flush", Ok(json!({}))),
        _ => ("acheron.error", Err(fail(code::UNSUPPORTED, "unsupported acheron operation"))),
    };
    match result {
        Ok(payload) => out.push(reply_kind, reply::acheron_ok(reply_kind, tag, &payload)),
        Err((code, message)) => out.acheron_error(tag, code, &message),
    }
}

type Op = fn(&Shared, &mut FsSession, &Envelope) -> FsResult;

/// Selects the binding (`session_key` or the active one), rebuilding the namespace — and
/// dropping every fid — when it changed (spec §1), then runs `op`.
fn with_namespace(shared: &Shared, conn: &mut ConnSession, fs: &mut FsSession, env: &Envelope, op: Op) -> FsResult {
    let key = env.session_key.clone().unwrap_or_else(|| conn.active_key().to_owned());
    let Some(b) = conn.binding_for(&key) else {
        return Err(fail(code::SESSION_NOT_FOUND, "unknown session_key"));
    };
    let wanted = Binding { role: conn.role, agent_id: b.agent_id.clone(), project_id: b.project_id.clone() };
    let current = fs.namespace.as_ref().is_some_and(|(k, ns)| *k == key && ns.binding == wanted);
    if !current {
        fs.fids.clear();
        fs.namespace = Some((key, Namespace::build(wanted, &shared.plane)));
    }
    conn.touch();
    op(shared, fs, env)
}

fn required_fid(env: &Envelope) -> Result<u32, (&'static str, String)> {
    env.acheron.fid.ok_or_else(|| fail(code::INVALID, "fid is required"))
}

fn node_of(fs: &FsSession, fid: u32) -> Result<u32, (&'static str, String)> {
    fs.fids.get(&fid).copied().ok_or_else(|| fail(code::ENOENT, "unknown fid"))
}

fn ns(fs: &mut FsSession) -> &mut Namespace {
    // with_namespace always builds it before an op runs.
    &mut fs.namespace.as_mut().expect("namespace built before ops").1
}

fn qid(ns: &Namespace, id: u32) -> serde_json::Value {
    let kind = match ns.node(id).map(|n| &n.kind) {
        Some(Kind::Dir(_)) => "dir",
        _ => "file",
    };
    json!({"path": id, "type": kind})
}

fn attach(_: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let fid = required_fid(env)?;
    fs.bind_fid(fid, ROOT)?;
    Ok(json!({"qid": qid(ns(fs), ROOT)}))
}

fn walk(_: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let fid = required_fid(env)?;
    let newfid = env.acheron.newfid.ok_or_else(|| fail(code::INVALID, "newfid is required"))?;
    let start = node_of(fs, fid)?;
    let path = env.acheron.path.clone().unwrap_or_default();
    let namespace = ns(fs);
    let mut at = start;
    for segment in &path {
        at = match segment.as_str() {
            "." | "" => at,
            ".." => namespace.node(at).map_or(ROOT, |n| if at == ROOT { ROOT } else { n.parent }),
            name => namespace.child(at, name).ok_or_else(|| fail(code::ENOENT, "walk segment not found"))?,
        };
    }
    let q = qid(namespace, at);
    fs.bind_fid(newfid, at)?;
    Ok(json!({"qid": q, "walked": path.len()}))
}

fn open(_: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let node = node_of(fs, required_fid(env)?)?;
    let wants_write = env.acheron.mode.as_deref().is_some_and(|m| m.contains('w'));
    let namespace = ns(fs);
    match namespace.node(node).map(|n| &n.kind) {
        Some(Kind::Dir(_)) if wants_write => Err(fail(code::EISDIR, "directories are read-only opens")),
        Some(Kind::File { writable: None, .. }) if wants_write => Err(fail(code::EPERM, "file is read-only")),
        Some(_) => Ok(json!({"qid": qid(namespace, node), "iounit": IOUNIT})),
        None => Err(fail(code::EIO, "missing node")),
    }
}

fn read(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let node = node_of(fs, required_fid(env)?)?;
    let offset = env.acheron.offset.unwrap_or(0);
    let count = env.acheron.count.unwrap_or(IOUNIT).min(MAX_READ) as u64;
    let namespace = ns(fs);
    if offset == 0 {
        namespace.refresh(node, &shared.plane);
    }
    let listing;
    let bytes: &[u8] = match namespace.node(node).map(|n| &n.kind) {
        Some(Kind::Dir(_)) => {
            listing = namespace.listing(node);
            &listing
        }
        Some(Kind::File { content, .. }) => content,
        None => return Err(fail(code::EIO, "missing node")),
    };
    let len = bytes.len() as u64;
    let start = offset.min(len);
    let end = start.saturating_add(count).min(len);
    let chunk = &bytes[start as usize..end as usize];
    Ok(json!({
        "data_b64": base64::engine::general_purpose::STANDARD.encode(chunk),
        "n": chunk.len(),
        "eof": end >= len,
    }))
}

fn write(_: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let node = node_of(fs, required_fid(env)?)?;
    let data = env.acheron.data.as_deref().ok_or_else(|| fail(code::INVALID, "write requires data"))?;
    let namespace = ns(fs);
    let target = match namespace.node_mut(node).map(|n| &mut n.kind) {
        Some(Kind::Dir(_)) => return Err(fail(code::EISDIR, "write requires file fid")),
        Some(Kind::File { writable: None, .. }) => return Err(fail(code::EPERM, "file is read-only")),
        Some(Kind::File { writable: Some(w), content, .. }) => (*w, content),
        None => return Err(fail(code::EIO, "missing node")),
    };
    match target {
        (Writable::ChatReply, content) => {
            let text = String::from_utf8_lossy(data).trim().to_owned();
            if text.len() > MAX_REPLY_BYTES {
                return Err(fail(code::INVALID, format!("chat reply is larger than {MAX_REPLY_BYTES} bytes")));
            }
            *content = text.clone().into_bytes();
            Ok(json!({"n": text.len(), "chat_reply": {"delivered": true, "content": text}}))
        }
        (Writable::ChatInput, _) if String::from_utf8_lossy(data).trim().is_empty() => Ok(json!({"n": 0})),
        (Writable::ChatInput, _) => Err(fail(
            code::RUNTIME_UNAVAILABLE,
            "chat jobs need the agent runtime, which this gateway does not run yet",
        )),
        (Writable::EventWait | Writable::EventSignal, _) => Err(fail(
            code::UNAVAILABLE,
            "event waits and signals need the agent runtime, which this gateway does not run yet",
        )),
        (Writable::ServiceControl(service), _) => Err(fail(
            code::UNAVAILABLE,
            format!("the {service} service needs the agent runtime, which this gateway does not run yet"),
        )),
        (Writable::PairingControl, _) => {
            Err(fail(code::UNAVAILABLE, "node pairing is not available on this gateway yet"))
        }
    }
}

fn stat(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let node = node_of(fs, required_fid(env)?)?;
    let namespace = ns(fs);
    namespace.refresh(node, &shared.plane);
    let n = namespace.node(node).ok_or_else(|| fail(code::EIO, "missing node"))?;
    let (kind, size, mode, writable) = match &n.kind {
        Kind::Dir(_) => ("dir", 0, 0o040755, false),
        Kind::File { content, writable: Some(_), .. } => ("file", content.len(), 0o100644, true),
        Kind::File { content, .. } => ("file", content.len(), 0o100444, false),
    };
    let name = if node == ROOT { "/" } else { n.name.as_str() };
    Ok(json!({"id": node, "name": name, "kind": kind, "size": size, "mode": mode, "writable": writable}))
}

fn clunk(fs: &mut FsSession, env: &Envelope) -> FsResult {
    let fid = required_fid(env)?;
    fs.fids.remove(&fid);
    Ok(json!({}))
}
