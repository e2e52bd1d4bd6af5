//! A client of the gateway's control channel (`unified-v2.md` §3–§4), for the daemon's
//! pairing and lease calls and the mount client's workspace hydration.
//!
//! Each call is one fresh WebSocket: `control.version`, `control.connect`, the one operation,
//! close (spec §8: the peer does it this way, and a fresh socket never carries state from an
//! earlier failure). The whole exchange is bounded by [`REPLY_TIMEOUT`]. The bearer token
//! goes in the `Authorization` header, never in the URL.
//!
//! The gateway's address is resolved once, when the URL is parsed: the fs node resolves it
//! before it confines itself (its sandbox allows neither DNS nor reading `/etc/resolv.conf`).

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long one control call (connect, handshake, operation) may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest control frame accepted (`workspace_status` of a big project stays well below).
const MAX_CONTROL_FRAME: usize = 4 << 20;
/// Frames without our id (pushes) skipped while waiting for a reply.
const MAX_SKIPPED_FRAMES: usize = 1024;

/// Why a control call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control URL {0:?}: must be ws://host:port/ (no query, no credentials in the URL)")]
    BadUrl(String),
    #[error("control URL {url}: cannot resolve {host}: {reason}")]
    Resolve { url: String, host: String, reason: String },
    #[error("cannot reach the gateway at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("control.{op}: no reply within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout { op: String },
    /// The gateway answered `control.error`.
    #[error("control.{op} refused: {code}: {message}")]
    Refused { op: String, code: String, message: String },
    #[error("control.{op}: unexpected reply: {detail}")]
    Protocol { op: String, detail: String },
}

impl ControlError {
    /// The gateway's error code, when it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ControlError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A parsed and resolved `ws://host:port/` gateway URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlUrl {
    /// `host:port` as written (for the `Host` header and URLs derived from it).
    pub authority: String,
    pub addrs: Vec<SocketAddr>,
}

impl ControlUrl {
    /// Parses `ws://host[:port][/]` and resolves the host now.
    pub fn parse(url: &str) -> Result<ControlUrl, ControlError> {
        let bad = || ControlError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("ws://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') || path.contains('?') || path.contains('#') {
            return Err(bad());
        }
        let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']'))
        });
        let with_port = if has_port { authority.to_owned() } else { format!("{authority}:80") };
        let host = with_port.rsplit_once(':').map_or("", |(h, _)| h).to_owned();
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| ControlError::Resolve { url: url.to_owned(), host: host.clone(), reason: e.to_string() })?
            .collect();
        if addrs.is_empty() {
            return Err(ControlError::Resolve { url: url.to_owned(), host, reason: "no address".into() });
        }
        Ok(ControlUrl { authority: with_port, addrs })
    }

    /// The port every resolved address shares (the one the sandbox lets the node connect to).
    pub fn port(&self) -> u16 {
        self.addrs[0].port()
    }

    /// `ws://host:port<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }

    /// Opens a WebSocket to `path` on the gateway, with `token` as the bearer token.
    pub async fn websocket(
        &self,
        path: &str,
        token: Option<&str>,
        max_frame: usize,
    ) -> Result<WebSocketStream<TcpStream>, ControlError> {
        let url = self.url(path);
        let err = |reason: String| ControlError::Connect { url: url.clone(), reason };
        let stream = TcpStream::connect(&self.addrs[..]).await.map_err(|e| err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut request = url.as_str().into_client_request().map_err(|e| err(e.to_string()))?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| err("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let config = WebSocketConfig::default().max_message_size(Some(max_frame)).max_frame_size(Some(max_frame));
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(ws)
    }

    /// One control operation on a fresh connection: version, connect, `op`; its payload.
    /// `id_prefix` names the caller in request ids (`fs-mount` → `fs-mount-version`, …).
    pub async fn call(
        &self,
        token: Option<&str>,
        id_prefix: &str,
        op: &str,
        payload: Value,
    ) -> Result<Value, ControlError> {
        tokio::time::timeout(REPLY_TIMEOUT, self.call_inner(token, id_prefix, op, payload))
            .await
            .unwrap_or_else(|_| Err(ControlError::Timeout { op: op.to_owned() }))
    }

    async fn call_inner(
        &self,
        token: Option<&str>,
        id_prefix: &str,
        op: &str,
        payload: Value,
    ) -> Result<Value, ControlError> {
        let mut ws = self.websocket("/", token, MAX_CONTROL_FRAME).await?;
        let result = async {
            exchange(&mut ws, "version", &format!("{id_prefix}-version"), json!({"protocol": "unified-v2"})).await?;
            exchange(&mut ws, "connect", &format!("{id_prefix}-connect"), json!({})).await?;
            exchange(&mut ws, op, &format!("{id_prefix}-{}", op.replace('_', "-")), payload).await
        }
        .await;
        let _ = ws.close(None).await;
        result
    }
}

/// Sends `control.<op>` with `id` and waits for the frame echoing `id`.
async fn exchange(
    ws: &mut WebSocketStream<TcpStream>,
    op: &str,
    id: &str,
    payload: Value,
) -> Result<Value, ControlError> {
    let protocol = |detail: String| ControlError::Protocol { op: op.to_owned(), detail };
    let request = json!({"channel": "control", "type": format!("control.{op}"), "id": id, "payload": payload});
    ws.send(Message::text(request.to_string())).await.map_err(|e| protocol(format!("send failed: {e}")))?;
    for _ in 0..MAX_SKIPPED_FRAMES {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(protocol(format!("connection failed: {e}"))),
            None => return Err(protocol("connection closed before the reply".into())),
        };
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            return Err(protocol("reply is not JSON".into()));
        };
        if frame.get("id").and_then(Value::as_str) != Some(id) {
            // A push, or a legacy error frame: legacy errors carry no id and end the socket.
            if frame.get("type").and_then(Value::as_str) == Some("error") {
                let field = |k: &str| frame.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                return Err(ControlError::Refused {
                    op: op.to_owned(),
                    code: field("code"),
                    message: field("message"),
                });
            }
            continue;
        }
        if frame.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(frame.get("payload").cloned().unwrap_or_else(|| json!({})));
        }
        let error = frame.get("error").cloned().unwrap_or_default();
        let field = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        return Err(ControlError::Refused { op: op.to_owned(), code: field("code"), message: field("message") });
    }
    Err(protocol(format!("no reply among {MAX_SKIPPED_FRAMES} frames")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_resolve_loopback() {
        let url = ControlUrl::parse("ws://127.0.0.1:18790/").unwrap();
        assert_eq!(url.authority, "127.0.0.1:18790");
        assert_eq!(url.port(), 18790);
        assert_eq!(url.url("/v2/node"), "ws://127.0.0.1:18790/v2/node");
        assert_eq!(ControlUrl::parse("ws://127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(ControlUrl::parse("ws://localhost:9/").unwrap().authority, "localhost:9");
        assert_eq!(ControlUrl::parse("ws://[::1]:7/").unwrap().port(), 7);
        assert_eq!(ControlUrl::parse("ws://127.0.0.1/").unwrap().port(), 80);
        for bad in ["http://h:1/", "ws://", "ws://u:p@h:1/", "ws://h:1/?token=x", "h:1"] {
            assert!(matches!(ControlUrl::parse(bad), Err(ControlError::BadUrl(_))), "{bad}");
        }
        assert!(matches!(ControlUrl::parse("ws://no-such-host.invalid:1/"), Err(ControlError::Resolve { .. })));
    }
}
