//! The mount client's router (spec §9.3): paths → endpoint groups → node operations.
//!
//! Endpoints sharing a mount path form a failover group. An operation on a path goes to the
//! best-scoring endpoint of the group whose mount path is the longest prefix; if that endpoint
//! is unreachable (a transport error, not an errno from the node) an idempotent operation is
//! retried on the next candidate and `failover_events_total` counts the rescue. A
//! non-idempotent operation (create, mkdir, rename, …) moves on only when the failure happened
//! before it was sent (connecting). Health checks run in the background.
//!
//! Node ids are cached per endpoint by path; an ENOENT on a cached id (the node restarted,
//! the file was replaced on the host) drops the cache for that path and the lookup is redone
//! from the export root once. Open handles are cached per endpoint and path; after a failover
//! the file is simply reopened on the new endpoint at the same offset. Names known to be
//! missing are answered from the negative cache (`negative`).
//!
//! The endpoint list may change while the router runs ([`Router::set_endpoints`], driven by
//! the workspace sync in `workspace`): each endpoint has an id that is never reused, and every
//! cache is keyed by it, so nothing learned about a removed endpoint can leak into a new one.

pub mod endpoint;
pub mod negative;
pub mod score;
pub mod workspace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use spiderweb_proto::fs::{Attr, DirEntry, Errno, Event, ExportEntry, FsError, ReaddirReply, Statfs};
use tokio::sync::broadcast;

use crate::client::{CallError, FsClient};
pub use endpoint::EndpointSpec;
use negative::NegativeCache;

/// Health checks at most this often per endpoint.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(2000);
/// An unhealthy endpoint is retried after this long.
pub const RETRY_UNHEALTHY: Duration = Duration::from_millis(1500);
/// How long attributes fetched from a node are reused without asking again (the same TTL
/// the FUSE layer gives the kernel); invalidation events end it earlier.
pub const ATTR_TTL: Duration = Duration::from_secs(10);
/// Directory listings cached, over all mounts.
const MAX_CACHED_LISTINGS: usize = 4096;
/// Paths whose node id / attributes are cached, over all endpoints.
const MAX_CACHED_PATHS: usize = 262_144;
/// Page size of directory listings.
const LIST_PAGE: u32 = 4096;

/// A change reported by a node, translated to a path of the mounted namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathEvent {
    /// Absolute path in the router's namespace (`/src/a.txt`).
    pub path: String,
    /// The directory's listing changed (`e_fs_inval_dir`), rather than the node itself.
    pub dir_listing: bool,
}

#[derive(Debug, Default)]
struct EndpointState {
    client: Option<Arc<FsClient>>,
    /// The endpoint's event connection (spec §6: hello with `subscribe_invalidations`, then
    /// only reads), kept and dropped with `client`. A gateway's `/v2/fs` sends broadcasts only
    /// to such a connection, never to one that also carries requests.
    events: Option<FsClient>,
    export: Option<ExportEntry>,
    healthy: bool,
    consecutive_failures: u32,
    last_check: Option<Instant>,
    last_success: Option<Instant>,
    last_failure: Option<Instant>,
    last_check_ms: u64,
    last_success_ms: u64,
    last_failure_ms: u64,
}

#[derive(Debug)]
struct Endpoint {
    /// Unique for the router's life (never reused), so caches keyed by it cannot mix up an
    /// endpoint removed by a workspace sync with one added later.
    id: usize,
    spec: EndpointSpec,
    /// The token of this endpoint's hello (`fs_auth_token` when hydrated from a workspace).
    auth_token: Option<String>,
    state: Mutex<EndpointState>,
    /// Held while connecting, so concurrent callers (health checks, FUSE threads) share one
    /// new connection instead of racing to replace each other's.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy, Debug)]
struct CachedHandle {
    h: u64,
    writable: bool,
}

impl Endpoint {
    fn state(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An endpoint and the token its hello carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub spec: EndpointSpec,
    pub auth_token: Option<String>,
}

/// Where a path leads.
enum Target {
    /// Inside a failover group (endpoints sharing one mount path), at `rel` below its root.
    Export { group: Vec<Arc<Endpoint>>, rel: Vec<String> },
    /// A directory that only exists because mount paths pass through it.
    Virtual { children: Vec<String> },
}

/// Why a path did not resolve.
enum Miss {
    /// The negative cache knows a component is missing: final, no retry from the root.
    Known,
    Call(CallError),
}

impl From<CallError> for Miss {
    fn from(e: CallError) -> Self {
        Miss::Call(e)
    }
}

/// One try of an operation on one endpoint.
struct Attempt {
    ep: usize,
    client: Arc<FsClient>,
    root: u64,
    rel: Vec<String>,
}

pub struct Router {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    next_endpoint_id: AtomicUsize,
    failovers: AtomicU64,
    /// Lookups known to fail, per directory (§9.3).
    negative: NegativeCache,
    /// (endpoint, relative path) → node id, and the reverse for events.
    ids: Mutex<HashMap<(usize, String), u64>>,
    paths: Mutex<HashMap<(usize, u64), String>>,
    handles: Mutex<HashMap<(usize, String), CachedHandle>>,
    /// (endpoint, relative path) → attributes and when they were fetched; dropped by the
    /// nodes' invalidation events and by our own mutations, and after [`ATTR_TTL`].
    attrs: Mutex<HashMap<(usize, String), (Attr, Instant)>>,
    /// Full directory listings by namespace path, dropped like `attrs` (a listing carries its
    /// entries' attributes, which `readdirplus` hands to the kernel).
    listings: Mutex<HashMap<String, (Vec<DirEntry>, Instant)>>,
    events: broadcast::Sender<PathEvent>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `/a/b` for `a//b/`, `/a/./b` and the like: the key of per-path caches.
fn normalise(path: &str) -> String {
    format!("/{}", components(path).join("/"))
}

fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect()
}

fn fs_err(errno: Errno, message: &str) -> CallError {
    CallError::Fs(FsError::new(errno, message))
}

impl Router {
    /// A router over `specs`, every hello carrying `auth_token`.
    pub fn new(specs: Vec<EndpointSpec>, auth_token: Option<String>) -> Arc<Router> {
        let router = Self::empty();
        router.set_endpoints(
            specs.into_iter().map(|spec| EndpointConfig { spec, auth_token: auth_token.clone() }).collect(),
        );
        router
    }

    /// A router without endpoints (see [`Router::set_endpoints`]).
    pub fn empty() -> Arc<Router> {
        Arc::new(Router {
            endpoints: RwLock::default(),
            next_endpoint_id: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
            negative: NegativeCache::default(),
            ids: Mutex::default(),
            paths: Mutex::default(),
            handles: Mutex::default(),
            attrs: Mutex::default(),
            listings: Mutex::default(),
            events: broadcast::channel(4096).0,
        })
    }

    pub fn failover_events_total(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Lookups answered from the negative cache.
    pub fn negative_lookup_hits_total(&self) -> u64 {
        self.negative.hits()
    }

    /// Makes `configs` the router's endpoints: endpoints already present (same spec and token)
    /// stay as they are, with their connections; the others are added or removed, and what was
    /// cached about a removed one is dropped. Failover groups follow the mount paths. Returns
    /// `(added, removed)`.
    pub fn set_endpoints(&self, configs: Vec<EndpointConfig>) -> (usize, usize) {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let same = |e: &Endpoint, c: &EndpointConfig| e.spec == c.spec && e.auth_token == c.auth_token;
        let removed: Vec<usize> =
            endpoints.iter().filter(|e| !configs.iter().any(|c| same(e, c))).map(|e| e.id).collect();
        let mut changed_mounts: Vec<String> =
            endpoints.iter().filter(|e| removed.contains(&e.id)).map(|e| e.spec.mount.clone()).collect();
        endpoints.retain(|e| !removed.contains(&e.id));
        let mut added = 0;
        for config in configs {
            if endpoints.iter().any(|e| same(e, &config)) {
                continue;
            }
            added += 1;
            changed_mounts.push(config.spec.mount.clone());
            endpoints.push(Arc::new(Endpoint {
                id: self.next_endpoint_id.fetch_add(1, Ordering::Relaxed),
                spec: config.spec,
                auth_token: config.auth_token,
                state: Mutex::new(EndpointState::default()),
                connecting: tokio::sync::Mutex::new(()),
            }));
        }
        drop(endpoints);
        for id in &removed {
            self.forget_endpoint(*id);
        }
        if added > 0 || !removed.is_empty() {
            self.listings.lock().unwrap_or_else(|p| p.into_inner()).clear();
            // The namespace changed shape: a mount's own listing and its parents' (down to `/`).
            changed_mounts.push("/".into());
            for mount in changed_mounts {
                let mut path = mount.as_str();
                loop {
                    let _ = self.events.send(PathEvent { path: path.to_owned(), dir_listing: true });
                    match path.rsplit_once('/') {
                        Some(("", _)) if path != "/" => path = "/",
                        Some((parent, _)) if !parent.is_empty() => path = parent,
                        _ => break,
                    }
                }
            }
        }
        (added, removed.len())
    }

    fn snapshot(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes reported by the nodes, as paths.
    pub fn subscribe(&self) -> broadcast::Receiver<PathEvent> {
        self.events.subscribe()
    }

    // ---- routing ---------------------------------------------------------------------------

    fn target(&self, path: &str) -> Result<Target, CallError> {
        let comps = components(path);
        if comps.iter().any(|c| c == "..") {
            return Err(fs_err(Errno::Inval, "invalid child name"));
        }
        let endpoints = self.snapshot();
        let mut best: Option<(usize, &str)> = None;
        for ep in &endpoints {
            let mount = components(&ep.spec.mount);
            let is_prefix = comps.len() >= mount.len() && comps[..mount.len()] == mount[..];
            if is_prefix && best.is_none_or(|(len, _)| mount.len() > len) {
                best = Some((mount.len(), &ep.spec.mount));
            }
        }
        if let Some((len, mount)) = best {
            let group = endpoints.iter().filter(|e| e.spec.mount == mount).cloned().collect();
            return Ok(Target::Export { group, rel: comps[len..].to_vec() });
        }
        let mut children: Vec<String> = endpoints
            .iter()
            .map(|ep| components(&ep.spec.mount))
            .filter(|mount| mount.len() > comps.len() && mount[..comps.len()] == comps[..])
            .map(|mount| mount[comps.len()].clone())
            .collect();
        if children.is_empty() {
            return Err(fs_err(Errno::NoEnt, "file not found"));
        }
        children.sort();
        children.dedup();
        Ok(Target::Virtual { children })
    }

    fn ranked(&self, group: Vec<Arc<Endpoint>>, needs_write: bool) -> Vec<Arc<Endpoint>> {
        let now = Instant::now();
        let mut scored: Vec<(i64, Arc<Endpoint>)> = group
            .into_iter()
            .map(|ep| {
                let st = ep.state();
                let health = score::Health {
                    // Never checked yet counts as healthy: the first try decides.
                    healthy: st.healthy || st.last_check.is_none(),
                    export_ro: st.export.as_ref().is_some_and(|e| e.ro),
                    native_watch: st.export.as_ref().is_some_and(|e| e.caps.native_watch),
                    consecutive_failures: st.consecutive_failures,
                    since_success: st.last_success.map(|t| now - t),
                    since_failure: st.last_failure.map(|t| now - t),
                };
                drop(st);
                (score::score(&health, needs_write), ep)
            })
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
        scored.into_iter().map(|(_, ep)| ep).collect()
    }

    fn mark(&self, ep: &Endpoint, ok: bool) {
        let mut st = ep.state();
        let now = Instant::now();
        st.last_check = Some(now);
        st.last_check_ms = now_ms();
        if ok {
            st.healthy = true;
            st.consecutive_failures = 0;
            st.last_success = Some(now);
            st.last_success_ms = now_ms();
        } else {
            st.healthy = false;
            st.consecutive_failures = st.consecutive_failures.saturating_add(1);
            st.last_failure = Some(now);
            st.last_failure_ms = now_ms();
            st.client = None;
            st.events = None;
        }
    }

    /// The endpoint's connection, connecting (hello + exports) when there is none.
    fn connected(&self, ep: &Endpoint) -> Option<(Arc<FsClient>, u64)> {
        let st = ep.state();
        match (&st.client, &st.export) {
            (Some(client), Some(export)) if !client.is_closed() => Some((Arc::clone(client), export.root)),
            _ => None,
        }
    }

    async fn connect(self: &Arc<Self>, ep: &Arc<Endpoint>) -> Result<(Arc<FsClient>, u64), CallError> {
        if let Some(connected) = self.connected(ep) {
            return Ok(connected);
        }
        let _connecting = ep.connecting.lock().await;
        if let Some(connected) = self.connected(ep) {
            return Ok(connected);
        }
        let spec = &ep.spec;
        let client = Arc::new(FsClient::connect(&spec.url, ep.auth_token.as_deref(), false).await?);
        let exports = client.exports().await?;
        let export = match &spec.export {
            Some(name) => exports.into_iter().find(|e| &e.name == name),
            None => exports.into_iter().next(),
        }
        .ok_or_else(|| CallError::Transport(format!("{}: export not found on the node", spec.name)))?;
        let root = export.root;
        // Without its event connection the endpoint still serves; caches then expire by TTL.
        let events = FsClient::connect(&spec.url, ep.auth_token.as_deref(), true)
            .await
            .inspect_err(|e| tracing::warn!(endpoint = spec.name, error = %e, "no event connection"))
            .ok();
        self.forget_endpoint(ep.id);
        // A node may also send events on the request connection (a standalone node broadcasts
        // to all, and sends a request's own events before its reply): both are hints.
        self.forward_events(ep, &client);
        if let Some(events) = &events {
            self.forward_events(ep, events);
        }
        let mut st = ep.state();
        st.events = events;
        st.client = Some(Arc::clone(&client));
        st.export = Some(export);
        Ok((client, root))
    }

    /// Runs `op` on the best endpoint for `path`, failing over as §9.3 describes.
    async fn run<T>(
        self: &Arc<Self>,
        path: &str,
        needs_write: bool,
        idempotent: bool,
        op: impl AsyncFn(&Attempt) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let Target::Export { group, rel } = self.target(path)? else {
            return Err(if needs_write {
                fs_err(Errno::Perm, "operation not permitted")
            } else {
                fs_err(Errno::IsDir, "is a directory")
            });
        };
        let mut failed = false;
        let mut last_error = CallError::Transport("no endpoint available".into());
        for ep in self.ranked(group, needs_write) {
            let (client, root) = match self.connect(&ep).await {
                Ok(c) => c,
                Err(e) => {
                    self.mark(&ep, false);
                    failed = true;
                    last_error = e;
                    continue;
                }
            };
            let attempt = Attempt { ep: ep.id, client, root, rel: rel.clone() };
            match op(&attempt).await {
                Err(CallError::Transport(message)) => {
                    self.mark(&ep, false);
                    failed = true;
                    last_error = CallError::Transport(message);
                    if !idempotent {
                        break;
                    }
                }
                result => {
                    self.mark(&ep, true);
                    if failed {
                        self.failovers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(endpoint = %ep.spec.name, "failed over");
                    }
                    return result;
                }
            }
        }
        Err(last_error)
    }

    // ---- node ids --------------------------------------------------------------------------

    fn remember(&self, ep: usize, rel: &str, id: u64) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        // The caches only save round trips: when full, start over rather than grow.
        if ids.len() >= MAX_CACHED_PATHS {
            ids.clear();
            paths.clear();
        }
        ids.insert((ep, rel.to_owned()), id);
        paths.insert((ep, id), rel.to_owned());
    }

    fn remember_attr(&self, ep: usize, rel: &str, attr: &Attr) {
        self.remember(ep, rel, attr.id);
        let mut attrs = self.attrs.lock().unwrap_or_else(|p| p.into_inner());
        if attrs.len() >= MAX_CACHED_PATHS {
            attrs.clear();
        }
        attrs.insert((ep, rel.to_owned()), (attr.clone(), Instant::now()));
    }

    fn cached_attr(&self, ep: usize, rel: &str) -> Option<Attr> {
        let attrs = self.attrs.lock().unwrap_or_else(|p| p.into_inner());
        let (attr, at) = attrs.get(&(ep, rel.to_owned()))?;
        (at.elapsed() < ATTR_TTL).then(|| attr.clone())
    }

    /// The attributes of `rel` (and of its parent directory, whose size and times change with
    /// its entries) are no longer known.
    fn forget_attrs(&self, ep: usize, rel: &str) {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        let mut attrs = self.attrs.lock().unwrap_or_else(|p| p.into_inner());
        attrs.remove(&(ep, rel.to_owned()));
        attrs.remove(&(ep, parent.to_owned()));
    }

    fn forget_path(&self, ep: usize, rel: &str) {
        let prefix = format!("{rel}/");
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
        self.attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(e, p), _| *e != ep || (p != rel && p != &parent && !p.starts_with(&prefix)));
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(e, p), _| *e != ep || (p != rel && !p.starts_with(&prefix)));
    }

    fn forget_endpoint(&self, ep: usize) {
        self.negative.forget_endpoint(ep);
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, _), _| *e != ep);
        self.paths.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, _), _| *e != ep);
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, _), _| *e != ep);
        self.attrs.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, _), _| *e != ep);
    }

    fn cached(&self, ep: usize, rel: &str) -> Option<u64> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).get(&(ep, rel.to_owned())).copied()
    }

    /// The attributes of `a.rel`, resolving from the deepest cached ancestor; a stale cached id
    /// (ENOENT) makes it start over from the export root once. A name the negative cache knows
    /// to be missing answers ENOENT at once.
    async fn resolve(&self, a: &Attempt) -> Result<Attr, CallError> {
        let missing = || fs_err(Errno::NoEnt, "file not found");
        match self.resolve_with_cache(a, true).await {
            Err(Miss::Known) => Err(missing()),
            Err(Miss::Call(CallError::Fs(e))) if e.errno == Errno::NoEnt => {
                self.forget_path(a.ep, "");
                self.resolve_with_cache(a, false).await.map_err(|miss| match miss {
                    Miss::Known => missing(),
                    Miss::Call(e) => e,
                })
            }
            Err(Miss::Call(e)) => Err(e),
            Ok(attr) => Ok(attr),
        }
    }

    async fn resolve_with_cache(&self, a: &Attempt, use_cache: bool) -> Result<Attr, Miss> {
        let full = a.rel.join("/");
        if use_cache && let Some(attr) = self.cached_attr(a.ep, &full) {
            return Ok(attr);
        }
        if use_cache && let Some(id) = self.cached(a.ep, &full) {
            let attr = attr_of(a.client.call("getattr", Some(id), None, Value::Null).await?)?;
            self.remember_attr(a.ep, &full, &attr);
            return Ok(attr);
        }
        let (mut parent, mut start) = (a.root, 0);
        if use_cache {
            for depth in (1..a.rel.len()).rev() {
                if let Some(id) = self.cached(a.ep, &a.rel[..depth].join("/")) {
                    (parent, start) = (id, depth);
                    break;
                }
            }
        }
        if a.rel.is_empty() {
            let attr = attr_of(a.client.call("getattr", Some(a.root), None, Value::Null).await?)?;
            self.remember_attr(a.ep, "", &attr);
            return Ok(attr);
        }
        let mut attr = None;
        for depth in start..a.rel.len() {
            let name = &a.rel[depth];
            if self.negative.is_missing(a.ep, parent, name) {
                return Err(Miss::Known);
            }
            let found = match a.client.call("lookup", Some(parent), None, json!({"name": name})).await {
                Err(CallError::Fs(e)) if e.errno == Errno::NoEnt => {
                    // Only a parent the node handed out during this walk (or the root) proves
                    // the name missing: a cached id may be one a restarted node no longer
                    // knows, and ids repeat across restarts (export index + inode).
                    if depth > start || start == 0 {
                        self.negative.insert(a.ep, parent, name);
                    }
                    return Err(Miss::Call(CallError::Fs(e)));
                }
                other => attr_of(other?)?,
            };
            self.remember_attr(a.ep, &a.rel[..=depth].join("/"), &found);
            parent = found.id;
            attr = Some(found);
        }
        attr.ok_or_else(|| Miss::Call(fs_err(Errno::NoEnt, "file not found")))
    }

    /// The id of the parent directory of `a.rel` and the last component.
    async fn resolve_parent(&self, a: &Attempt) -> Result<(u64, String), CallError> {
        let Some((name, parent)) = a.rel.split_last() else {
            return Err(fs_err(Errno::Perm, "operation not permitted on an export root"));
        };
        let parent_attempt = Attempt { ep: a.ep, client: Arc::clone(&a.client), root: a.root, rel: parent.to_vec() };
        let dir = self.resolve(&parent_attempt).await?;
        Ok((dir.id, name.clone()))
    }

    fn forward_events(self: &Arc<Self>, endpoint: &Endpoint, client: &FsClient) {
        let mut events = client.events();
        let router = Arc::downgrade(self);
        let (ep, mount) = (endpoint.id, endpoint.spec.mount.clone());
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(router) = router.upgrade() else {
                    return;
                };
                let (id, dir_listing) = match event {
                    Event::Node { node, .. } => (node, false),
                    Event::Dir { dir, .. } => (dir, true),
                };
                if dir_listing {
                    router.negative.forget_dir(ep, id);
                }
                let rel = router.paths.lock().unwrap_or_else(|p| p.into_inner()).get(&(ep, id)).cloned();
                let Some(rel) = rel else { continue };
                router.attrs.lock().unwrap_or_else(|p| p.into_inner()).remove(&(ep, rel.clone()));
                if dir_listing {
                    // Children may have been replaced: their cached ids are suspect.
                    let prefix = if rel.is_empty() { String::new() } else { format!("{rel}/") };
                    let is_child = |e: &usize, p: &String| {
                        *e == ep && p.starts_with(&prefix) && !p[prefix.len()..].contains('/') && p != &rel
                    };
                    router.ids.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, p), _| !is_child(e, p));
                    router.attrs.lock().unwrap_or_else(|p| p.into_inner()).retain(|(e, p), _| !is_child(e, p));
                }
                let path =
                    if rel.is_empty() { mount.clone() } else { format!("{}/{rel}", mount.trim_end_matches('/')) };
                router.forget_listings(&path);
                let _ = router.events.send(PathEvent { path, dir_listing });
            }
        });
    }

    // ---- handles ---------------------------------------------------------------------------

    async fn handle(&self, a: &Attempt, writable: bool) -> Result<u64, CallError> {
        let key = (a.ep, a.rel.join("/"));
        let cached = self.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        if let Some(c) = cached.filter(|c| c.writable || !writable) {
            return Ok(c.h);
        }
        let attr = self.resolve(a).await?;
        let reply = a.client.call("open", Some(attr.id), None, json!({"flags": if writable { 2 } else { 0 }})).await?;
        let h = reply.get("h").and_then(Value::as_u64).ok_or_else(|| CallError::Transport("bad open reply".into()))?;
        let old = self.handles.lock().unwrap_or_else(|p| p.into_inner()).insert(key, CachedHandle { h, writable });
        if let Some(old) = old {
            let _ = a.client.call("close", None, Some(old.h), Value::Null).await;
        }
        Ok(h)
    }

    /// Runs `op` with a handle; an EBADF (the node restarted and forgot it) reopens once.
    async fn with_handle<T>(
        &self,
        a: &Attempt,
        writable: bool,
        op: impl AsyncFn(u64) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let h = self.handle(a, writable).await?;
        match op(h).await {
            Err(CallError::Fs(e)) if e.errno == Errno::BadF || e.errno == Errno::NoEnt => {
                self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&(a.ep, a.rel.join("/")));
                self.forget_path(a.ep, &a.rel.join("/"));
                let h = self.handle(a, writable).await?;
                op(h).await
            }
            other => other,
        }
    }

    /// Closes the cached handles of `path` on every endpoint.
    pub async fn release(self: &Arc<Self>, path: &str) {
        let Ok(Target::Export { group, rel }) = self.target(path) else {
            return;
        };
        let rel = rel.join("/");
        for ep in group {
            let cached = self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&(ep.id, rel.clone()));
            let client = ep.state().client.clone();
            if let (Some(c), Some(client)) = (cached, client) {
                let _ = client.call("close", None, Some(c.h), Value::Null).await;
            }
        }
    }

    // ---- operations by path ----------------------------------------------------------------

    pub async fn getattr(self: &Arc<Self>, path: &str) -> Result<Attr, CallError> {
        if let Target::Virtual { .. } = self.target(path)? {
            return Ok(virtual_dir_attr());
        }
        self.run(path, false, true, async |a| self.resolve(a).await).await
    }

    /// One page of a listing (the node's reply as is).
    pub async fn readdir(self: &Arc<Self>, path: &str, cookie: u64, max: u32) -> Result<ReaddirReply, CallError> {
        if let Target::Virtual { children } = self.target(path)? {
            let ents = children.into_iter().map(|name| DirEntry { name, attr: virtual_dir_attr() }).collect();
            return Ok(ReaddirReply { ents, next: 0, eof: true, dir_gen: 0 });
        }
        self.run(path, false, true, async |a| {
            let dir = self.resolve(a).await?;
            let reply = a.client.call("readdirp", Some(dir.id), None, json!({"cookie": cookie, "max": max})).await?;
            let page: ReaddirReply =
                serde_json::from_value(reply).map_err(|e| CallError::Transport(format!("bad readdirp reply: {e}")))?;
            let base = a.rel.join("/");
            for ent in &page.ents {
                if ent.name != "." && ent.name != ".." {
                    let rel = if base.is_empty() { ent.name.clone() } else { format!("{base}/{}", ent.name) };
                    self.remember_attr(a.ep, &rel, &ent.attr);
                }
            }
            Ok(page)
        })
        .await
    }

    /// The whole listing without `.` and `..`.
    pub async fn list(self: &Arc<Self>, path: &str) -> Result<Vec<DirEntry>, CallError> {
        let key = normalise(path);
        if let Some((listing, at)) = self.listings.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < ATTR_TTL
        {
            return Ok(listing.clone());
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let mut cookie = 0;
        loop {
            let page = self.readdir(path, cookie, LIST_PAGE).await?;
            all.extend(page.ents.into_iter().filter(|e| e.name != "." && e.name != ".."));
            if page.eof || page.next <= cookie {
                break;
            }
            cookie = page.next;
        }
        let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        if listings.len() >= MAX_CACHED_LISTINGS {
            listings.clear();
        }
        // Stamped with the start: an invalidation that raced the listing shortens its life.
        listings.insert(key, (all.clone(), started));
        Ok(all)
    }

    /// `path`'s own listing and its parent's (whose entries carry `path`'s attributes).
    fn forget_listings(&self, path: &str) {
        let key = normalise(path);
        let parent = match key.rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((p, _)) => p.to_owned(),
        };
        let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        listings.remove(&key);
        listings.remove(&parent);
    }

    /// Reads up to `len` bytes at `off`; `true` at end of file. Idempotent: fails over.
    pub async fn read(self: &Arc<Self>, path: &str, off: u64, len: u32) -> Result<(Vec<u8>, bool), CallError> {
        self.run(path, false, true, async |a| {
            self.with_handle(a, false, async |h| a.client.read(h, off, len).await).await
        })
        .await
    }

    /// Writes `data` at `off` (positional, hence idempotent).
    pub async fn write(self: &Arc<Self>, path: &str, off: u64, data: &[u8]) -> Result<u64, CallError> {
        self.run(path, true, true, async |a| {
            let written = self.with_handle(a, true, async |h| a.client.write(h, off, data).await).await;
            // Size and times changed; the node's event may arrive after our caller asks.
            self.forget_attrs(a.ep, &a.rel.join("/"));
            self.forget_listings(path);
            written
        })
        .await
    }

    /// Creates (or opens, unless `exclusive`) a file; its handle is cached for writes.
    pub async fn create(self: &Arc<Self>, path: &str, mode: u32, exclusive: bool) -> Result<Attr, CallError> {
        let flags = if exclusive { 2 | libc::O_EXCL as u32 } else { 2 };
        self.run(path, true, false, async |a| {
            let (parent, name) = self.resolve_parent(a).await?;
            let reply = a
                .client
                .call(
                    "create",
                    Some(parent),
                    None,
                    json!({"name": name, "mode": 0o100000 | (mode & 0o7777), "flags": flags}),
                )
                .await;
            self.negative.forget_name(a.ep, parent, &name);
            let reply = reply?;
            let attr = attr_of(reply.get("attr").cloned().map(|attr| json!({"attr": attr})).unwrap_or(Value::Null))?;
            let rel = a.rel.join("/");
            self.forget_attrs(a.ep, &rel);
            self.forget_listings(path);
            self.remember_attr(a.ep, &rel, &attr);
            if let Some(h) = reply.get("h").and_then(Value::as_u64) {
                let old = self
                    .handles
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((a.ep, rel), CachedHandle { h, writable: true });
                if let Some(old) = old {
                    let _ = a.client.call("close", None, Some(old.h), Value::Null).await;
                }
            }
            Ok(attr)
        })
        .await
    }

    async fn parent_op(self: &Arc<Self>, path: &str, op: &str, extra: Value) -> Result<(), CallError> {
        self.run(path, true, false, async |a| {
            let (parent, name) = self.resolve_parent(a).await?;
            let mut payload = extra.clone();
            payload["name"] = name.as_str().into();
            let done = a.client.call(op, Some(parent), None, payload).await;
            self.negative.forget_name(a.ep, parent, &name);
            self.forget_path(a.ep, &a.rel.join("/"));
            self.forget_listings(path);
            done.map(|_| ())
        })
        .await
    }

    pub async fn mkdir(self: &Arc<Self>, path: &str) -> Result<(), CallError> {
        self.parent_op(path, "mkdir", json!({})).await
    }

    pub async fn rmdir(self: &Arc<Self>, path: &str) -> Result<(), CallError> {
        self.parent_op(path, "rmdir", json!({})).await
    }

    pub async fn unlink(self: &Arc<Self>, path: &str) -> Result<(), CallError> {
        self.parent_op(path, "unlink", json!({})).await
    }

    pub async fn symlink(self: &Arc<Self>, path: &str, target: &str) -> Result<(), CallError> {
        self.parent_op(path, "symlink", json!({"target": target})).await
    }

    pub async fn rename(self: &Arc<Self>, from: &str, to: &str) -> Result<(), CallError> {
        let (Target::Export { group: g1, rel: to_rel }, Target::Export { group: g2, .. }) =
            (self.target(to)?, self.target(from)?)
        else {
            return Err(fs_err(Errno::XDev, "cross-export rename is not supported"));
        };
        let ids = |g: &[Arc<Endpoint>]| g.iter().map(|e| e.id).collect::<Vec<_>>();
        if ids(&g1) != ids(&g2) {
            return Err(fs_err(Errno::XDev, "cross-export rename is not supported"));
        }
        self.run(from, true, false, async |a| {
            let (old_parent, old_name) = self.resolve_parent(a).await?;
            let to_attempt = Attempt { ep: a.ep, client: Arc::clone(&a.client), root: a.root, rel: to_rel.clone() };
            let (new_parent, new_name) = self.resolve_parent(&to_attempt).await?;
            let done = a
                .client
                .call(
                    "rename",
                    None,
                    None,
                    json!({"old_parent": old_parent, "old_name": old_name, "new_parent": new_parent, "new_name": new_name}),
                )
                .await;
            self.negative.forget_name(a.ep, new_parent, &new_name);
            done?;
            self.forget_path(a.ep, &a.rel.join("/"));
            self.forget_path(a.ep, &to_rel.join("/"));
            self.forget_listings(from);
            self.forget_listings(to);
            Ok(())
        })
        .await
    }

    pub async fn truncate(self: &Arc<Self>, path: &str, size: u64) -> Result<(), CallError> {
        self.run(path, true, true, async |a| {
            let attr = self.resolve(a).await?;
            let done = a.client.call("truncate", Some(attr.id), None, json!({"sz": size})).await;
            self.forget_attrs(a.ep, &a.rel.join("/"));
            self.forget_listings(path);
            done.map(|_| ())
        })
        .await
    }

    pub async fn statfs(self: &Arc<Self>, path: &str) -> Result<Statfs, CallError> {
        self.run(path, false, true, async |a| {
            let attr = self.resolve(a).await?;
            let reply = a.client.call("statfs", Some(attr.id), None, Value::Null).await?;
            serde_json::from_value(reply).map_err(|e| CallError::Transport(format!("bad statfs reply: {e}")))
        })
        .await
    }

    pub async fn getxattr(self: &Arc<Self>, path: &str, name: &str) -> Result<Vec<u8>, CallError> {
        self.run(path, false, true, async |a| {
            let attr = self.resolve(a).await?;
            let reply = a.client.call("getxattr", Some(attr.id), None, json!({"name": name})).await?;
            reply
                .get("value_b64")
                .and_then(Value::as_str)
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| CallError::Transport("bad getxattr reply".into()))
        })
        .await
    }

    pub async fn listxattr(self: &Arc<Self>, path: &str) -> Result<Vec<String>, CallError> {
        self.run(path, false, true, async |a| {
            let attr = self.resolve(a).await?;
            let reply = a.client.call("listxattr", Some(attr.id), None, Value::Null).await?;
            serde_json::from_value(reply.get("names").cloned().unwrap_or(Value::Null))
                .map_err(|e| CallError::Transport(format!("bad listxattr reply: {e}")))
        })
        .await
    }

    pub async fn setxattr(self: &Arc<Self>, path: &str, name: &str, value: &[u8], flags: u32) -> Result<(), CallError> {
        let value_b64 = base64::engine::general_purpose::STANDARD.encode(value);
        self.run(path, true, true, async |a| {
            let attr = self.resolve(a).await?;
            a.client
                .call(
                    "setxattr",
                    Some(attr.id),
                    None,
                    json!({"name": name, "value_b64": value_b64.as_str(), "flags": flags}),
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn removexattr(self: &Arc<Self>, path: &str, name: &str) -> Result<(), CallError> {
        self.run(path, true, true, async |a| {
            let attr = self.resolve(a).await?;
            a.client.call("removexattr", Some(attr.id), None, json!({"name": name})).await?;
            Ok(())
        })
        .await
    }

    // ---- health ----------------------------------------------------------------------------

    /// Checks one endpoint now: a hello on its connection (connecting if needed).
    async fn probe(self: &Arc<Self>, ep: &Arc<Endpoint>) {
        let result = match self.connect(ep).await {
            Ok((client, _)) => client.ping().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::debug!(endpoint = %ep.spec.name, error = %e, "health check failed");
        }
        self.mark(ep, result.is_ok());
    }

    /// Checks every endpoint now.
    pub async fn probe_all(self: &Arc<Self>) {
        for ep in self.snapshot() {
            self.probe(&ep).await;
        }
    }

    /// Background health checks (§9.3 intervals) for as long as the router lives.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let router = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(router) = router.upgrade() else {
                    return;
                };
                for ep in router.snapshot() {
                    let due = {
                        let st = ep.state();
                        let wait = if st.healthy { HEALTH_INTERVAL } else { RETRY_UNHEALTHY };
                        st.last_check.is_none_or(|t| t.elapsed() >= wait)
                    };
                    if due {
                        router.probe(&ep).await;
                    }
                }
            }
        });
    }

    /// The `status` JSON of §9.4.
    pub fn status(&self) -> Value {
        let endpoints: Vec<Value> = self
            .snapshot()
            .iter()
            .enumerate()
            .map(|(idx, ep)| {
                let st = ep.state();
                let export = st.export.as_ref();
                json!({
                    "idx": idx,
                    "name": ep.spec.name,
                    "mount_path": ep.spec.mount,
                    "url": ep.spec.url,
                    "export": ep.spec.export.clone().unwrap_or_default(),
                    "root": export.map(|e| e.root),
                    "export_ro": export.map(|e| e.ro),
                    "source_kind": export.map(|e| e.source_kind.clone()),
                    "source_id": export.map(|e| e.source_id.clone()),
                    "caps": {
                        "native_watch": export.map(|e| e.caps.native_watch),
                        "case_sensitive": export.map(|e| e.caps.case_sensitive),
                    },
                    "healthy": st.healthy,
                    "has_client": st.client.as_ref().is_some_and(|c| !c.is_closed()),
                    "has_auth": ep.auth_token.is_some(),
                    "consecutive_failures": st.consecutive_failures,
                    "last_health_check_ms": st.last_check_ms,
                    "last_success_ms": st.last_success_ms,
                    "last_failure_ms": st.last_failure_ms,
                })
            })
            .collect();
        let metrics = json!({
            "failover_events_total": self.failover_events_total(),
            "negative_lookup_hits_total": self.negative_lookup_hits_total(),
        });
        json!({"metrics": metrics, "endpoints": endpoints})
    }
}

fn attr_of(reply: Value) -> Result<Attr, CallError> {
    serde_json::from_value(reply.get("attr").cloned().unwrap_or(Value::Null))
        .map_err(|e| CallError::Transport(format!("bad attr in reply: {e}")))
}

/// Attributes of a directory that only exists in the router's namespace.
pub fn virtual_dir_attr() -> Attr {
    Attr {
        id: 1,
        k: spiderweb_proto::fs::kind::DIR,
        m: 0o40555,
        n: 2,
        u: 0,
        g: 0,
        sz: 0,
        at: 0,
        mt: 0,
        ct: 0,
        r#gen: 0,
    }
}
