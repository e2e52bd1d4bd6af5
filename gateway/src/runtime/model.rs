//! One model call: build the request, send it through the broker, parse the stream, retry
//! what can be retried.
//!
//! Why it exists: the turn loop wants "the next assistant message" and a typed failure;
//! everything about wire formats is in `providers/`, everything about keys and upstream
//! URLs in the broker. This module joins the two and applies the retry policy
//! (`providers::retry`): 429/5xx/connection failures are retried with backoff (honouring
//! `Retry-After`) until the first visible byte; after that a failure ends the call, since
//! the client has already seen part of the reply.
//!
//! What it must never do: add a header that carries a credential (the broker refuses it
//! anyway), or keep reading after its caller gave up — dropping the future drops the
//! broker response, which cancels the upstream request.

use bytes::Bytes;
use serde_json::json;
use spiderweb_client::shared::{Outgoing, ProviderError as BrokerFailure};
use spiderweb_proto::broker::{CREDENTIAL_SOURCE_HEADER, ErrorCode};

use super::Runtime;
use super::job::Job;
use crate::providers::plugin::{self, PluginError, PluginReply};
use crate::providers::retry::{GiveUpReason, RetryDecision, RetryPolicy, jitter_sample};
use crate::providers::{ChatRequest, ErrorKind, ProviderError, ProviderKind, StopReason, StreamEvent, ToolCall, Usage};

/// The assistant's reply to one call.
#[derive(Debug, Default)]
pub struct Reply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub stop: Option<StopReason>,
}

/// A failed call, with the job error code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub code: &'static str,
    pub message: String,
    /// The provider said the prompt is too long: compact and try again.
    pub context_too_long: bool,
}

/// Whether text deltas go to the job's event stream (not for summaries and explanations,
/// whose text is reported differently).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    ToClient,
    Quiet,
}

/// Sends `chat` and collects the reply, streaming text deltas to `job` as they arrive.
pub async fn call(runtime: &Runtime, job: &Job, chat: &ChatRequest, streaming: Streaming) -> Result<Reply, CallError> {
    let settings = &runtime.settings;
    let request = if settings.provider.kind() == ProviderKind::Plugin {
        plugin::request(chat)
    } else {
        settings.provider.build(chat).map_err(|e| CallError {
            code: "provider_request_invalid",
            message: format!("cannot build the request for {}: {e}", settings.broker_provider),
            context_too_long: false,
        })?
    };
    let body = Bytes::from(request.body);
    let policy = RetryPolicy::default();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outgoing = Outgoing {
            provider: settings.broker_provider.clone(),
            method: request.method.to_owned(),
            path: request.path.clone(),
            headers: request.headers.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            body: body.clone(),
        };
        let mut reply = Reply::default();
        let (error, started) = match attempt_once(runtime, job, outgoing, &mut reply, streaming).await {
            Ok(()) => return Ok(reply),
            Err(failure) => failure,
        };
        match policy.decide(attempt, &error, started, jitter_sample()) {
            RetryDecision::RetryAfter(wait) => {
                job.log(&format!(
                    "[runtime retry] attempt={attempt} reason={} wait_ms={}",
                    error_code(error.kind),
                    wait.as_millis()
                ));
                job.emit(
                    json!({"type": "retry", "attempt": attempt, "reason": error.to_string(), "wait_ms": wait.as_millis() as u64}),
                    false,
                    crate::plane::now_ms(),
                );
                tokio::time::sleep(wait).await;
            }
            RetryDecision::GiveUp(why) => return Err(give_up(runtime, error, why, attempt)),
        }
    }
}

/// One attempt. On failure, returns the error and whether visible output had started.
async fn attempt_once(
    runtime: &Runtime,
    job: &Job,
    outgoing: Outgoing,
    reply: &mut Reply,
    streaming: Streaming,
) -> Result<(), (ProviderError, bool)> {
    let broker =
        runtime.broker().await.map_err(|message| (ProviderError::new(ErrorKind::Connection, message), false))?;
    let mut response = broker.provider_request(outgoing).await.map_err(|e| (from_broker(e), false))?;
    if runtime.settings.provider.kind() == ProviderKind::Plugin {
        // A plugin answers once, whole: nothing is streamed, so every failure is "not started".
        let mut collected = PluginReply::new(runtime.settings.broker_provider.clone());
        while let Some(chunk) = response.chunk().await.map_err(|e| (from_broker(e), false))? {
            collected.feed(&chunk).map_err(|e| (plugin_error(e), false))?;
        }
        let events = collected.finish().map_err(|e| (plugin_error(e), false))?;
        absorb(job, reply, events, streaming);
        return Ok(());
    }
    let refused_source = response
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(CREDENTIAL_SOURCE_HEADER))
        .map(|(_, source)| source.clone());
    let mut parser = runtime.settings.provider.parser();
    if let Err(e) = parser.head(response.status, &response.headers) {
        return Err((name_source(e, refused_source), false));
    }
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err((from_broker(e), parser.stream_started())),
        };
        let events = parser.feed(&chunk).map_err(|e| (e, parser.stream_started()))?;
        absorb(job, reply, events, streaming);
    }
    let started = parser.stream_started();
    let events = parser.finish().map_err(|e| (name_source(e, refused_source), started))?;
    absorb(job, reply, events, streaming);
    Ok(())
}

fn absorb(job: &Job, reply: &mut Reply, events: Vec<StreamEvent>, streaming: Streaming) {
    for event in events {
        match event {
            StreamEvent::TextDelta(text) => {
                if streaming == Streaming::ToClient {
                    job.emit_text(&text, crate::plane::now_ms());
                }
                reply.text.push_str(&text);
            }
            StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallArgsDelta { .. } => {}
            StreamEvent::ToolCallEnd(call) => reply.tool_calls.push(call),
            StreamEvent::Usage(usage) => reply.usage = usage,
            StreamEvent::Done { stop_reason } => reply.stop = Some(stop_reason),
        }
    }
}

/// A broker failure in the provider error vocabulary, so one retry policy covers both.
fn from_broker(failure: BrokerFailure) -> ProviderError {
    match failure {
        BrokerFailure::Disconnected => ProviderError::new(ErrorKind::Connection, "the broker connection ended"),
        BrokerFailure::Broker { code, message } => {
            let kind = match code {
                ErrorCode::UpstreamUnreachable | ErrorCode::UpstreamTimeout | ErrorCode::Busy => ErrorKind::Connection,
                ErrorCode::NoCredential | ErrorCode::ReauthRequired => ErrorKind::Auth,
                ErrorCode::RefreshFailed => ErrorKind::Server,
                ErrorCode::UnknownProvider => ErrorKind::NotFound,
                ErrorCode::BodyTooLarge => ErrorKind::BadRequest,
                _ => ErrorKind::BadRequest,
            };
            ProviderError::new(kind, format!("broker: {message}"))
        }
    }
}

/// Adds to a refused credential's error which source the broker took it from.
fn name_source(mut error: ProviderError, source: Option<String>) -> ProviderError {
    if error.kind == ErrorKind::Auth
        && let Some(source) = source
    {
        error.message = match source.as_str() {
            "none" => format!("{} (the broker has no key for this provider)", error.message),
            _ => format!("{} (the broker sent the key from {source})", error.message),
        };
    }
    error
}

fn plugin_error(error: PluginError) -> ProviderError {
    let kind = match error {
        PluginError::OutputTooLarge { .. } => ErrorKind::ResponseTooLarge,
        PluginError::Rpc { .. } => ErrorKind::Server,
        _ => ErrorKind::MalformedStream,
    };
    ProviderError::new(kind, error.to_string())
}

fn give_up(runtime: &Runtime, error: ProviderError, why: GiveUpReason, attempts: u32) -> CallError {
    let settings = &runtime.settings;
    let provider = &settings.broker_provider;
    let mut message = match why {
        GiveUpReason::AttemptsExhausted => format!("{provider}: {error} (gave up after {attempts} attempts)"),
        GiveUpReason::RetryAfterTooLong(wait) => {
            format!("{provider}: {error} (the provider asked to wait {} s)", wait.as_secs())
        }
        GiveUpReason::StreamStarted => format!("{provider}: {error} (the reply broke off after it had started)"),
        GiveUpReason::NotTransient => format!("{provider}: {error}"),
    };
    if error.kind == ErrorKind::Auth {
        message.push_str(&format!(". To give the broker a key: {}", settings.provider.kind().set_key_hint()));
    }
    CallError {
        code: error_code(error.kind),
        message,
        context_too_long: error.kind == ErrorKind::ContextLengthExceeded,
    }
}

/// The job error code of a provider failure.
pub fn error_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => "provider_auth",
        ErrorKind::PermissionDenied => "provider_permission_denied",
        ErrorKind::RateLimited => "provider_rate_limited",
        ErrorKind::QuotaExceeded => "provider_quota_exceeded",
        ErrorKind::Overloaded => "provider_overloaded",
        ErrorKind::Server => "provider_server_error",
        ErrorKind::BadRequest => "provider_bad_request",
        ErrorKind::ContextLengthExceeded => "provider_context_length",
        ErrorKind::NotFound => "provider_not_found",
        ErrorKind::Connection => "provider_unreachable",
        ErrorKind::MalformedStream => "provider_malformed_stream",
        ErrorKind::IncompleteStream => "provider_incomplete_stream",
        ErrorKind::ResponseTooLarge => "provider_response_too_large",
    }
}
