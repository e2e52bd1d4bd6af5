//! One broker connection shared by many concurrent provider requests — what the gateway needs.
//!
//! [`SharedClient::provider_request`] allocates a request id, registers a route for its
//! replies, sends the request and waits for the response head; the caller then reads body
//! chunks from the returned [`ProviderResponse`]. A reader task routes every reply to its
//! request by id. Dropping a `ProviderResponse` before its end sends `cancel`, so the broker
//! aborts the upstream request: an abandoned stream costs nothing upstream.
//!
//! Backpressure: each request has a small reply queue; when a caller stops reading, its queue
//! fills and the reader task waits, which stalls this connection (and, through the broker's
//! bounded queues, the upstream reads). Callers that may stall should use their own
//! connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use spiderweb_proto::broker::{
    BrokerReply, BrokerRequest, ClientCodec, DEFAULT_MAX_FRAME_BYTES, ErrorCode, ProviderRequest,
};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::broker::ClientError;

/// Replies buffered per request before the connection's reader waits for the caller.
const REPLIES_PER_REQUEST: usize = 32;
/// Requests waiting to be written.
const OUTBOX: usize = 256;

type Routes = Arc<Mutex<HashMap<u64, mpsc::Sender<BrokerReply>>>>;

/// How a provider request failed, as far as the caller needs to know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The broker refused or failed the request.
    #[error("{code:?}: {message}")]
    Broker {
        /// Class of failure.
        code: ErrorCode,
        /// The broker's explanation (never key material).
        message: String,
    },
    /// The connection to the broker ended.
    #[error("the broker connection ended")]
    Disconnected,
}

/// A provider request's parts, without the id (the client assigns it).
pub struct Outgoing {
    /// Provider id.
    pub provider: String,
    /// `GET` or `POST`.
    pub method: String,
    /// Path below the provider's base URL.
    pub path: String,
    /// Allowlisted request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
}

/// A connection to the broker usable from many tasks at once.
pub struct SharedClient {
    outbox: mpsc::Sender<BrokerRequest>,
    routes: Routes,
    next_id: AtomicU64,
    /// Cleared by the reader task when the connection ends.
    connected: Arc<AtomicBool>,
}

impl SharedClient {
    /// Connects and starts the reader and writer tasks.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, ClientCodec::new(DEFAULT_MAX_FRAME_BYTES));
        let mut writer = FramedWrite::new(write_half, ClientCodec::new(DEFAULT_MAX_FRAME_BYTES));
        let (outbox, mut pending) = mpsc::channel::<BrokerRequest>(OUTBOX);
        tokio::spawn(async move {
            while let Some(request) = pending.recv().await {
                if writer.send(request).await.is_err() {
                    break;
                }
            }
        });
        let routes: Routes = Arc::default();
        let reader_routes = routes.clone();
        let connected = Arc::new(AtomicBool::new(true));
        let reader_connected = connected.clone();
        tokio::spawn(async move {
            while let Some(Ok(Ok(reply))) = reader.next().await {
                match reply.id() {
                    Some(id) => {
                        let route = reader_routes.lock().expect("routes lock").get(&id).cloned();
                        if let Some(route) = route {
                            let _ = route.send(reply).await;
                        }
                    }
                    // A connection-level refusal (uid, connection limit) concerns every request.
                    None => {
                        let BrokerReply::Error { code, message, .. } = reply else {
                            continue;
                        };
                        let routes: Vec<_> = reader_routes.lock().expect("routes lock").values().cloned().collect();
                        for route in routes {
                            let _ = route.send(BrokerReply::Error { id: None, code, message: message.clone() }).await;
                        }
                    }
                }
            }
            reader_connected.store(false, Ordering::Release);
            // Dropping the routes ends every waiting request with `Disconnected`.
            reader_routes.lock().expect("routes lock").clear();
        });
        Ok(SharedClient { outbox, routes, next_id: AtomicU64::new(1), connected })
    }

    /// Requests waiting for their head or still streaming.
    pub fn in_flight(&self) -> usize {
        self.routes.lock().expect("routes lock").len()
    }

    /// False once the connection ended (the broker restarted or closed it): make a new one.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && !self.outbox.is_closed()
    }

    /// Sends a provider request and waits for its response head (or its error).
    pub async fn provider_request(&self, outgoing: Outgoing) -> Result<ProviderResponse, ProviderError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (route, mut replies) = mpsc::channel(REPLIES_PER_REQUEST);
        self.routes.lock().expect("routes lock").insert(id, route);
        // From here on, dropping this future (the caller gave up) cancels the request.
        let mut guard = RequestGuard { id, outbox: self.outbox.clone(), routes: self.routes.clone(), finished: false };
        let request = BrokerRequest::ProviderRequest(ProviderRequest {
            id,
            provider: outgoing.provider,
            method: outgoing.method,
            path: outgoing.path,
            headers: outgoing.headers,
            body: outgoing.body.into(),
        });
        if self.outbox.send(request).await.is_err() {
            guard.finished = true;
            return Err(ProviderError::Disconnected);
        }
        match replies.recv().await {
            Some(BrokerReply::ResponseHead { status, headers, .. }) => {
                Ok(ProviderResponse { status, headers, replies, guard })
            }
            Some(BrokerReply::Error { code, message, .. }) => {
                guard.finished = true;
                Err(ProviderError::Broker { code, message })
            }
            _ => {
                guard.finished = true;
                Err(ProviderError::Disconnected)
            }
        }
    }
}

/// Removes a request's route when it ends, and cancels it if it had not finished.
struct RequestGuard {
    id: u64,
    outbox: mpsc::Sender<BrokerRequest>,
    routes: Routes,
    finished: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.routes.lock().expect("routes lock").remove(&self.id);
        if !self.finished {
            // Best effort: if the outbox is full the connection is congested anyway, and the
            // broker also cancels everything of a connection that closes.
            let _ = self.outbox.try_send(BrokerRequest::Cancel { id: self.id });
        }
    }
}

/// A provider's answer: status and headers, then the body chunk by chunk. Dropping it
/// before the end cancels the upstream request.
pub struct ProviderResponse {
    /// HTTP status from the provider.
    pub status: u16,
    /// The forwarded response headers.
    pub headers: Vec<(String, String)>,
    replies: mpsc::Receiver<BrokerReply>,
    guard: RequestGuard,
}

impl ProviderResponse {
    /// The next body chunk; `Ok(None)` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ProviderError> {
        if self.guard.finished {
            return Ok(None);
        }
        let reply = self.replies.recv().await;
        if !matches!(reply, Some(BrokerReply::BodyChunk { .. })) {
            self.guard.finished = true;
        }
        match reply {
            Some(BrokerReply::BodyChunk { data, .. }) => Ok(Some(data.0)),
            Some(BrokerReply::End { .. }) => Ok(None),
            Some(BrokerReply::Error { code, message, .. }) => Err(ProviderError::Broker { code, message }),
            _ => Err(ProviderError::Disconnected),
        }
    }
}
