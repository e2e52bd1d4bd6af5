//! The unified-v2 envelope and its strict parse rules (`unified-v2.md` §3.1–3.2).
//!
//! A text frame on `/` is parsed exactly once, here, into an [`Envelope`]. The rules run in
//! the order the spec gives, so the error *name* a client sees for a bad frame is the same as
//! the original server's. A failure carries whatever could still be read (the `id`, the
//! channel, the `tag`) so that the server can answer on the right channel and echo the right
//! id (spec README quirks 4 and 5).
//!
//! Input size is bounded by the transport (max frame size); nesting depth is bounded here,
//! before the JSON parser allocates anything for deep structures.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::names;

/// Frames nested deeper than this are refused before parsing (spec README quirk 15).
pub const MAX_NESTING_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Control,
    Acheron,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Control => "control",
            Channel::Acheron => "acheron",
        }
    }
}

/// The error names a parse failure reports (the original's Zig error names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseErrorName {
    SyntaxError,
    NestingTooDeep,
    InvalidEnvelope,
    MissingField,
    InvalidType,
    UnsupportedType,
    InvalidBase64,
}

impl ParseErrorName {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorName::SyntaxError => "SyntaxError",
            ParseErrorName::NestingTooDeep => "NestingTooDeep",
            ParseErrorName::InvalidEnvelope => "InvalidEnvelope",
            ParseErrorName::MissingField => "MissingField",
            ParseErrorName::InvalidType => "InvalidType",
            ParseErrorName::UnsupportedType => "UnsupportedType",
            ParseErrorName::InvalidBase64 => "InvalidBase64",
        }
    }
}

/// A frame that failed to parse, with what could still be read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub name: ParseErrorName,
    /// The frame's `id`, when it is an object with a string `id`.
    pub id: Option<String>,
    /// The frame's channel, when it names a valid one.
    pub channel: Option<Channel>,
    /// The frame's `tag`, when it is a valid u32.
    pub tag: Option<u32>,
}

/// The acheron-only top-level fields (§3.1), each already range-checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcheronFields {
    pub tag: Option<u32>,
    pub fid: Option<u32>,
    pub newfid: Option<u32>,
    pub node: Option<u64>,
    pub h: Option<u64>,
    pub offset: Option<u64>,
    pub count: Option<u32>,
    pub msize: Option<u32>,
    pub mode: Option<String>,
    pub version: Option<String>,
    pub path: Option<Vec<String>>,
    /// Decoded `data_b64`, or the bytes of `data` when `data_b64` is absent.
    pub data: Option<Vec<u8>>,
}

/// A parsed frame. `op` is the type name without its channel prefix (`"ping"`, `"t_walk"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub channel: Channel,
    pub op: String,
    pub id: Option<String>,
    pub correlation_id: Option<String>,
    pub session_key: Option<String>,
    pub payload: Option<Value>,
    pub acheron: AcheronFields,
}

impl Envelope {
    /// The full type name, e.g. `control.ping`.
    pub fn type_name(&self) -> String {
        format!("{}.{}", self.channel.as_str(), self.op)
    }

    /// Effective correlation (§5): `correlation_id`, else `id`.
    pub fn correlation(&self) -> Option<&str> {
        self.correlation_id.as_deref().or(self.id.as_deref())
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Envelope, FrameError> {
    let bare = |name| FrameError { name, id: None, channel: None, tag: None };
    if nesting_depth_exceeds(text.as_bytes(), MAX_NESTING_DEPTH) {
        return Err(bare(ParseErrorName::NestingTooDeep));
    }
    let value: Value = serde_json::from_str(text).map_err(|_| bare(ParseErrorName::SyntaxError))?;
    let Value::Object(mut obj) = value else {
        return Err(bare(ParseErrorName::InvalidEnvelope));
    };
    let context = FrameError {
        name: ParseErrorName::InvalidEnvelope,
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        channel: match obj.get("channel").and_then(Value::as_str) {
            Some("control") => Some(Channel::Control),
            Some("acheron") => Some(Channel::Acheron),
            _ => None,
        },
        tag: obj.get("tag").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()),
    };
    let fail = |name| FrameError { name, ..context.clone() };

    let type_name = match obj.get("type") {
        None => return Err(fail(ParseErrorName::MissingField)),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(fail(ParseErrorName::InvalidType)),
    };
    let channel = match obj.get("channel") {
        None => return Err(fail(ParseErrorName::MissingField)),
        Some(Value::String(s)) if s == "control" => Channel::Control,
        Some(Value::String(s)) if s == "acheron" => Channel::Acheron,
        Some(_) => return Err(fail(ParseErrorName::InvalidType)),
    };
    let id = optional_string(&obj, "id").map_err(fail)?;
    let correlation_id = optional_string(&obj, "correlation_id").map_err(fail)?;
    let session_key = optional_string(&obj, "session_key").map_err(fail)?;

    let known = match channel {
        Channel::Control => type_name.strip_prefix("control.").filter(|n| names::is_control_name(n)),
        Channel::Acheron => type_name.strip_prefix("acheron.").filter(|n| names::is_acheron_name(n)),
    };
    let Some(op) = known.map(str::to_owned) else {
        return Err(fail(ParseErrorName::UnsupportedType));
    };

    let acheron =
        if channel == Channel::Acheron { acheron_fields(&obj).map_err(fail)? } else { AcheronFields::default() };
    Ok(Envelope { channel, op, id, correlation_id, session_key, payload: obj.remove("payload"), acheron })
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ParseErrorName> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ParseErrorName::InvalidType),
    }
}

fn acheron_fields(obj: &Map<String, Value>) -> Result<AcheronFields, ParseErrorName> {
    let u64_field = |key: &str| -> Result<Option<u64>, ParseErrorName> {
        match obj.get(key) {
            None => Ok(None),
            // as_u64 is None for negatives, fractions and numbers beyond u64 (parsed as f64).
            Some(v) => v.as_u64().map(Some).ok_or(ParseErrorName::InvalidType),
        }
    };
    let u32_field = |key: &str| -> Result<Option<u32>, ParseErrorName> {
        u64_field(key)?.map(|n| u32::try_from(n).map_err(|_| ParseErrorName::InvalidType)).transpose()
    };
    let path = match obj.get("path") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| item.as_str().map(str::to_owned).ok_or(ParseErrorName::InvalidType))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(ParseErrorName::InvalidType),
    };
    let data = match (obj.get("data_b64"), obj.get("data")) {
        (Some(Value::String(b64)), _) => {
            Some(base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| ParseErrorName::InvalidBase64)?)
        }
        (Some(_), _) => return Err(ParseErrorName::InvalidType),
        (None, Some(Value::String(raw))) => Some(raw.as_bytes().to_vec()),
        (None, Some(_)) => return Err(ParseErrorName::InvalidType),
        (None, None) => None,
    };
    Ok(AcheronFields {
        tag: u32_field("tag")?,
        fid: u32_field("fid")?,
        newfid: u32_field("newfid")?,
        node: u64_field("node")?,
        h: u64_field("h")?,
        offset: u64_field("offset")?,
        count: u32_field("count")?,
        msize: u32_field("msize")?,
        mode: optional_string(obj, "mode")?,
        version: optional_string(obj, "version")?,
        path,
        data,
    })
}

/// Whether the JSON text nests arrays/objects deeper than `max`. A byte scan that skips string
/// contents; it runs before the parser so a 10,000-deep frame costs nothing but this loop.
fn nesting_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FrameError {
        parse(text).expect_err(text)
    }

    #[test]
    fn parses_control_frame() {
        let env = parse(r#"{"channel":"control","type":"control.ping","id":"p1","payload":{}}"#).unwrap();
        assert_eq!(env.channel, Channel::Control);
        assert_eq!(env.op, "ping");
        assert_eq!(env.id.as_deref(), Some("p1"));
        assert_eq!(env.correlation(), Some("p1"));
    }

    #[test]
    fn parses_acheron_fields() {
        let env = parse(
            r#"{"channel":"acheron","type":"acheron.t_write","tag":7,"fid":2,"offset":3,"path":["a","b"],"data_b64":"aGk=","data":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(env.acheron.tag, Some(7));
        assert_eq!(env.acheron.fid, Some(2));
        assert_eq!(env.acheron.offset, Some(3));
        assert_eq!(env.acheron.path.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert_eq!(env.acheron.data.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn error_names_follow_spec_order() {
        use ParseErrorName::*;
        let cases: &[(&str, ParseErrorName)] = &[
            ("not json", SyntaxError),
            ("[1,2]", InvalidEnvelope),
            (r#"{"channel":"control"}"#, MissingField),
            (r#"{"type":5,"channel":"control"}"#, InvalidType),
            (r#"{"type":"control.ping"}"#, MissingField),
            (r#"{"type":"control.ping","channel":"other"}"#, InvalidType),
            (r#"{"type":"control.ping","channel":"control","id":1}"#, InvalidType),
            (r#"{"type":"control.ping","channel":"control","session_key":[]}"#, InvalidType),
            (r#"{"type":"acheron.t_walk","channel":"control"}"#, UnsupportedType),
            (r#"{"type":"session.send","channel":"control"}"#, UnsupportedType),
            (r#"{"type":"acheron.t_bogus","channel":"acheron"}"#, UnsupportedType),
            (r#"{"type":"acheron.t_walk","channel":"acheron","fid":-1}"#, InvalidType),
            (r#"{"type":"acheron.t_walk","channel":"acheron","fid":4294967296}"#, InvalidType),
            // serde_json refuses numbers beyond f64 range outright.
            (r#"{"type":"acheron.t_walk","channel":"acheron","fid":1e400}"#, SyntaxError),
            (r#"{"type":"acheron.t_walk","channel":"acheron","tag":99999999999999999999}"#, InvalidType),
            (r#"{"type":"acheron.t_walk","channel":"acheron","fid":1.5}"#, InvalidType),
            (r#"{"type":"acheron.t_walk","channel":"acheron","path":[1]}"#, InvalidType),
            (r#"{"type":"acheron.t_write","channel":"acheron","data_b64":"!!"}"#, InvalidBase64),
        ];
        for (text, name) in cases {
            assert_eq!(err(text).name, *name, "{text}");
        }
    }

    #[test]
    fn error_keeps_id_channel_and_tag() {
        let e = err(r#"{"channel":"acheron","type":"acheron.t_bogus","tag":9,"id":"x"}"#);
        assert_eq!(e.channel, Some(Channel::Acheron));
        assert_eq!(e.tag, Some(9));
        assert_eq!(e.id.as_deref(), Some("x"));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(err(&deep).name, ParseErrorName::NestingTooDeep);
        let ok =
            format!(r#"{{"channel":"control","type":"control.ping","payload":{}1{}}}"#, "[".repeat(60), "]".repeat(60));
        assert!(parse(&ok).is_ok());
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"channel":"control","type":"control.ping","id":"{}"}}"#, "[".repeat(100));
        assert!(parse(&quoted).is_ok());
    }
}
