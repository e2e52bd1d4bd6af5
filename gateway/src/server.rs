//! The listener: HTTP requests, WebSocket upgrades, connection limits and shutdown.
//!
//! Every TCP connection is served by hyper. Plain requests get the operations endpoints
//! (`/livez`, `/readyz`, `/metrics`, `/metrics.json`). An upgrade is checked *before* the 101
//! — browser origin, tokens in the URL, connection limits — and refused with an HTTP status
//! when it fails; after the 101 the socket goes to [`crate::connection`].
//!
//! Shutdown (SIGTERM/SIGINT) cancels one token: the accept loop stops (new connections are
//! refused), every connection finishes the frame it is handling, queues a 1001 close behind
//! its replies, and the process exits when all are done or the grace period ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use spiderweb_proto::codes::control as code;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::EventHub;
use crate::events::topology::TopologyFeed;
use crate::metrics::Metrics;
use crate::plane::ControlPlane;
use crate::runtime::Runtime;
use spiderweb_fsnode::node::NodeState;

/// Where the gateway serves its own exports (spec `fs-node.md`).
pub const FS_PATH: &str = "/v2/fs";
use crate::tokens::Digest;

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    pub config: Config,
    pub plane: ControlPlane,
    pub events: EventHub,
    pub topology: TopologyFeed,
    pub metrics: Metrics,
    pub runtime: Arc<Runtime>,
    /// The gateway's own exports (`fs.exports`), served on `/v2/fs`.
    pub fs_node: Option<Arc<NodeState>>,
    /// Paired nodes' tunnels (`/v2/node`), used by the relay (`/v2/fs/node/<id>`).
    pub tunnels: crate::tunnel::Registry,
    pub shutdown: CancellationToken,
    tasks: TaskTracker,
    open: AtomicUsize,
    per_token: Mutex<HashMap<Digest, usize>>,
    next_id: AtomicU64,
}

impl Shared {
    /// `shutdown` is the token the runtime was given, so that stopping the server also
    /// stops running turns.
    pub fn new(
        config: Config,
        plane: ControlPlane,
        metrics: Metrics,
        runtime: Arc<Runtime>,
        fs_node: Option<Arc<NodeState>>,
        shutdown: CancellationToken,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            tunnels: crate::tunnel::Registry::new(config.nodes.tunnel_reply_timeout()),
            config,
            plane,
            events: EventHub::default(),
            topology: TopologyFeed::default(),
            metrics,
            runtime,
            fs_node,
            shutdown,
            tasks: TaskTracker::new(),
            open: AtomicUsize::new(0),
            per_token: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Takes a connection slot, or says which limit is reached.
    fn reserve(self: &Arc<Self>, token: Option<Digest>) -> Result<ConnectionSlot, Refusal> {
        let max = self.config.server.max_connections;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections);
        }
        if let Some(digest) = token {
            let mut counts = self.per_token.lock().unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(digest).or_insert(0);
            if *count >= self.config.server.max_connections_per_token {
                drop(counts);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyForToken);
            }
            *count += 1;
        }
        self.metrics.connections_active.inc();
        self.metrics.connections_total.inc();
        Ok(ConnectionSlot { shared: self.clone(), token, id: self.next_id.fetch_add(1, Ordering::Relaxed) })
    }
}

impl AsRef<ControlPlane> for Shared {
    fn as_ref(&self) -> &ControlPlane {
        &self.plane
    }
}

/// One open WebSocket connection's share of the limits; released on drop.
pub struct ConnectionSlot {
    shared: Arc<Shared>,
    token: Option<Digest>,
    id: u64,
}

impl ConnectionSlot {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.connections_active.dec();
        if let Some(digest) = self.token {
            let mut counts = self.shared.per_token.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = counts.get_mut(&digest) {
                *c -= 1;
                if *c == 0 {
                    counts.remove(&digest);
                }
            }
        }
    }
}

enum Refusal {
    TooManyConnections,
    TooManyForToken,
}

/// Binds the listener. Separate from [`serve`] so that the caller can print the address.
pub async fn bind(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(config.server.bind, config.server.port)).await
}

/// Accepts connections until shutdown, then waits for them to finish.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        shared.tasks.clone().spawn(serve_http(stream, peer, shared));
    }
    drop(listener);
    shared.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, shared.tasks.wait()).await.is_err() {
        tracing::warn!("shutdown grace period ended with connections still open");
    }
}

/// Serves the optional metrics port (`SPIDERWEB_METRICS_PORT`) until shutdown: plain HTTP,
/// one request per connection, for scrapers that must not reach the WebSocket port.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service_shared = shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = service_shared.clone();
                async move { Ok::<_, std::convert::Infallible>(crate::http_ops::respond_metrics_port(&req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.config.server.handshake_timeout())
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

async fn serve_http(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = service_shared.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, &shared)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.server.handshake_timeout())
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "http connection ended") },
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn route(mut req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    if !is_websocket_upgrade(&req) {
        return crate::http_ops::respond(&req, shared);
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "websocket upgrades use GET\n");
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut r = text(StatusCode::UPGRADE_REQUIRED, "unsupported WebSocket version; use 13\n");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(origin, &shared.config.server.allowed_origins) {
            shared.metrics.refused("origin");
            tracing::warn!(origin, "refused a WebSocket upgrade from a foreign origin");
            return text(StatusCode::FORBIDDEN, "origin not allowed; add it to server.allowed_origins\n");
        }
    }
    if req.uri().query().is_some_and(query_carries_token) {
        shared.metrics.refused("token_in_url");
        return text(
            StatusCode::BAD_REQUEST,
            "tokens are accepted only in the Authorization header (Bearer), never in the URL\n",
        );
    }
    if shared.shutdown.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let path = req.uri().path().to_owned();
    let role = (path == "/")
        .then(|| bearer(&req).and_then(|t| shared.plane.tokens().role_of(t).map(|r| (r, crate::tokens::digest(t)))))
        .flatten();
    let slot = match shared.reserve(role.map(|(_, d)| d)) {
        Ok(slot) => slot,
        Err(Refusal::TooManyConnections) => {
            shared.metrics.refused("max_connections");
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
        }
        Err(Refusal::TooManyForToken) => {
            shared.metrics.refused("max_connections_per_token");
            return text(StatusCode::TOO_MANY_REQUESTS, "too many connections for this token\n");
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let route = WsRoute::of(&path);
    let max_frame = match route {
        WsRoute::NodeTunnel => crate::tunnel::TUNNEL_MAX_FRAME_BYTES,
        WsRoute::NodeRelay(_) => crate::tunnel::RELAY_MAX_FRAME_BYTES,
        _ => shared.config.server.max_frame_bytes,
    };
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        // Small buffers keep an idle connection cheap; large frames grow them on demand.
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let task_shared = shared.clone();
    shared.tasks.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, Some(ws_config)).await;
        match (route, role) {
            (WsRoute::Main, Some((role, _))) => crate::connection::serve(socket, task_shared, role, slot).await,
            (WsRoute::Main, None) => {
                tracing::info!("refused a connection without a valid bearer token");
                crate::connection::refuse(socket, &task_shared, code::PROVIDER_AUTH_FAILED, "forbidden").await;
            }
            // The node protocol authenticates in its hello (fs.auth_token), as a node does.
            // A node authenticates in its tunnel hello (node_id + node_secret).
            (WsRoute::NodeTunnel, _) => {
                let _slot = slot;
                crate::tunnel::link::serve(socket, task_shared).await
            }
            // A relay client authenticates in its fs hello (auth_token = the node's secret).
            (WsRoute::NodeRelay(node_id), _) => {
                let _slot = slot;
                crate::tunnel::relay::serve(socket, task_shared, node_id).await
            }
            (WsRoute::LocalFs, _) => match task_shared.fs_node.clone() {
                Some(node) => {
                    let _slot = slot;
                    spiderweb_fsnode::node::serve_connection(socket, node).await
                }
                None => {
                    crate::connection::refuse(
                        socket,
                        &task_shared,
                        code::INVALID_ENVELOPE,
                        "this gateway has no fs.exports",
                    )
                    .await
                }
            },
            _ => {
                crate::connection::refuse(socket, &task_shared, code::INVALID_ENVELOPE, "invalid websocket path").await
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r
}

/// Where an upgraded connection goes (spec unified-v2 §1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
enum WsRoute {
    Main,
    LocalFs,
    NodeTunnel,
    NodeRelay(String),
    Unknown,
}

impl WsRoute {
    fn of(path: &str) -> WsRoute {
        match path {
            "/" => WsRoute::Main,
            FS_PATH => WsRoute::LocalFs,
            "/v2/node" | "/v2/node/" => WsRoute::NodeTunnel,
            _ => match path.strip_prefix("/v2/fs/node/") {
                Some(id) if spiderweb_policy::session::valid_identifier(id, 128) => WsRoute::NodeRelay(id.to_owned()),
                _ => WsRoute::Unknown,
            },
        }
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, needle: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|part| part.trim().eq_ignore_ascii_case(needle))))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// The bearer token of `Authorization` (`Bearer t`, `bearer t`, or the bare token; spec §2.1).
fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?.trim_matches([' ', '\t']);
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_matches([' ', '\t']),
        Some(_) => return None,
        None if value.eq_ignore_ascii_case("bearer") => return None,
        None => value,
    };
    (!token.is_empty()).then_some(token)
}

/// Loopback origins are always allowed; others only when configured (CSWSH protection).
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.rsplit_once(':').map_or(rest, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { rest })
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a query string carries something that looks like a credential.
fn query_carries_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
        name.contains("token")
            || matches!(
                name.as_str(),
                "auth" | "authorization" | "key" | "api_key" | "apikey" | "bearer" | "password" | "secret"
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_owned()];
        for ok in [
            "http://127.0.0.1:3000",
            "http://localhost",
            "https://LOCALHOST:8443",
            "http://[::1]:80",
            "https://app.example",
        ] {
            assert!(origin_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "file://",
            "http://localhost.evil:80",
            "https://app.example.evil",
        ] {
            assert!(!origin_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn tokens_in_queries() {
        for q in ["token=x", "a=1&access_token=y", "auth=z", "AUTH_TOKEN=1", "api_key=k"] {
            assert!(query_carries_token(q), "{q}");
        }
        for q in ["session=main", "v=2", ""] {
            assert!(!query_carries_token(q), "{q}");
        }
    }

    #[test]
    fn bearer_forms() {
        let req = |v: &str| Request::builder().header("authorization", v).body(()).unwrap();
        assert_eq!(bearer(&req("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&req("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&req("abc")), Some("abc"));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }
}
