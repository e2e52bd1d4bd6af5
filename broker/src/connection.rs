//! One client connection: who is calling, and its requests in flight.
//!
//! The peer's uid comes from `SO_PEERCRED` when the connection is accepted; a uid that may run
//! no operation at all gets one `forbidden` error and the connection is closed. After that,
//! every request is checked against the class of its operation (`policy::broker_access`).
//!
//! A reader task decodes requests in order; provider requests run as their own tasks (so a
//! long stream does not hold up the next request) and all replies go through one bounded
//! queue to the writer. When the client stops reading, the queue fills and the provider tasks
//! wait, which in turn stops reading from upstream: memory stays bounded. When the client
//! goes away, every request of the connection is cancelled, which aborts its upstream.
//!
//! Malformed frames get an error reply and the connection goes on; a frame over the size limit
//! loses the framing, so it gets an error and the connection is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use spiderweb_policy::broker_access::BrokerOperation;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, CredentialEntry, ErrorCode, ProviderRequest, ServerCodec};
use spiderweb_proto::frame::FrameError;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

/// Replies waiting for the writer, per connection.
const REPLY_QUEUE: usize = 64;

/// How long a closing connection may take to write out its queued replies.
const WRITER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

type InFlight = Arc<Mutex<HashMap<u64, CancellationToken>>>;

/// Serves one accepted connection until the client leaves or `shutdown` fires.
pub async fn serve(stream: UnixStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let peer_uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!("cannot read SO_PEERCRED, closing: {e}");
            return;
        }
    };
    let (read_half, write_half) = stream.into_split();
    let max = shared.limits.max_frame_bytes;
    let mut reader = FramedRead::new(read_half, ServerCodec::new(max));
    let mut writer = FramedWrite::new(write_half, ServerCodec::new(max));

    if !shared.access.admits_any(peer_uid, shared.own_uid) {
        tracing::warn!(peer_uid, "connection from a uid that may use no broker operation refused");
        let _ = writer.send(forbidden(None, peer_uid, "this broker")).await;
        return;
    }

    let (tx, mut rx) = mpsc::channel::<BrokerReply>(REPLY_QUEUE);
    let connection = shutdown.child_token();
    let writer_done = connection.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let more = rx.len();
            let result = if more == 0 { writer.send(reply).await } else { writer.feed(reply).await };
            if let Err(e) = result {
                tracing::debug!("client write failed: {e}");
                break;
            }
        }
        // The client is gone or the connection ends: stop every request of it.
        writer_done.cancel();
    });

    let conn = Conn { shared, peer_uid, tx, in_flight: Arc::default(), cancel: connection.clone() };
    loop {
        let frame = tokio::select! {
            _ = connection.cancelled() => break,
            frame = reader.next() => frame,
        };
        match frame {
            None => break,
            Some(Ok(Ok(request))) => conn.dispatch(request).await,
            Some(Ok(Err(malformed))) => {
                let reply =
                    BrokerReply::Error { id: None, code: ErrorCode::MalformedRequest, message: malformed.to_string() };
                let _ = conn.tx.send(reply).await;
            }
            Some(Err(FrameError::TooLarge { len, max })) => {
                let message = format!("frame of {len} bytes exceeds limits.max_frame_bytes ({max}); closing");
                let _ = conn.tx.send(BrokerReply::Error { id: None, code: ErrorCode::MalformedRequest, message }).await;
                break;
            }
            Some(Err(e)) => {
                tracing::debug!("client read failed: {e}");
                break;
            }
        }
    }
    connection.cancel();
    drop(conn);
    // Let queued replies (e.g. the error that explains a close) go out, but never wait
    // forever on a client that stopped reading: that would hold up shutdown.
    let writer_abort = writer_task.abort_handle();
    if tokio::time::timeout(WRITER_DRAIN, writer_task).await.is_err() {
        writer_abort.abort();
    }
}

/// A key goes into an HTTP header: it must be non-empty, bounded and header-safe. The
/// message never quotes the key.
fn check_key_shape(key: &str) -> Result<(), String> {
    const MAX_KEY_BYTES: usize = 16 * 1024;
    if key.trim().is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("the key is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err("the key contains control or non-ASCII characters".into());
    }
    Ok(())
}

fn forbidden(id: Option<u64>, uid: u32, what: &str) -> BrokerReply {
    BrokerReply::Error { id, code: ErrorCode::Forbidden, message: format!("uid {uid} may not use {what}") }
}

struct Conn {
    shared: Arc<Shared>,
    peer_uid: u32,
    tx: mpsc::Sender<BrokerReply>,
    in_flight: InFlight,
    cancel: CancellationToken,
}

impl Conn {
    fn admits(&self, op: BrokerOperation) -> bool {
        self.shared.access.admits(op, self.peer_uid, self.shared.own_uid)
    }

    async fn reply(&self, reply: BrokerReply) {
        let _ = self.tx.send(reply).await;
    }

    async fn error(&self, id: u64, code: ErrorCode, message: impl Into<String>) {
        self.reply(BrokerReply::Error { id: Some(id), code, message: message.into() }).await;
    }

    async fn dispatch(&self, request: BrokerRequest) {
        let id = request.id();
        match request {
            BrokerRequest::ProviderRequest(req) => self.start_provider_request(req).await,
            BrokerRequest::Cancel { id } => {
                if !self.admits(BrokerOperation::ProviderRequest) {
                    return self.reply(forbidden(Some(id), self.peer_uid, "provider requests")).await;
                }
                if let Some(token) = self.in_flight.lock().expect("in-flight lock").get(&id) {
                    token.cancel();
                }
            }
            BrokerRequest::CredentialStatus { .. } => {
                if !self.admits(BrokerOperation::CredentialStatus) {
                    return self.reply(forbidden(Some(id), self.peer_uid, "credential status")).await;
                }
                let mut providers = Vec::new();
                for p in self.shared.egress.catalogue().iter() {
                    let keyless = !p.needs_credential();
                    let source = if keyless { None } else { self.shared.resolver.source(p).await };
                    providers.push(CredentialEntry { provider: p.id.clone(), source, keyless });
                }
                self.reply(BrokerReply::CredentialStatus { id, providers }).await;
            }
            BrokerRequest::SetKey { provider, key, .. } => self.set_key(id, &provider, Some(key)).await,
            BrokerRequest::ClearKey { provider, .. } => self.set_key(id, &provider, None).await,
        }
    }

    async fn start_provider_request(&self, req: ProviderRequest) {
        let id = req.id;
        if !self.admits(BrokerOperation::ProviderRequest) {
            return self.reply(forbidden(Some(id), self.peer_uid, "provider requests")).await;
        }
        let admitted = {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            let max = self.shared.limits.max_requests_per_connection;
            if in_flight.contains_key(&id) {
                Err((ErrorCode::DuplicateRequestId, format!("request {id} is already in flight")))
            } else if in_flight.len() >= max {
                Err((ErrorCode::TooManyRequests, format!("more than {max} requests in flight on this connection")))
            } else {
                let token = self.cancel.child_token();
                in_flight.insert(id, token.clone());
                Ok(token)
            }
        };
        let token = match admitted {
            Ok(token) => token,
            Err((code, message)) => return self.error(id, code, message).await,
        };
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shared.egress.run(req, &tx) => {}
                _ = token.cancelled() => {
                    // Dropping the egress future above has aborted the upstream request.
                    let message = "cancelled by the client".to_owned();
                    let _ = tx.try_send(BrokerReply::Error { id: Some(id), code: ErrorCode::Cancelled, message });
                }
            }
            in_flight.lock().expect("in-flight lock").remove(&id);
        });
    }

    async fn set_key(&self, id: u64, provider: &str, key: Option<SecretString>) {
        if !self.admits(BrokerOperation::KeyAdmin) {
            return self.reply(forbidden(Some(id), self.peer_uid, "key administration")).await;
        }
        if let Some(key) = &key
            && let Err(why) = check_key_shape(key.expose_secret())
        {
            return self.error(id, ErrorCode::MalformedRequest, why).await;
        }
        let Some(p) = self.shared.egress.catalogue().get(provider) else {
            return self.error(id, ErrorCode::UnknownProvider, format!("no provider {provider:?} is configured")).await;
        };
        if !p.needs_credential() {
            return self.error(id, ErrorCode::UnknownProvider, format!("provider {provider} takes no key")).await;
        }
        let keyring = self.shared.resolver.keyring();
        let result = match &key {
            Some(key) => keyring.store(provider, key).await.map(|_| true),
            None => keyring.clear(provider).await,
        };
        self.shared.resolver.invalidate(provider);
        match result {
            Ok(_) => {
                tracing::info!(
                    provider,
                    peer_uid = self.peer_uid,
                    stored = key.is_some(),
                    "key changed in the Secret Service"
                );
                self.reply(BrokerReply::Done { id }).await;
            }
            Err(crate::credentials::KeyringError::Unavailable(why)) => {
                let message = format!(
                    "no Secret Service is reachable ({why}). Without a desktop keyring, give the broker its key as a \
                     systemd credential (LoadCredentialEncrypted={provider}-api-key:… in its unit, read from \
                     $CREDENTIALS_DIRECTORY/{provider}-api-key) or in its environment{}",
                    match p.env_vars.as_slice() {
                        [] => String::new(),
                        vars => format!(" ({})", vars.join(" / ")),
                    }
                );
                self.error(id, ErrorCode::KeyringUnavailable, message).await;
            }
            Err(e) => self.error(id, ErrorCode::KeyringUnavailable, e.to_string()).await,
        }
    }
}
