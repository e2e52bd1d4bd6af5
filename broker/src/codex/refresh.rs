//! One exchange with the OAuth token endpoint: refresh token in, new tokens out.
//!
//! Refresh tokens rotate and are single-use, so the caller ([`super::CodexAuth`]) makes sure
//! only one exchange runs at a time. This module only speaks HTTP and sorts failures into
//! permanent ones (the login is gone: `refresh_token_expired`, `_reused`, `_invalidated`)
//! and retryable ones (network, 5xx, 429, anything unrecognised).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::auth_file::TokenUpdate;

/// Error codes after which retrying cannot help.
const PERMANENT_CODES: &[&str] = &[
    "refresh_token_expired",
    "refresh_token_reused",
    "refresh_token_invalidated",
];

/// How one refresh attempt failed.
#[derive(Debug)]
pub enum RefreshFailure {
    /// The login is no longer valid; the operator must log in again. Holds the server's code.
    Permanent(String),
    /// Anything else; worth retrying. Holds a description without token material.
    Retryable(String),
}

/// Posts the refresh grant to `token_url`.
pub async fn exchange(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    refresh_token: &SecretString,
    timeout: Duration,
) -> Result<TokenUpdate, RefreshFailure> {
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({
            "client_id": client_id,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
            "scope": "openid profile email",
        }))
        .expect("JSON object serialises"),
    );
    let response = http
        .post(token_url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            RefreshFailure::Retryable(format!(
                "token endpoint unreachable: {}",
                crate::egress::describe(&e)
            ))
        })?;
    let status = response.status();
    let bytes = zeroize::Zeroizing::new(
        response
            .bytes()
            .await
            .map_err(|e| {
                RefreshFailure::Retryable(format!(
                    "token endpoint reply cut: {}",
                    crate::egress::describe(&e)
                ))
            })?
            .to_vec(),
    );
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        if let Some(code) = json.as_ref().and_then(error_code)
            && PERMANENT_CODES.contains(&code.as_str())
        {
            return Err(RefreshFailure::Permanent(code));
        }
        return Err(RefreshFailure::Retryable(format!(
            "token endpoint answered HTTP {}",
            status.as_u16()
        )));
    }
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(|s| SecretString::from(s.to_owned()))
    };
    let access_token = field("access_token").ok_or_else(|| {
        RefreshFailure::Retryable("token endpoint reply has no access_token".into())
    })?;
    Ok(TokenUpdate {
        id_token: field("id_token"),
        access_token,
        refresh_token: field("refresh_token"),
    })
}

/// The error code in the shapes OAuth servers use: `{"error":"code"}`,
/// `{"error":{"code":"code"}}` or `{"code":"code"}`.
fn error_code(body: &Value) -> Option<String> {
    let error = body.get("error");
    error
        .and_then(Value::as_str)
        .or_else(|| error.and_then(|e| e.get("code")).and_then(Value::as_str))
        .or_else(|| body.get("code").and_then(Value::as_str))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_found_in_all_shapes() {
        for body in [
            r#"{"error":"refresh_token_reused"}"#,
            r#"{"error":{"code":"refresh_token_reused","message":"m"}}"#,
            r#"{"code":"refresh_token_reused"}"#,
        ] {
            assert_eq!(
                error_code(&serde_json::from_str(body).unwrap()).as_deref(),
                Some("refresh_token_reused")
            );
        }
    }
}
