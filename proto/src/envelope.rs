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

use std::borrow::Cow;

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

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
    let scan = scan(text.as_bytes(), MAX_NESTING_DEPTH);
    if scan.too_deep {
        return Err(bare(ParseErrorName::NestingTooDeep));
    }
    // Raw values are checked for syntax but not for range; a number beyond f64 is a syntax
    // error in the original (and in a full parse), so frames that may hold one get the full parse.
    if scan.may_overflow_f64 {
        serde_json::from_str::<Value>(text).map_err(|_| bare(ParseErrorName::SyntaxError))?;
    }
    // The top level is read as raw fields (names borrowed, values unparsed): a frame is
    // parsed on every request of every client, and only the fields below are ever looked at.
    let raw: &RawValue = serde_json::from_str(text).map_err(|_| bare(ParseErrorName::SyntaxError))?;
    if !raw.get().starts_with('{') {
        return Err(bare(ParseErrorName::InvalidEnvelope));
    }
    let obj: TopLevel = serde_json::from_str(raw.get()).map_err(|_| bare(ParseErrorName::SyntaxError))?;
    let context = FrameError {
        name: ParseErrorName::InvalidEnvelope,
        id: obj.string("id").ok().flatten(),
        channel: match obj.string("channel") {
            Ok(Some(c)) if c == "control" => Some(Channel::Control),
            Ok(Some(c)) if c == "acheron" => Some(Channel::Acheron),
            _ => None,
        },
        tag: obj.unsigned("tag").ok().flatten().and_then(|t| u32::try_from(t).ok()),
    };
    let fail = |name| FrameError { name, ..context.clone() };

    let type_name = match obj.get("type") {
        None => return Err(fail(ParseErrorName::MissingField)),
        Some(_) => obj.string("type").map_err(fail)?.unwrap_or_default(),
    };
    let channel = match obj.string("channel").map_err(fail)? {
        None => return Err(fail(ParseErrorName::MissingField)),
        Some(c) if c == "control" => Channel::Control,
        Some(c) if c == "acheron" => Channel::Acheron,
        Some(_) => return Err(fail(ParseErrorName::InvalidType)),
    };
    let id = obj.string("id").map_err(fail)?;
    let correlation_id = obj.string("correlation_id").map_err(fail)?;
    let session_key = obj.string("session_key").map_err(fail)?;

    let known = match channel {
        Channel::Control => type_name.strip_prefix("control.").filter(|n| names::is_control_name(n)),
        Channel::Acheron => type_name.strip_prefix("acheron.").filter(|n| names::is_acheron_name(n)),
    };
    let Some(op) = known.map(str::to_owned) else {
        return Err(fail(ParseErrorName::UnsupportedType));
    };

    let acheron =
        if channel == Channel::Acheron { acheron_fields(&obj).map_err(fail)? } else { AcheronFields::default() };
    let payload = match obj.get("payload") {
        None => None,
        Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|_| fail(ParseErrorName::SyntaxError))?),
    };
    Ok(Envelope { channel, op, id, correlation_id, session_key, payload, acheron })
}

/// A frame's top-level members, values still raw JSON. As with a JSON object read into a
/// map, a name given twice means its last value.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(TopLevel(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

impl TopLevel<'_> {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().rev().find(|(name, _)| name == key).map(|(_, value)| *value)
    }

    /// A member that must be a string when present.
    fn string(&self, key: &str) -> Result<Option<String>, ParseErrorName> {
        self.get(key).map(|raw| serde_json::from_str(raw.get()).map_err(|_| ParseErrorName::InvalidType)).transpose()
    }

    /// A member that must be an integer in `0..=u64::MAX` when present (a negative number,
    /// a fraction or an exponent is the wrong type, as in the original).
    fn unsigned(&self, key: &str) -> Result<Option<u64>, ParseErrorName> {
        self.get(key).map(|raw| serde_json::from_str(raw.get()).map_err(|_| ParseErrorName::InvalidType)).transpose()
    }
}

fn acheron_fields(obj: &TopLevel) -> Result<AcheronFields, ParseErrorName> {
    let u32_field = |key: &str| -> Result<Option<u32>, ParseErrorName> {
        obj.unsigned(key)?.map(|n| u32::try_from(n).map_err(|_| ParseErrorName::InvalidType)).transpose()
    };
    let path = obj
        .get("path")
        .map(|raw| serde_json::from_str::<Vec<String>>(raw.get()).map_err(|_| ParseErrorName::InvalidType))
        .transpose()?;
    let data = match (obj.get("data_b64"), obj.get("data")) {
        (Some(_), _) => {
            let b64 = obj.string("data_b64")?.unwrap_or_default();
            Some(base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| ParseErrorName::InvalidBase64)?)
        }
        (None, Some(_)) => obj.string("data")?.map(String::into_bytes),
        (None, None) => None,
    };
    Ok(AcheronFields {
        tag: u32_field("tag")?,
        fid: u32_field("fid")?,
        newfid: u32_field("newfid")?,
        node: obj.unsigned("node")?,
        h: obj.unsigned("h")?,
        offset: obj.unsigned("offset")?,
        count: u32_field("count")?,
        msize: u32_field("msize")?,
        mode: obj.string("mode")?,
        version: obj.string("version")?,
        path,
        data,
    })
}

/// What one byte scan over a frame finds before any parsing.
struct Scan {
    /// Arrays/objects nest deeper than the limit.
    too_deep: bool,
    /// A number has an exponent or more than 300 digits: the only ways to exceed f64.
    may_overflow_f64: bool,
}

/// A byte scan that skips string contents; it runs before the parser so a 10,000-deep frame
/// costs nothing but this loop.
fn scan(bytes: &[u8], max: usize) -> Scan {
    let mut found = Scan { too_deep: false, may_overflow_f64: false };
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut digits = 0usize;
    let mut previous = 0u8;
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
                    found.too_deep = true;
                    return found;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            // `true` and `false` end in `e` too, but after a letter, never after a digit.
            b'e' | b'E' if previous.is_ascii_digit() => found.may_overflow_f64 = true,
            _ => {}
        }
        digits = if b.is_ascii_digit() { digits + 1 } else { 0 };
        if digits > 300 {
            found.may_overflow_f64 = true;
        }
        previous = b;
    }
    found
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

    #[test]
    fn raw_top_level_reads_like_a_full_parse() {
        // Last duplicate wins, escaped names count, whitespace around the object is fine.
        let env = parse(
            " {\"channel\":\"acheron\",\"type\":\"acheron.t_read\",\"tag\":1,\"tag\":7,\"f\\u0069d\":3,\"count\":10} ",
        )
        .unwrap();
        assert_eq!((env.acheron.tag, env.acheron.fid, env.acheron.count), (Some(7), Some(3), Some(10)));
        // Numbers beyond f64 are syntax errors wherever they are, as in a full parse; an
        // exponent that fits is only the wrong type for an integer field.
        for text in [
            r#"{"channel":"control","type":"control.ping","payload":{"x":[1e400]}}"#,
            &format!(r#"{{"channel":"control","type":"control.ping","big":{}}}"#, "9".repeat(400)),
        ] {
            assert_eq!(err(text).name, ParseErrorName::SyntaxError, "{text}");
        }
        let small = err(r#"{"channel":"acheron","type":"acheron.t_read","tag":1,"fid":1e3}"#);
        assert_eq!((small.name, small.tag), (ParseErrorName::InvalidType, Some(1)));
        // `true`/`false` are not exponents; a payload keeps its order and values.
        let env =
            parse(r#"{"channel":"control","type":"control.ping","payload":{"b":true,"a":false,"n":-1.5e2}}"#).unwrap();
        assert_eq!(env.payload.unwrap().to_string(), r#"{"b":true,"a":false,"n":-150.0}"#);
        for bad in [r#"[1,2]"#, r#""text""#, "null"] {
            assert_eq!(err(bad).name, ParseErrorName::InvalidEnvelope, "{bad}");
        }
        assert_eq!(err(r#"{"channel":"control",}"#).name, ParseErrorName::SyntaxError);
    }
}
