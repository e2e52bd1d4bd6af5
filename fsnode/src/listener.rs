//! The standalone node's listener: HTTP/1.1 with WebSocket upgrades on `/v2/fs` (or `/`).
//!
//! The checks happen before the 101: a request without `Upgrade: websocket` gets an ordinary
//! 4xx (spec README quirk 14), and a node at its connection limit answers 503. A wrong path is
//! upgraded and then answered `err_fs` 22 `invalid FS endpoint path` + close, as the spec
//! says. Every accepted socket gets `TCP_NODELAY` (quirk 3). The gateway does not use this
//! module: it has its own listener and calls [`crate::node::serve_connection`].

use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use spiderweb_proto::fs::{self as wire, Errno, FsError};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::node::{NodeState, serve_connection};

/// A client must have sent its HTTP request head within this long.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections forever.
pub async fn run(listener: TcpListener, state: Arc<NodeState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(route(req, state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token))))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

fn route(mut req: Request<Incoming>, state: Arc<NodeState>) -> Response<Full<Bytes>> {
    if !is_websocket_upgrade(&req) {
        return text(StatusCode::UPGRADE_REQUIRED, "this is a spiderweb fs node: connect with a WebSocket to /v2/fs\n");
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let Some(slot) = state.try_admit() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let path_ok = matches!(req.uri().path(), "/v2/fs" | "/");
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default()
            .max_message_size(Some(wire::MAX_FRAME_BYTES))
            .max_frame_size(Some(wire::MAX_FRAME_BYTES));
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        if path_ok {
            serve_connection(ws, state).await;
        } else {
            let error = wire::render_error(None, &FsError::new(Errno::Inval, "invalid FS endpoint path"));
            let _ = ws.send(Message::text(error)).await;
            let _ = ws.close(None).await;
        }
        drop(slot);
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
