//! Rendering of server frames (`unified-v2.md` §3.3).
//!
//! Each function returns the whole frame as one `String`: the transport sends it in a single
//! WebSocket message, which the writer flushes with one `write()` (spec README quirk 3).
//! `id` and `tag` appear only when the request carried them.

use serde::Serialize;
use serde_json::Value;

use crate::envelope::Channel;

#[derive(Serialize)]
struct Ok<'a, P: Serialize + ?Sized> {
    channel: &'static str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<u32>,
    ok: bool,
    payload: &'a P,
}

#[derive(Serialize)]
struct Err<'a> {
    channel: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<u32>,
    ok: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    /// Control-plane ops add `correlation_id` (a string or `null`); other errors omit it.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<Option<&'a str>>,
}

fn render<T: Serialize>(frame: &T) -> String {
    // Serializing these plain structs cannot fail: keys are strings and values are JSON.
    serde_json::to_string(frame).unwrap_or_else(|_| unreachable!("frame serialization is infallible"))
}

/// `{"channel":"control","type":<kind>,"id":…,"ok":true,"payload":…}`.
pub fn control_ok<P: Serialize + ?Sized>(kind: &str, id: Option<&str>, payload: &P) -> String {
    render(&Ok { channel: "control", kind, id, tag: None, ok: true, payload })
}

/// A control push frame (no id), e.g. `control.node_service_event`.
pub fn control_push(kind: &str, payload: &Value) -> String {
    control_ok(kind, None, payload)
}

/// Whether a control error carries `error.correlation_id` (control-plane ops do, §3.3).
#[derive(Clone, Copy, Debug)]
pub enum Correlation<'a> {
    Omit,
    Include(Option<&'a str>),
}

/// `{"channel":"control","type":"control.error","id":…,"ok":false,"error":{code,message[,correlation_id]}}`.
pub fn control_error(id: Option<&str>, code: &str, message: &str, correlation: Correlation<'_>) -> String {
    let correlation_id = match correlation {
        Correlation::Omit => None,
        Correlation::Include(c) => Some(c),
    };
    render(&Err {
        channel: "control",
        kind: "control.error",
        id,
        tag: None,
        ok: false,
        error: ErrorBody { code, message, correlation_id },
    })
}

/// `{"channel":"acheron","type":<kind>,"tag":…,"ok":true,"payload":…}`.
pub fn acheron_ok<P: Serialize + ?Sized>(kind: &str, tag: Option<u32>, payload: &P) -> String {
    render(&Ok { channel: "acheron", kind, id: None, tag, ok: true, payload })
}

/// `{"channel":"acheron","type":"acheron.error","tag":…,"ok":false,"error":{code,message}}`.
pub fn acheron_error(tag: Option<u32>, code: &str, message: &str) -> String {
    render(&Err {
        channel: "acheron",
        kind: "acheron.error",
        id: None,
        tag,
        ok: false,
        error: ErrorBody { code, message, correlation_id: None },
    })
}

/// An error on whichever channel the request came in on.
pub fn error_on(channel: Channel, id: Option<&str>, tag: Option<u32>, code: &str, message: &str) -> String {
    match channel {
        Channel::Control => control_error(id, code, message, Correlation::Omit),
        Channel::Acheron => acheron_error(tag, code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_match_spec() {
        assert_eq!(
            control_ok("control.pong", Some("p"), &json!({})),
            r#"{"channel":"control","type":"control.pong","id":"p","ok":true,"payload":{}}"#
        );
        assert_eq!(
            control_error(None, "missing_field", "MissingField", Correlation::Include(None)),
            r#"{"channel":"control","type":"control.error","ok":false,"error":{"code":"missing_field","message":"MissingField","correlation_id":null}}"#
        );
        assert_eq!(
            acheron_error(Some(3), "enoent", "unknown fid"),
            r#"{"channel":"acheron","type":"acheron.error","tag":3,"ok":false,"error":{"code":"enoent","message":"unknown fid"}}"#
        );
    }
}
