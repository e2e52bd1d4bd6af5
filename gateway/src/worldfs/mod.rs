//! The world filesystem on `/` (`acheron.t_*`, spec `acheron-worldfs.md`).
//!
//! A 9P-like protocol: the client names nodes with fids it chooses, walks them through the
//! [`namespace::Namespace`] of its active binding, and reads or writes files. This module
//! holds the per-connection part (negotiation, fids, the namespace snapshot, event waits) and
//! answers each request; it never touches a workspace (tool I/O goes to workers).
//!
//! Nothing here blocks the connection. A read that has to wait (`events/next.json` at offset
//! 0) is answered with [`Answer::Later`]: a future the connection runs beside later requests,
//! whose [`Completion`] comes back through [`complete`] to update the cached file content
//! before the reply is queued (spec README quirk 12).
//!
//! Bounds: at most `server.max_fids_per_connection` fids; reads return at most
//! [`MAX_READ`] bytes whatever `count` asks for; at most [`MAX_PENDING_READS`] waiting reads
//! per connection.

pub mod namespace;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use spiderweb_proto::Envelope;
use spiderweb_proto::codes::acheron as code;
use spiderweb_proto::reply;
use tokio_util::sync::CancellationToken;

use crate::connection::Outbox;
use crate::control::ConnSession;
use crate::events::ScopeKey;
use crate::events::wait::{self, SharedWait, WaitState};
use crate::runtime::{AgentJobs, Origin, SubmitError, tools};
use crate::server::Shared;
use crate::store::ConversationKey;
use namespace::{Binding, Generated, JobFile, Kind, Namespace, ROOT, Writable};

pub const VERSION: &str = "acheron-1";
const DEFAULT_MSIZE: u32 = 1024 * 1024;
const IOUNIT: u32 = 65536;
/// Upper bound on one read's data, whatever `count` asks for.
pub const MAX_READ: u32 = 1024 * 1024;
/// Chat replies are stored; this bounds what a client can make us keep.
pub const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Reads that may wait at once on one connection.
pub const MAX_PENDING_READS: usize = 64;

pub struct FsSession {
    namespace: Option<(String, Namespace)>,
    /// Bumped at every namespace rebuild, so a late completion never writes into a namespace
    /// whose node ids mean something else.
    generation: u64,
    fids: HashMap<u32, u32>,
    max_fids: usize,
    /// Event-wait configurations by session key; they outlive namespace rebuilds.
    waits: HashMap<String, SharedWait>,
    pending_reads: usize,
    /// Cancelled when the connection ends: the jobs it started stop (their provider
    /// requests are aborted, their tools killed).
    connection: CancellationToken,
    /// The server's shutdown, as a token of this connection's own: waiting reads check it
    /// at every wake-up, and a token shared by every connection would make them all take
    /// one lock.
    shutdown: CancellationToken,
}

impl Drop for FsSession {
    fn drop(&mut self) {
        self.connection.cancel();
    }
}

/// A reply ready now, or a read that completes later without holding back the connection.
pub enum Answer {
    Now(Value),
    Later(Pending),
}

pub type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// The outcome of a waiting read, handed back to [`complete`].
pub struct Completion {
    tag: Option<u32>,
    session_key: String,
    generation: u64,
    node: u32,
    offset: u64,
    count: u64,
    content: Vec<u8>,
}

type Fail = (&'static str, String);
type FsResult<T = Value> = Result<T, Fail>;

fn fail(code: &'static str, message: impl Into<String>) -> (&'static str, String) {
    (code, message.into())
}

impl FsSession {
    /// `shutdown` should be a child token of the server's, made for this connection.
    pub fn new(max_fids: usize, shutdown: CancellationToken) -> FsSession {
        FsSession {
            namespace: None,
            generation: 0,
            fids: HashMap::new(),
            max_fids,
            waits: HashMap::new(),
            pending_reads: 0,
            connection: CancellationToken::new(),
            shutdown,
        }
    }

    /// Whether reads are waiting; a connection with waiting reads is not idle.
    pub fn has_pending_reads(&self) -> bool {
        self.pending_reads > 0
    }

    fn bind_fid(&mut self, fid: u32, node: u32) -> Result<(), Fail> {
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
        "t_clunk" => ("acheron.r_clunk", clunk(fs, env).map(Answer::Now)),
        "t_flush" => ("acheron.r_flush", Ok(Answer::Now(json!({})))),
        _ => ("acheron.error", Err(fail(code::UNSUPPORTED, "unsupported acheron operation"))),
    };
    match result {
        Ok(Answer::Now(payload)) => out.push(reply_kind, reply::acheron_ok(reply_kind, tag, &payload)),
        Ok(Answer::Later(pending)) => {
            fs.pending_reads += 1;
            out.defer(pending);
        }
        Err((code, message)) => out.acheron_error(tag, code, &message),
    }
}

/// Queues the reply of a read that waited, after caching its content in the namespace (if
/// the namespace is still the one the read was made in).
pub fn complete(fs: &mut FsSession, done: Completion, out: &mut Outbox) {
    fs.pending_reads = fs.pending_reads.saturating_sub(1);
    let reply = slice(&done.content, done.offset, done.count);
    if let Some((key, namespace)) = fs.namespace.as_mut()
        && *key == done.session_key
        && fs.generation == done.generation
    {
        namespace.set_content(done.node, done.content);
    }
    out.push("acheron.r_read", reply::acheron_ok("acheron.r_read", done.tag, &reply));
}

/// Selects the binding (`session_key` or the active one), rebuilding the namespace — and
/// dropping every fid — when it changed (spec §1), then runs `op`.
fn with_namespace<T: Into<Answer>>(
    shared: &Shared,
    conn: &mut ConnSession,
    fs: &mut FsSession,
    env: &Envelope,
    op: fn(&Shared, &mut FsSession, &Envelope) -> FsResult<T>,
) -> FsResult<Answer> {
    let key = env.session_key.as_deref().unwrap_or_else(|| conn.active_key());
    let Some(b) = conn.binding_for(key) else {
        return Err(fail(code::SESSION_NOT_FOUND, "unknown session_key"));
    };
    // Compared in place: this runs for every request (every chunk a client follows).
    let current = fs.namespace.as_ref().is_some_and(|(k, ns)| {
        let bound = &ns.binding;
        k == key
            && bound.session_key == key
            && bound.role == conn.role
            && bound.agent_id == b.agent_id
            && bound.project_id == b.project_id
    });
    if !current {
        let key = key.to_owned();
        let wanted = Binding {
            role: conn.role,
            agent_id: b.agent_id.clone(),
            project_id: b.project_id.clone(),
            session_key: key.clone(),
        };
        fs.fids.clear();
        fs.generation += 1;
        fs.waits.retain(|k, _| conn.binding_for(k).is_some());
        let mut namespace = Namespace::build(wanted, &shared.plane);
        let next = if fs.waits.contains_key(&key) { wait::configured_idle() } else { wait::not_configured() };
        namespace.set_content(namespace.events_next, next.to_string().into_bytes());
        fs.namespace = Some((key, namespace));
    }
    conn.touch();
    op(shared, fs, env).map(Into::into)
}

impl From<Value> for Answer {
    fn from(value: Value) -> Answer {
        Answer::Now(value)
    }
}

fn required_fid(env: &Envelope) -> Result<u32, Fail> {
    env.acheron.fid.ok_or_else(|| fail(code::INVALID, "fid is required"))
}

fn node_of(fs: &FsSession, fid: u32) -> Result<u32, Fail> {
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

fn walk(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
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
            name => match namespace.child(at, name) {
                Some(child) => child,
                // Job directories appear when a walk names them (or the directory is listed).
                None if at == namespace.jobs_dir() => namespace
                    .show_job(&shared.runtime, name)
                    .ok_or_else(|| fail(code::ENOENT, "walk segment not found"))?,
                None => return Err(fail(code::ENOENT, "walk segment not found")),
            },
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

fn read(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult<Answer> {
    let node = node_of(fs, required_fid(env)?)?;
    let offset = env.acheron.offset.unwrap_or(0);
    let count = env.acheron.count.unwrap_or(IOUNIT).min(MAX_READ) as u64;
    if offset == 0
        && node == ns(fs).events_next
        && let Some(pending) = wait_for_event(shared, fs, env.acheron.tag, node, count)?
    {
        return Ok(Answer::Later(pending));
    }
    match ns(fs).generated(node) {
        Some(Generated::Job(JobFile::Events)) => {
            return read_job_events(shared, fs, env.acheron.tag, node, offset, count);
        }
        Some(Generated::Job(JobFile::Result)) if offset == 0 => {
            if let Some(pending) = wait_for_job(shared, fs, env.acheron.tag, node, count)? {
                return Ok(Answer::Later(pending));
            }
        }
        _ => {}
    }
    let namespace = ns(fs);
    if offset == 0 {
        namespace.refresh(node, &shared.plane, &shared.runtime);
    }
    if offset == 0 && node == namespace.jobs_dir() {
        namespace.sync_jobs(&shared.runtime);
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
    Ok(Answer::Now(slice(bytes, offset, count)))
}

/// A read reply for `count` bytes of `bytes` from `offset` (spec §3: `n`, `eof`).
fn slice(bytes: &[u8], offset: u64, count: u64) -> Value {
    let len = bytes.len() as u64;
    let start = offset.min(len);
    let end = start.saturating_add(count).min(len);
    let chunk = &bytes[start as usize..end as usize];
    json!({
        "data_b64": base64::engine::general_purpose::STANDARD.encode(chunk),
        "n": chunk.len(),
        "eof": end >= len,
    })
}

/// Reserves a slot for a read that will wait, or refuses when the connection has too many.
fn reserve_pending(fs: &FsSession) -> Result<(), Fail> {
    if fs.pending_reads >= MAX_PENDING_READS {
        return Err(fail(
            code::QUEUE_SATURATED,
            format!("{MAX_PENDING_READS} reads are already waiting on this connection; wait for one to finish"),
        ));
    }
    Ok(())
}

/// How long a blocking job read may wait: the session's event-wait timeout (spec §9.1),
/// else the default.
fn job_wait_timeout(fs: &FsSession) -> Duration {
    let key = fs.namespace.as_ref().map(|(k, _)| k.as_str()).unwrap_or_default();
    let ms = fs
        .waits
        .get(key)
        .map_or(wait::DEFAULT_TIMEOUT_MS, |w| w.lock().unwrap_or_else(|e| e.into_inner()).timeout_ms());
    Duration::from_millis(ms)
}

/// `result.txt` at offset 0: waits until the job ends (or the wait timeout), then answers
/// its current content. `None`: the job already ended (or is unknown), answer now.
fn wait_for_job(
    shared: &Shared,
    fs: &mut FsSession,
    tag: Option<u32>,
    node: u32,
    count: u64,
) -> FsResult<Option<Pending>> {
    let Some(job) = ns(fs).job_of(node).and_then(|id| shared.runtime.job(id)) else { return Ok(None) };
    if job.state().is_terminal() {
        return Ok(None);
    }
    reserve_pending(fs)?;
    let (session_key, generation) = (fs.namespace.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(), fs.generation);
    let limit = job_wait_timeout(fs);
    let shutdown = fs.shutdown.clone();
    Ok(Some(Box::pin(async move {
        let mut changes = job.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while !job.state().is_terminal() {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = shutdown.cancelled() => {
                        tokio::time::sleep(wait::DRAIN_GRACE.min(limit)).await;
                        break;
                    }
                }
            }
        })
        .await;
        Completion { tag, session_key, generation, node, offset: 0, count, content: job.result_text().into_bytes() }
    })))
}

/// `events.ndjson` (our extension): bytes past `offset` now if there are any (whole lines
/// only), else wait for more, for the job's end (then an empty read: end of file) or for
/// the wait timeout (also an empty read; `status.json` tells the two apart).
fn read_job_events(
    shared: &Shared,
    fs: &mut FsSession,
    tag: Option<u32>,
    node: u32,
    offset: u64,
    count: u64,
) -> FsResult<Answer> {
    let Some(job) = ns(fs).job_of(node).and_then(|id| shared.runtime.job(id)) else {
        return Ok(Answer::Now(slice(&[], 0, count)));
    };
    let ready = move |job: &crate::runtime::job::Job| job.events_len() as u64 > offset || job.state().is_terminal();
    if ready(&job) {
        return Ok(Answer::Now(events_reply(&job, offset, count)));
    }
    reserve_pending(fs)?;
    let (session_key, generation) = (fs.namespace.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(), fs.generation);
    let limit = job_wait_timeout(fs);
    let shutdown = fs.shutdown.clone();
    Ok(Answer::Later(Box::pin(async move {
        let mut changes = job.subscribe();
        let _ = tokio::time::timeout(limit, async {
            while !ready(&job) {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
            }
        })
        .await;
        // The completion answers its content from offset 0: hand it exactly the window.
        let (content, _) = job.events_window(offset, count);
        Completion { tag, session_key, generation, node, offset: 0, count, content }
    })))
}

/// A read reply of the job's events at `offset` (whole lines; `eof` when it reaches the
/// current end).
fn events_reply(job: &crate::runtime::job::Job, offset: u64, count: u64) -> Value {
    let (window, at_end) = job.events_window(offset, count);
    json!({"data_b64": base64::engine::general_purpose::STANDARD.encode(&window), "n": window.len(), "eof": at_end})
}

/// The events scope of the namespace's binding (agent and project).
fn scope_key(fs: &mut FsSession) -> ScopeKey {
    let binding = &ns(fs).binding;
    ScopeKey { agent_id: binding.agent_id.clone(), project_id: binding.project_id.clone() }
}

/// Starts waiting for the next event of the session's wait configuration, or returns `None`
/// when none is configured (the read then answers `wait_not_configured` at once).
fn wait_for_event(
    shared: &Shared,
    fs: &mut FsSession,
    tag: Option<u32>,
    node: u32,
    count: u64,
) -> FsResult<Option<Pending>> {
    let session_key = fs.namespace.as_ref().map(|(k, _)| k.clone()).unwrap_or_default();
    let Some(wait) = fs.waits.get(&session_key).cloned() else {
        ns(fs).set_content(node, wait::not_configured().to_string().into_bytes());
        return Ok(None);
    };
    reserve_pending(fs)?;
    let scope = shared.events.scope(scope_key(fs));
    let shutdown = fs.shutdown.clone();
    let generation = fs.generation;
    let jobs = Box::new(AgentJobs { runtime: shared.runtime.clone(), agent_id: ns(fs).binding.agent_id.clone() });
    Ok(Some(Box::pin(async move {
        let event = wait::next_event(wait, scope, jobs, shutdown).await;
        Completion { tag, session_key, generation, node, offset: 0, count, content: event.to_string().into_bytes() }
    })))
}

fn write(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
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
        (Writable::ChatInput, _) => match chat_prompt(data) {
            None => Ok(json!({"n": 0})),
            Some(prompt) => submit_chat(shared, fs, env, prompt, data.len()),
        },
        (Writable::JobApproval, _) => answer_approval(shared, fs, node, data),
        (Writable::EventWait, _) => {
            let config = wait::parse_wait(data).map_err(|message| fail(code::INVALID, message))?;
            let n = data.len();
            let session_key = fs.namespace.as_ref().map(|(k, _)| k.clone()).unwrap_or_default();
            let next = match config {
                Some(config) => {
                    let scope = shared.events.scope(scope_key(fs));
                    fs.waits.insert(session_key, WaitState::new(config, &scope));
                    wait::configured_idle()
                }
                None => {
                    fs.waits.remove(&session_key);
                    wait::not_configured()
                }
            };
            let namespace = ns(fs);
            namespace.set_content(namespace.events_next, next.to_string().into_bytes());
            Ok(json!({"n": n}))
        }
        (Writable::EventSignal, _) => {
            let (event_type, parameter, payload) =
                wait::parse_signal(data).map_err(|message| fail(code::INVALID, message))?;
            let seq = shared.events.scope(scope_key(fs)).raise(event_type, parameter, payload, crate::plane::now_ms());
            Ok(json!({"n": data.len(), "signal": {"seq": seq}}))
        }
        (Writable::ServiceControl(service), _) => Err(fail(
            code::UNAVAILABLE,
            format!("the {service} service needs the agent runtime, which this gateway does not run yet"),
        )),
        (Writable::PairingControl, _) => {
            Err(fail(code::UNAVAILABLE, "node pairing is not available on this gateway yet"))
        }
    }
}

/// The prompt of a chat input write: the text trimmed (spec §7.1), `None` when nothing is
/// left (no job is submitted then).
pub fn chat_prompt(data: &[u8]) -> Option<String> {
    let prompt = String::from_utf8_lossy(data).trim().to_owned();
    (!prompt.is_empty()).then_some(prompt)
}

/// A chat write (spec §7.2): creates a job and answers with its paths.
fn submit_chat(shared: &Shared, fs: &mut FsSession, env: &Envelope, prompt: String, n: usize) -> FsResult {
    let binding = ns(fs).binding.clone();
    let correlation_id = env.correlation_id.clone().or_else(|| env.id.clone());
    let origin = Origin {
        conversation: ConversationKey {
            agent_id: binding.agent_id,
            project_id: binding.project_id,
            session_key: binding.session_key,
        },
        user: binding.role.as_str().to_owned(),
        correlation_id: correlation_id.clone(),
        connection: fs.connection.clone(),
    };
    let job = shared.runtime.submit(prompt, origin).map_err(|e| match e {
        SubmitError::QueueSaturated(_) => fail(code::QUEUE_SATURATED, "runtime request queue saturated"),
        SubmitError::PromptTooLarge => fail(code::INVALID, e.to_string()),
        SubmitError::Storage(_) => fail(code::EIO, e.to_string()),
    })?;
    // Only this job: adding every job of the agent here made each connection's namespace
    // grow with all jobs on the gateway (memory quadratic in concurrent chats).
    ns(fs).show_job(&shared.runtime, &job.id);
    let mut reply = json!({"n": n, "job": job.id, "result_path": format!("/agents/self/jobs/{}/result.txt", job.id)});
    if let Some(id) = correlation_id {
        reply["correlation_id"] = json!(id);
    }
    Ok(reply)
}

/// An approval answer: `{"approval_id":"ap-1","decision":"YES"}` to `jobs/<job>/control/approve.json`.
fn answer_approval(shared: &Shared, fs: &mut FsSession, node: u32, data: &[u8]) -> FsResult {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Answer {
        approval_id: String,
        decision: String,
    }
    const SHAPE: &str =
        r#"approve.json payload must be {"approval_id":"ap-N","decision":"YES|NO|NO_CONTINUE|ALWAYS|EXPLAIN"}"#;
    let answer: Answer = serde_json::from_slice(data).map_err(|_| fail(code::INVALID, SHAPE))?;
    let decision = tools::parse_decision(&answer.decision).ok_or_else(|| fail(code::INVALID, SHAPE))?;
    let job = ns(fs)
        .job_of(node)
        .and_then(|id| shared.runtime.job(id))
        .ok_or_else(|| fail(code::ENOENT, "the job no longer exists"))?;
    job.answer(&answer.approval_id, decision).map_err(|e| fail(code::INVALID, e.to_string()))?;
    Ok(
        json!({"n": data.len(), "approval": {"approval_id": answer.approval_id, "decision": answer.decision, "accepted": true}}),
    )
}

fn stat(shared: &Shared, fs: &mut FsSession, env: &Envelope) -> FsResult {
    let node = node_of(fs, required_fid(env)?)?;
    let namespace = ns(fs);
    namespace.refresh(node, &shared.plane, &shared.runtime);
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
