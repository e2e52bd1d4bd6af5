//! The node's end of the reverse tunnel (spec §7): the node dials the gateway's `/v2/node`,
//! authenticates with a tunnel hello carrying its id and secret, and then serves the frames
//! the gateway relays with the very same node service as a direct connection
//! ([`crate::node::serve_tunnel`]: events first, then the reply; pings answered).
//!
//! When the tunnel fails or ends it is dialled again after `min(base << attempt, max)`; the
//! attempt count starts over after a tunnel was accepted. It never gives up: whether the node
//! is still wanted is the lease's business (`lease`), which stops the daemon when it is not.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spiderweb_proto::fs as wire;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Daemon;
use crate::control::{ControlError, REPLY_TIMEOUT};
use crate::node::{NodeState, serve_tunnel};

/// Why one tunnel attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Connect(#[from] ControlError),
    #[error("the gateway refused the tunnel: errno {errno}: {message}")]
    Refused { errno: i64, message: String },
    #[error("tunnel hello: {0}")]
    Protocol(String),
}

pub async fn serve_forever(d: &Daemon, node_id: &str, secret: &str, node: Arc<NodeState>) -> Infallible {
    let mut backoff = d.backoff();
    loop {
        match open(d, node_id, secret).await {
            Ok(ws) => {
                backoff.reset();
                tracing::info!(node_id, "tunnel up");
                super::announce("tunnel up");
                serve_tunnel(ws, Arc::clone(&node)).await;
                tracing::warn!(node_id, "tunnel closed; reconnecting");
            }
            Err(e) => tracing::warn!(node_id, error = %e, "tunnel failed; retrying"),
        }
        backoff.wait().await;
    }
}

/// Dials `/v2/node` and authenticates.
async fn open(d: &Daemon, node_id: &str, secret: &str) -> Result<WebSocketStream<TcpStream>, TunnelError> {
    let mut ws = d.control.websocket("/v2/node", d.control_token.as_deref(), wire::MAX_FRAME_BYTES).await?;
    let hello = json!({
        "channel": "acheron",
        "type": "acheron.t_fs_hello",
        "tag": 1,
        "payload": {"protocol": wire::PROTOCOL, "proto": wire::PROTO, "node_id": node_id, "node_secret": secret},
    });
    ws.send(Message::text(hello.to_string())).await.map_err(|e| TunnelError::Protocol(e.to_string()))?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(TunnelError::Protocol(e.to_string())),
                None => return Err(TunnelError::Protocol("closed before the hello reply".into())),
            }
        }
    })
    .await
    .map_err(|_| TunnelError::Protocol(format!("no hello reply within {}s", REPLY_TIMEOUT.as_secs())))??;
    let frame: Value = serde_json::from_str(reply.as_str()).map_err(|e| TunnelError::Protocol(e.to_string()))?;
    match frame.get("type").and_then(Value::as_str) {
        Some("acheron.r_fs_hello") => Ok(ws),
        Some("acheron.err_fs") => Err(TunnelError::Refused {
            errno: frame["error"]["errno"].as_i64().unwrap_or(0),
            message: frame["error"]["message"].as_str().unwrap_or_default().to_owned(),
        }),
        _ => Err(TunnelError::Protocol(format!("unexpected reply {frame}"))),
    }
}
