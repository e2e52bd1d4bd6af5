//! Typed provider failures: HTTP error replies, in-stream error events, broken streams.
//!
//! Why it exists: the turn loop decides on retries (`retry.rs`) and on the message the user
//! sees from the kind alone, whatever the provider. It must never carry request headers or
//! credentials: messages come only from the provider's error body (cut to
//! [`MAX_MESSAGE_CHARS`]) or from our own parser.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest provider-supplied message kept in an error.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// What went wrong, as far as the caller's decisions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401: the credential is missing, wrong or expired.
    Auth,
    /// 403: the credential is valid but may not use this model or endpoint.
    PermissionDenied,
    /// 429 (or a rate-limit error event): retry after a while.
    RateLimited,
    /// The account is out of credit or quota: retrying will not help.
    QuotaExceeded,
    /// The provider is overloaded (Anthropic 529, Gemini/others 503).
    Overloaded,
    /// 5xx or a provider-side failure event.
    Server,
    /// 400/413/422: the request was rejected.
    BadRequest,
    /// The prompt does not fit the model's context window: compact and resend.
    ContextLengthExceeded,
    /// 404: unknown model, deployment or path.
    NotFound,
    /// The connection failed or dropped (reported by the transport, not the parser).
    Connection,
    /// The stream is not what the provider documents (bad JSON, unknown framing).
    MalformedStream,
    /// The stream ended before the provider's terminal event.
    IncompleteStream,
    /// The reply grew past the parser's size bounds.
    ResponseTooLarge,
}

impl ErrorKind {
    /// The failures worth another attempt (if nothing was streamed yet, see `retry.rs`).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::RateLimited | Self::Overloaded | Self::Server | Self::Connection)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Auth => "authentication failed",
            Self::PermissionDenied => "permission denied",
            Self::RateLimited => "rate limited",
            Self::QuotaExceeded => "quota exceeded",
            Self::Overloaded => "provider overloaded",
            Self::Server => "provider server error",
            Self::BadRequest => "request rejected",
            Self::ContextLengthExceeded => "context length exceeded",
            Self::NotFound => "not found",
            Self::Connection => "connection failed",
            Self::MalformedStream => "malformed stream",
            Self::IncompleteStream => "stream ended early",
            Self::ResponseTooLarge => "response too large",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// One provider failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// HTTP status for error replies; `None` for in-stream failures.
    pub status: Option<u16>,
    /// The provider's own message (bounded), or the parser's explanation.
    pub message: String,
    /// When the provider said to come back (`Retry-After`, `retry-after-ms`, Gemini's
    /// `RetryInfo`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, status: None, message: bounded(message.into()), retry_after: None }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::MalformedStream, message)
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

/// Cuts a provider message to [`MAX_MESSAGE_CHARS`] on a character boundary.
pub(crate) fn bounded(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// The first 200 bytes of `text` (on a char boundary), to quote bad input in errors.
pub(crate) fn snippet(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The kind an HTTP status implies when the body says nothing more specific.
/// An error reply that is not JSON (a proxy's HTML page, plain text).
pub(crate) fn plain_error(status: u16, body: &[u8]) -> ProviderError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() { format!("HTTP {status} with an empty body") } else { bounded(text.to_owned()) };
    ProviderError::new(kind_from_status(status), message).with_status(status)
}

/// A non-2xx reply's body as a typed error: the provider's JSON error object, read by
/// `from_json`, when the body is JSON; else the body as text.
pub(crate) fn json_or_plain_error(
    status: u16,
    body: &[u8],
    from_json: fn(Option<u16>, &serde_json::Value) -> ProviderError,
) -> ProviderError {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => from_json(Some(status), &value),
        Err(_) => plain_error(status, body),
    }
}

pub(crate) fn kind_from_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Auth,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Connection,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    }
}

/// Whether a provider message reports an over-long prompt. Providers signal this with a
/// 400 and differing wording: OpenAI `context_length_exceeded`, Anthropic "prompt is too
/// long", Gemini "exceeds the maximum number of tokens".
pub(crate) fn mentions_context_overflow(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "prompt is too long",
        "maximum context length",
        "exceeds the maximum number of tokens",
        "input token count",
        "too many tokens",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Reads the provider's "come back later" hint from response headers: OpenAI's
/// `retry-after-ms` (milliseconds) wins over the standard `retry-after` (seconds or an
/// HTTP date, RFC 9110 §10.2.3), because it is more precise.
pub fn retry_after_from_headers<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)], now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers.iter().find(|(key, _)| key.as_ref().eq_ignore_ascii_case(name)).map(|(_, value)| value.as_ref().trim())
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    parse_retry_after(header("retry-after")?, now)
}

/// Parses one `Retry-After` value: delay seconds, or an HTTP date (a date in the past
/// means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(u32::MAX as f64)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_dates_and_milliseconds() {
        let now = httpdate::parse_http_date("Sat, 21 Nov 2026 21:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("20", now), Some(Duration::from_secs(20)));
        assert_eq!(parse_retry_after("Sat, 21 Nov 2026 21:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Sat, 21 Nov 2026 20:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        let headers = [("Retry-After", "20"), ("retry-after-ms", "1500")];
        assert_eq!(retry_after_from_headers(&headers, now), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn long_provider_messages_are_cut_on_a_char_boundary() {
        let message = bounded("é".repeat(MAX_MESSAGE_CHARS + 10));
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.ends_with('…'));
    }
}
