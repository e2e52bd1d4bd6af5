//! Provider egress: one provider request, from checks to the last body chunk.
//!
//! Steps, in this order: method, URL confinement, header allowlist and body size are checked
//! before anything else happens (so a bad request costs nothing and needs no credential); then
//! an upstream slot is taken (`limits.max_concurrent_upstream`), the credential resolved and
//! added in the provider's header, and the request sent with reqwest (rustls). The response
//! head is forwarded as soon as it arrives and every body chunk as it arrives: nothing is
//! buffered. Dropping the future (client cancelled or went away) drops the response and so
//! aborts the upstream connection.
//!
//! A Codex OAuth request that gets 401 is retried once after a refresh; a 401 on an API key
//! drops the cached key so the next request looks it up again (the operator may have
//! rotated it).
//!
//! Must never: put a credential in a reply, log line or error (reqwest errors are described
//! without their URL; credentials travel only in headers, never in URLs); follow redirects
//! (a redirect could carry the request, and its credential header, to another host).

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use spiderweb_proto::broker::{BrokerReply, ErrorCode, ProviderRequest};
use tokio::sync::{Semaphore, mpsc};

use crate::config::Limits;
use crate::credentials::{Credential, ResolveError, Resolver};
use crate::plugin;
use crate::providers::{self, ANTHROPIC_VERSION, Catalogue, Provider, ProviderKind};

/// A failed provider request, as it will be reported.
#[derive(Debug)]
pub struct EgressError {
    /// Class of failure.
    pub code: ErrorCode,
    /// Human-readable, without key material.
    pub message: String,
}

fn fail(code: ErrorCode, message: impl Into<String>) -> EgressError {
    EgressError { code, message: message.into() }
}

/// Sends provider requests. Shared by all connections.
pub struct Egress {
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    limits: Limits,
    catalogue: Catalogue,
    resolver: Arc<Resolver>,
}

/// The reqwest client every upstream call uses: rustls, no redirects, bounded connect.
pub fn http_client(limits: &Limits) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.connect_timeout())
        .read_timeout(limits.idle_read_timeout())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("spiderweb-broker/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("reqwest client with rustls builds")
}

impl Egress {
    /// Egress over `http` with the configured providers and limits.
    pub fn new(http: reqwest::Client, limits: Limits, catalogue: Catalogue, resolver: Arc<Resolver>) -> Self {
        Egress { http, slots: Arc::new(Semaphore::new(limits.max_concurrent_upstream)), limits, catalogue, resolver }
    }

    /// The provider catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Runs `req` and sends its replies (head, chunks, end — or one error) to `out`.
    pub async fn run(&self, req: ProviderRequest, out: &mpsc::Sender<BrokerReply>) {
        let id = req.id;
        if let Err(e) = self.stream(req, out).await {
            let _ = out.send(BrokerReply::Error { id: Some(id), code: e.code, message: e.message }).await;
        }
    }

    async fn stream(&self, req: ProviderRequest, out: &mpsc::Sender<BrokerReply>) -> Result<(), EgressError> {
        let provider = self
            .catalogue
            .get(&req.provider)
            .ok_or_else(|| fail(ErrorCode::UnknownProvider, format!("no provider {:?} is configured", req.provider)))?;
        if let Some(spec) = &provider.plugin {
            return self.run_plugin(provider, spec, req, out).await;
        }
        let method = match req.method.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            other => {
                return Err(fail(
                    ErrorCode::MethodNotAllowed,
                    format!("method {:?} is not allowed (GET or POST)", other),
                ));
            }
        };
        let target = |with_api_key| {
            provider.target_url(&req.path, with_api_key).map_err(|e| match e {
                providers::TargetError::Path(_) => fail(ErrorCode::PathNotAllowed, e.to_string()),
                providers::TargetError::Unconfigured(_) => fail(ErrorCode::UnknownProvider, e.to_string()),
            })
        };
        // Checked before anything else; the final base depends on the credential's kind.
        target(false)?;
        let headers = providers::request_headers(&req.headers).map_err(|m| fail(ErrorCode::HeaderNotAllowed, m))?;
        self.check_body_size(&req)?;
        let _slot = self.upstream_slot().await?;

        let mut credential = self.credential(provider).await?;
        let url = target(matches!(credential, Some(Credential::ApiKey { .. })))?;
        let mut retried_after_401 = false;
        let response = loop {
            let mut request_headers = headers.clone();
            if let Some(c) = &credential {
                authenticate(provider.kind, c, &mut request_headers)?;
            }
            let send =
                self.http.request(method.clone(), url.clone()).headers(request_headers).body(req.body.0.clone()).send();
            let response = tokio::time::timeout(self.limits.response_timeout(), send)
                .await
                .map_err(|_| fail(ErrorCode::UpstreamTimeout, format!("{} did not answer in time", provider.id)))?
                .map_err(|e| upstream_error(provider, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                break response;
            }
            match &credential {
                Some(Credential::CodexOauth { access_token, .. }) if !retried_after_401 => {
                    tracing::info!(provider = %provider.id, "upstream refused the Codex token; refreshing once");
                    let fresh =
                        self.resolver.codex().refresh_after_unauthorized(access_token).await.map_err(codex_error)?;
                    credential = Some(fresh);
                    retried_after_401 = true;
                }
                Some(c) => {
                    tracing::warn!(provider = %provider.id, source = %c.source(), "upstream answered 401 to the credential");
                    self.resolver.invalidate(&provider.id);
                    break response;
                }
                None => break response,
            }
        };

        let id = req.id;
        let mut forwarded: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| providers::forward_response_header(name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        if response.status() == StatusCode::UNAUTHORIZED {
            let source = credential.as_ref().map_or_else(|| "none".to_owned(), |c| c.source().to_string());
            forwarded.push((spiderweb_proto::broker::CREDENTIAL_SOURCE_HEADER.to_owned(), source));
        }
        let head = BrokerReply::ResponseHead { id, status: response.status().as_u16(), headers: forwarded };
        if out.send(head).await.is_err() {
            return Ok(());
        }
        let mut response = response;
        loop {
            // The client's `read_timeout` is the idle limit: it re-arms one timer per read,
            // where a `timeout` around each chunk would add and remove a timer per chunk.
            let chunk = response.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    fail(ErrorCode::UpstreamTimeout, format!("{} stopped sending mid-body", provider.id))
                } else {
                    upstream_error(provider, &e)
                }
            })?;
            let Some(data) = chunk else {
                let _ = out.send(BrokerReply::End { id }).await;
                return Ok(());
            };
            if !self.send_body(id, data, out).await {
                return Ok(());
            }
        }
    }

    /// A plugin provider: the same checks as an HTTP request where they apply, then one run
    /// of the configured binary (see [`crate::plugin`]) in an upstream slot.
    async fn run_plugin(
        &self,
        provider: &Provider,
        spec: &plugin::PluginSpec,
        req: ProviderRequest,
        out: &mpsc::Sender<BrokerReply>,
    ) -> Result<(), EgressError> {
        if req.method != "POST" {
            return Err(fail(ErrorCode::MethodNotAllowed, format!("plugin provider {} takes POST only", provider.id)));
        }
        if req.path != "/" {
            return Err(fail(
                ErrorCode::PathNotAllowed,
                format!("plugin provider {} has only the path \"/\"", provider.id),
            ));
        }
        // Nothing reaches a plugin but its stdin; refusing credential headers still tells a
        // confused client that it may not choose the key.
        providers::request_headers(&req.headers).map_err(|m| fail(ErrorCode::HeaderNotAllowed, m))?;
        self.check_body_size(&req)?;
        if req.body.0.is_empty() || req.body.0.contains(&b'\n') {
            return Err(fail(
                ErrorCode::MalformedRequest,
                "a plugin request body is one JSON-RPC request line, without a newline",
            ));
        }
        let _slot = self.upstream_slot().await?;
        let credential = self.credential(provider).await?;
        let key = match &credential {
            Some(Credential::ApiKey { key, .. }) => Some(key.as_ref()),
            Some(Credential::CodexOauth { .. }) | None => None,
        };
        let stdout = plugin::run(spec, &req.body.0, key).await.map_err(|e| {
            let code = match &e {
                plugin::PluginError::Spawn { .. } => ErrorCode::UpstreamUnreachable,
                plugin::PluginError::Timeout { .. } => ErrorCode::UpstreamTimeout,
                _ => ErrorCode::PluginFailed,
            };
            tracing::warn!(provider = %provider.id, "{e}");
            fail(code, format!("{}: {e}", provider.id))
        })?;
        let id = req.id;
        let head = BrokerReply::ResponseHead {
            id,
            status: 200,
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
        };
        if out.send(head).await.is_ok() && self.send_body(id, stdout.into(), out).await {
            let _ = out.send(BrokerReply::End { id }).await;
        }
        Ok(())
    }

    fn check_body_size(&self, req: &ProviderRequest) -> Result<(), EgressError> {
        if req.body.0.len() > self.limits.max_request_body_bytes {
            return Err(fail(
                ErrorCode::BodyTooLarge,
                format!(
                    "body of {} bytes exceeds limits.max_request_body_bytes ({})",
                    req.body.0.len(),
                    self.limits.max_request_body_bytes
                ),
            ));
        }
        Ok(())
    }

    /// One of `limits.max_concurrent_upstream` slots (HTTP requests and plugin processes).
    async fn upstream_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, EgressError> {
        Ok(tokio::time::timeout(self.limits.queue_timeout(), self.slots.acquire())
            .await
            .map_err(|_| fail(ErrorCode::Busy, "all upstream slots stayed busy; retry later"))?
            .expect("the semaphore is never closed"))
    }

    /// Sends `data` as body chunks that each fit in a frame; false when the client is gone.
    async fn send_body(&self, id: u64, mut data: bytes::Bytes, out: &mpsc::Sender<BrokerReply>) -> bool {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(self.max_chunk_bytes()));
            if out.send(BrokerReply::BodyChunk { id, data: piece.into() }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The largest body piece one frame carries: hyper's reads are usually far smaller, but a
    /// chunk must never make a frame exceed `limits.max_frame_bytes` (the writer would have
    /// to drop the connection). A raw chunk frame is the bytes plus an 8-byte request id.
    fn max_chunk_bytes(&self) -> usize {
        (self.limits.max_frame_bytes - 8).min(64 * 1024)
    }

    async fn credential(&self, provider: &Provider) -> Result<Option<Credential>, EgressError> {
        if !provider.needs_credential() {
            return Ok(None);
        }
        match self.resolver.resolve(provider).await {
            Ok(c) => Ok(Some(c)),
            Err(ResolveError::Codex(e)) => Err(codex_error(e)),
            Err(e @ ResolveError::Missing { .. }) => Err(fail(ErrorCode::NoCredential, e.to_string())),
        }
    }
}

fn codex_error(e: crate::codex::CodexError) -> EgressError {
    use crate::codex::CodexError;
    let code = match &e {
        CodexError::Reauth { .. } => ErrorCode::ReauthRequired,
        CodexError::RefreshFailed(_) => ErrorCode::RefreshFailed,
        CodexError::File(_) => ErrorCode::NoCredential,
    };
    fail(code, e.to_string())
}

/// Adds the credential in the header `kind` documents.
fn authenticate(kind: ProviderKind, credential: &Credential, headers: &mut HeaderMap) -> Result<(), EgressError> {
    let secret_header = |value: &str| {
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            fail(ErrorCode::NoCredential, "the stored credential contains characters not allowed in a header")
        })?;
        v.set_sensitive(true);
        Ok::<_, EgressError>(v)
    };
    match credential {
        Credential::CodexOauth { access_token, account_id } => {
            headers.insert("authorization", secret_header(&format!("Bearer {}", access_token.expose_secret()))?);
            if let Some(account) = account_id {
                let v = HeaderValue::from_str(account)
                    .map_err(|_| fail(ErrorCode::NoCredential, "auth.json account_id is not a valid header value"))?;
                headers.insert("chatgpt-account-id", v);
            }
        }
        Credential::ApiKey { key, .. } => {
            let key = key.expose_secret();
            match kind {
                ProviderKind::Openai | ProviderKind::OpenaiCodex => {
                    headers.insert("authorization", secret_header(&format!("Bearer {key}"))?);
                }
                ProviderKind::Anthropic => {
                    headers.insert("x-api-key", secret_header(key)?);
                    headers.entry("anthropic-version").or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
                }
                ProviderKind::Gemini => {
                    headers.insert("x-goog-api-key", secret_header(key)?);
                }
                ProviderKind::AzureOpenai => {
                    headers.insert("api-key", secret_header(key)?);
                }
                // Keyless, or (plugins) given the key in their environment instead.
                ProviderKind::OpenaiCompatible | ProviderKind::Plugin => {}
            }
        }
    }
    Ok(())
}

fn upstream_error(provider: &Provider, e: &reqwest::Error) -> EgressError {
    let code = if e.is_timeout() { ErrorCode::UpstreamTimeout } else { ErrorCode::UpstreamUnreachable };
    fail(code, format!("{}: {}", provider.id, describe(e)))
}

/// A reqwest error as text: its cause chain without the URL.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_body() || e.is_decode() {
        "connection broke mid-body".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
