//! The node filesystem protocol `unified-v2-fs`, proto 2 (spec `fs-node.md`).
//!
//! Node servers (the standalone `spiderweb-fs-node`, the gateway's `/v2/fs`) and the mount
//! client both speak it, so the message shapes live here once: the hello, the attribute
//! record `A`, the node-id encoding, the errno table and the rendering of replies, errors and
//! invalidation events. Requests are parsed with [`crate::envelope::parse`] (the acheron
//! channel carries `tag`, `node` and `h` at the top level); their arguments stay in the
//! `payload` object and are read with the [`Args`] helpers, which produce the spec's error
//! messages. Nothing here touches a file.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `payload.protocol` of the hello.
pub const PROTOCOL: &str = "unified-v2-fs";
/// `payload.proto` of the hello.
pub const PROTO: u64 = 2;
/// Largest read served and largest write accepted (decoded bytes), advertised in the hello.
pub const MAX_READ: u32 = 1 << 20;
/// See [`MAX_READ`].
pub const MAX_WRITE: u32 = 1 << 20;
/// Largest inbound WebSocket message on a node endpoint.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Default and cap of `readdirp.max`.
pub const READDIR_DEFAULT_MAX: u32 = 128;
/// See [`READDIR_DEFAULT_MAX`].
pub const READDIR_MAX_CAP: u32 = 16384;
/// Default `read.len`.
pub const READ_DEFAULT_LEN: u32 = 65536;

/// The errnos of the spec's table (§5.1), with Linux numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    BadF = 9,
    Again = 11,
    Acces = 13,
    Exist = 17,
    XDev = 18,
    NotDir = 20,
    IsDir = 21,
    Inval = 22,
    NoSpc = 28,
    RoFs = 30,
    Range = 34,
    NoSys = 38,
    NotEmpty = 39,
    NoData = 61,
    TimedOut = 110,
}

impl Errno {
    /// Every errno of the table, in numeric order.
    pub const ALL: [Errno; 18] = [
        Errno::Perm,
        Errno::NoEnt,
        Errno::Io,
        Errno::BadF,
        Errno::Again,
        Errno::Acces,
        Errno::Exist,
        Errno::XDev,
        Errno::NotDir,
        Errno::IsDir,
        Errno::Inval,
        Errno::NoSpc,
        Errno::RoFs,
        Errno::Range,
        Errno::NoSys,
        Errno::NotEmpty,
        Errno::NoData,
        Errno::TimedOut,
    ];

    /// The number that goes on the wire as `error.errno`.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The table's typical message for this errno.
    pub fn message(self) -> &'static str {
        match self {
            Errno::Perm => "operation not permitted",
            Errno::NoEnt => "file not found",
            Errno::Io => "input/output error",
            Errno::BadF => "invalid handle",
            Errno::Again => "would block",
            Errno::Acces => "access denied",
            Errno::Exist => "path exists",
            Errno::XDev => "cross-export rename is not supported",
            Errno::NotDir => "not a directory",
            Errno::IsDir => "is a directory",
            Errno::Inval => "invalid argument",
            Errno::NoSpc => "no space left",
            Errno::RoFs => "read-only filesystem",
            Errno::Range => "range error",
            Errno::NoSys => "operation not supported",
            Errno::NotEmpty => "directory not empty",
            Errno::NoData => "no data",
            Errno::TimedOut => "timeout",
        }
    }

    /// Maps an OS errno into the table; anything outside it becomes EIO.
    pub fn from_os(raw: i32) -> Errno {
        Errno::ALL.into_iter().find(|e| e.code() == raw).unwrap_or(match raw {
            libc_errno::ENAMETOOLONG | libc_errno::ELOOP => Errno::Inval,
            libc_errno::EOPNOTSUPP => Errno::NoSys,
            libc_errno::EDQUOT => Errno::NoSpc,
            libc_errno::EMLINK | libc_errno::ETXTBSY | libc_errno::EBUSY => Errno::Perm,
            _ => Errno::Io,
        })
    }

    /// Parses a wire errno back (client side); unknown numbers become EIO.
    pub fn from_code(code: i64) -> Errno {
        Errno::ALL.into_iter().find(|e| i64::from(e.code()) == code).unwrap_or(Errno::Io)
    }
}

/// The few Linux errno values outside the table that [`Errno::from_os`] folds into it
/// (kept here so that this crate needs no libc dependency).
mod libc_errno {
    pub const EBUSY: i32 = 16;
    pub const ETXTBSY: i32 = 26;
    pub const EMLINK: i32 = 31;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ELOOP: i32 = 40;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EDQUOT: i32 = 122;
}

/// An error reply: an errno and its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("errno {}: {message}", errno.code())]
pub struct FsError {
    pub errno: Errno,
    pub message: String,
}

impl FsError {
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        FsError { errno, message: message.into() }
    }

    /// The error with the table's typical message.
    pub fn of(errno: Errno) -> Self {
        FsError::new(errno, errno.message())
    }
}

impl From<Errno> for FsError {
    fn from(errno: Errno) -> Self {
        FsError::of(errno)
    }
}

/// Node ids (§4): `((export_index + 1) << 48) | (inode & 0xFFFF_FFFF_FFFF)`.
pub mod node_id {
    const INODE_BITS: u32 = 48;
    const INODE_MASK: u64 = (1 << INODE_BITS) - 1;

    /// The id of `inode` in the export at `export_index` (0-based, order of `--export`).
    pub fn encode(export_index: usize, inode: u64) -> u64 {
        ((export_index as u64 + 1) << INODE_BITS) | (inode & INODE_MASK)
    }

    /// `(export_index, inode bits)`, or `None` when the top 16 bits are 0 or name an export
    /// beyond `export_count`.
    pub fn decode(id: u64, export_count: usize) -> Option<(usize, u64)> {
        let tag = (id >> INODE_BITS) as usize;
        (tag != 0 && tag <= export_count).then(|| (tag - 1, id & INODE_MASK))
    }

    /// Whether `inode` (a full 64-bit inode number) is the one `id` was made from.
    pub fn matches_inode(id: u64, inode: u64) -> bool {
        id & INODE_MASK == inode & INODE_MASK
    }
}

/// Node kind `k` of the attribute record.
pub mod kind {
    pub const FILE: u8 = 1;
    pub const DIR: u8 = 2;
    pub const SYMLINK: u8 = 3;
}

/// The attribute record `A` (§4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: u64,
    pub k: u8,
    pub m: u32,
    pub n: u32,
    pub u: u32,
    pub g: u32,
    pub sz: u64,
    pub at: i64,
    pub mt: i64,
    pub ct: i64,
    pub r#gen: u64,
}

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.k == kind::DIR
    }
}

/// `caps` of the hello reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloCaps {
    pub readdirp: bool,
    pub symlink: bool,
    pub xattr: bool,
    pub locks: bool,
    pub case_sensitive: bool,
    pub max_read: u32,
    pub max_write: u32,
    /// Our extension: read replies and write requests may travel as binary frames
    /// ([`binary`]). Present (and true) only when the client asked for it in its hello, so
    /// clients of the original see the original shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary_data: bool,
}

/// `node` of the hello reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub os: String,
    pub ver: String,
}

/// `acheron.r_fs_hello` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol: String,
    pub proto: u64,
    pub node: NodeInfo,
    pub caps: HelloCaps,
}

/// Per-export `caps` of `r_fs_exports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCaps {
    pub native_watch: bool,
    pub case_sensitive: bool,
    pub symlink: bool,
    pub xattr: bool,
    pub locks: bool,
    pub statfs: bool,
}

/// One entry of `r_fs_exports.exports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEntry {
    pub name: String,
    pub root: u64,
    pub ro: bool,
    pub desc: String,
    pub source_kind: String,
    pub source_id: String,
    pub caps: ExportCaps,
}

/// One entry of `r_fs_readdirp.ents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// `r_fs_readdirp` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaddirReply {
    pub ents: Vec<DirEntry>,
    pub next: u64,
    pub eof: bool,
    pub dir_gen: u64,
}

/// `r_fs_statfs` payload (real `statvfs` numbers; spec README quirk 10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub namemax: u64,
}

/// `what` of an `e_fs_inval` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalWhat {
    Attr,
    Data,
    All,
}

impl InvalWhat {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalWhat::Attr => "attr",
            InvalWhat::Data => "data",
            InvalWhat::All => "all",
        }
    }
}

/// An invalidation event (§6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    Node { node: u64, what: InvalWhat, r#gen: Option<u64> },
    Dir { dir: u64, dir_gen: Option<u64> },
}

impl Event {
    /// The untagged frame.
    pub fn render(&self) -> String {
        let (kind, payload) = match *self {
            Event::Node { node, what, r#gen } => {
                let mut p = Map::new();
                p.insert("node".into(), node.into());
                p.insert("what".into(), what.as_str().into());
                if let Some(g) = r#gen {
                    p.insert("gen".into(), g.into());
                }
                ("acheron.e_fs_inval", p)
            }
            Event::Dir { dir, dir_gen } => {
                let mut p = Map::new();
                p.insert("dir".into(), dir.into());
                if let Some(g) = dir_gen {
                    p.insert("dir_gen".into(), g.into());
                }
                ("acheron.e_fs_inval_dir", p)
            }
        };
        serde_json::json!({"channel": "acheron", "type": kind, "payload": payload}).to_string()
    }

    /// Parses an untagged event frame (client side); `None` if it is not one.
    pub fn from_frame(frame: &Value) -> Option<Event> {
        let payload = frame.get("payload")?;
        match frame.get("type")?.as_str()? {
            "acheron.e_fs_inval" => Some(Event::Node {
                node: payload.get("node")?.as_u64()?,
                what: match payload.get("what")?.as_str()? {
                    "attr" => InvalWhat::Attr,
                    "data" => InvalWhat::Data,
                    _ => InvalWhat::All,
                },
                r#gen: payload.get("gen").and_then(Value::as_u64),
            }),
            "acheron.e_fs_inval_dir" => Some(Event::Dir {
                dir: payload.get("dir")?.as_u64()?,
                dir_gen: payload.get("dir_gen").and_then(Value::as_u64),
            }),
            _ => None,
        }
    }
}

/// `{"channel":"acheron","type":"acheron.r_fs_<op>","tag":N,"ok":true,"payload":…}`.
pub fn render_ok<P: Serialize + ?Sized>(op: &str, tag: u32, payload: &P) -> String {
    crate::reply::acheron_ok(&format!("acheron.r_fs_{op}"), Some(tag), payload)
}

/// `{"channel":"acheron","type":"acheron.err_fs","tag":N,"ok":false,"error":{"errno":…,"message":…}}`;
/// `tag` is omitted when `None` (errors before any tag could be read).
pub fn render_error(tag: Option<u32>, error: &FsError) -> String {
    let mut frame = serde_json::json!({"channel": "acheron", "type": "acheron.err_fs"});
    if let Some(tag) = tag {
        frame["tag"] = tag.into();
    }
    frame["ok"] = false.into();
    frame["error"] = serde_json::json!({"errno": error.errno.code(), "message": error.message});
    frame.to_string()
}

/// A request as the client sends it.
pub fn render_request(op: &str, tag: u32, node: Option<u64>, h: Option<u64>, payload: &Value) -> String {
    let mut frame = Map::new();
    frame.insert("channel".into(), "acheron".into());
    frame.insert("type".into(), format!("acheron.t_fs_{op}").into());
    frame.insert("tag".into(), tag.into());
    if let Some(node) = node {
        frame.insert("node".into(), node.into());
    }
    if let Some(h) = h {
        frame.insert("h".into(), h.into());
    }
    frame.insert("payload".into(), payload.clone());
    Value::Object(frame).to_string()
}

/// A reply as the client sees it: `Ok(payload)` or the error.
pub fn parse_reply(frame: &Value) -> Result<Value, FsError> {
    if frame.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(frame.get("payload").cloned().unwrap_or(Value::Object(Map::new())));
    }
    let error = frame.get("error");
    let errno = error.and_then(|e| e.get("errno")).and_then(Value::as_i64).unwrap_or(5);
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("error");
    Err(FsError::new(Errno::from_code(errno), message))
}

/// Typed access to a request's `payload` object, with the spec's messages (§5): a missing
/// required argument is `<OP> requires a.<name>`, a wrong type `<name> must be <type>`.
pub struct Args<'a> {
    op: &'a str,
    payload: &'a Map<String, Value>,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Args<'a> {
    /// The payload of `op`: absent is `{}`, a non-object is 22 `InvalidPayload`.
    pub fn new(op: &'a str, payload: Option<&'a Value>) -> Result<Self, FsError> {
        match payload {
            None | Some(Value::Null) => Ok(Args { op, payload: &EMPTY }),
            Some(Value::Object(map)) => Ok(Args { op, payload: map }),
            Some(_) => Err(FsError::new(Errno::Inval, "InvalidPayload")),
        }
    }

    fn missing(&self, name: &str) -> FsError {
        FsError::new(Errno::Inval, format!("{} requires a.{name}", self.op.to_uppercase()))
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, FsError> {
        match self.payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| FsError::new(Errno::Inval, format!("{name} must be u64"))),
        }
    }

    pub fn u64(&self, name: &str) -> Result<u64, FsError> {
        self.opt_u64(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn opt_u32(&self, name: &str) -> Result<Option<u32>, FsError> {
        match self.payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| FsError::new(Errno::Inval, format!("{name} must be u32"))),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, FsError> {
        match self.payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FsError::new(Errno::Inval, format!("{name} must be bool"))),
        }
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, FsError> {
        match self.payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FsError::new(Errno::Inval, format!("{name} must be string"))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str, FsError> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// A required base64 argument, decoded; bad base64 is 22 `invalid base64 payload`.
    pub fn b64(&self, name: &str) -> Result<Vec<u8>, FsError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.str(name)?)
            .map_err(|_| FsError::new(Errno::Inval, "invalid base64 payload"))
    }
}

/// The hello request's checks in the spec's order (§3), except the token comparison, which
/// the server does in constant time on [`HelloRequest::auth_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloRequest {
    pub auth_token: Option<String>,
    pub subscribe_invalidations: Option<bool>,
    /// The client accepts binary data frames ([`binary`]).
    pub binary_data: bool,
}

impl HelloRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, FsError> {
        let inval = |name: &str| FsError::new(Errno::Inval, name);
        let obj = match payload {
            None | Some(Value::Null) => return Err(inval("MissingField")),
            Some(Value::Object(obj)) => obj,
            Some(_) => return Err(inval("InvalidType")),
        };
        let (Some(protocol), Some(proto)) = (obj.get("protocol"), obj.get("proto")) else {
            return Err(inval("MissingField"));
        };
        let protocol = protocol.as_str().ok_or_else(|| inval("InvalidType"))?;
        let proto = proto.as_u64().ok_or_else(|| inval("InvalidType"))?;
        let auth_token = match obj.get("auth_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(inval("InvalidType")),
        };
        let subscribe_invalidations = match obj.get("subscribe_invalidations") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(inval("InvalidType")),
        };
        let binary_data = match obj.get("binary_data") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(inval("InvalidType")),
        };
        if protocol != PROTOCOL || proto != PROTO {
            return Err(inval("ProtocolMismatch"));
        }
        Ok(HelloRequest { auth_token, subscribe_invalidations, binary_data })
    }
}

/// The hello request payload a client sends.
pub fn hello_payload(auth_token: Option<&str>, subscribe_invalidations: bool) -> Value {
    let mut p =
        serde_json::json!({"protocol": PROTOCOL, "proto": PROTO, "subscribe_invalidations": subscribe_invalidations});
    if let Some(token) = auth_token {
        p["auth_token"] = token.into();
    }
    p
}

/// Binary data frames, our negotiated extension (hello `binary_data: true` on both sides).
///
/// JSON carries file data as base64, which costs an encode, an escape scan, a parse and a
/// decode per byte on each side; for bulk data these frames carry the bytes as they are.
/// Only two messages use them, everything else stays JSON:
/// - read reply (node → client): `[KIND_READ_REPLY, tag u32 LE, eof u8, data…]`, instead of
///   `r_fs_read` (errors are still `err_fs` JSON);
/// - write request (client → node): `[KIND_WRITE, tag u32 LE, h u64 LE, off u64 LE, data…]`,
///   answered with the usual JSON `r_fs_write`.
pub mod binary {
    pub const KIND_READ_REPLY: u8 = 1;
    pub const KIND_WRITE: u8 = 2;
    /// Bytes before the data of a read reply.
    pub const READ_HEADER: usize = 6;
    /// Bytes before the data of a write request.
    pub const WRITE_HEADER: usize = 21;

    /// A read reply header; the caller appends the data.
    pub fn read_reply_header(tag: u32, eof: bool) -> [u8; READ_HEADER] {
        let t = tag.to_le_bytes();
        [KIND_READ_REPLY, t[0], t[1], t[2], t[3], u8::from(eof)]
    }

    /// `(tag, eof, data)` of a read reply.
    pub fn parse_read_reply(frame: &[u8]) -> Option<(u32, bool, &[u8])> {
        if frame.len() < READ_HEADER || frame[0] != KIND_READ_REPLY {
            return None;
        }
        let tag = u32::from_le_bytes(frame[1..5].try_into().ok()?);
        Some((tag, frame[5] != 0, &frame[READ_HEADER..]))
    }

    /// A whole write request.
    pub fn write_request(tag: u32, h: u64, off: u64, data: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(WRITE_HEADER + data.len());
        frame.push(KIND_WRITE);
        frame.extend_from_slice(&tag.to_le_bytes());
        frame.extend_from_slice(&h.to_le_bytes());
        frame.extend_from_slice(&off.to_le_bytes());
        frame.extend_from_slice(data);
        frame
    }

    /// A parsed write request.
    #[derive(Debug, PartialEq, Eq)]
    pub struct WriteRequest<'a> {
        pub tag: u32,
        pub h: u64,
        pub off: u64,
        pub data: &'a [u8],
    }

    pub fn parse_write_request(frame: &[u8]) -> Option<WriteRequest<'_>> {
        if frame.len() < WRITE_HEADER || frame[0] != KIND_WRITE {
            return None;
        }
        Some(WriteRequest {
            tag: u32::from_le_bytes(frame[1..5].try_into().ok()?),
            h: u64::from_le_bytes(frame[5..13].try_into().ok()?),
            off: u64::from_le_bytes(frame[13..21].try_into().ok()?),
            data: &frame[WRITE_HEADER..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_id_encoding_matches_live_capture() {
        assert_eq!(node_id::encode(0, 10084423), 281474986795079);
        assert_eq!(node_id::encode(1, 5), (1 << 49) + 5);
        assert_eq!(node_id::decode(281474986795079, 1), Some((0, 10084423)));
        assert_eq!(node_id::decode(5, 3), None, "top 16 bits zero");
        assert_eq!(node_id::decode((3 << 48) | 5, 2), None, "beyond export count");
        assert!(node_id::matches_inode(node_id::encode(0, (7 << 48) | 9), 9 | (7 << 48)));
    }

    #[test]
    fn errno_table_round_trips_and_folds_unknowns() {
        for errno in Errno::ALL {
            assert_eq!(Errno::from_os(errno.code()), errno);
            assert_eq!(Errno::from_code(errno.code().into()), errno);
        }
        assert_eq!(Errno::from_os(36), Errno::Inval, "ENAMETOOLONG");
        assert_eq!(Errno::from_os(95), Errno::NoSys, "EOPNOTSUPP");
        assert_eq!(Errno::from_os(9999), Errno::Io);
    }

    #[test]
    fn error_and_event_shapes() {
        assert_eq!(
            render_error(Some(4), &FsError::of(Errno::NoEnt)),
            r#"{"channel":"acheron","type":"acheron.err_fs","tag":4,"ok":false,"error":{"errno":2,"message":"file not found"}}"#
        );
        assert_eq!(
            Event::Node { node: 9, what: InvalWhat::Data, r#gen: None }.render(),
            r#"{"channel":"acheron","type":"acheron.e_fs_inval","payload":{"node":9,"what":"data"}}"#
        );
        let dir = Event::Dir { dir: 3, dir_gen: Some(7) };
        let parsed: Value = serde_json::from_str(&dir.render()).unwrap();
        assert_eq!(Event::from_frame(&parsed), Some(dir));
        assert_eq!(
            render_ok("close", 2, &json!({})),
            r#"{"channel":"acheron","type":"acheron.r_fs_close","tag":2,"ok":true,"payload":{}}"#
        );
    }

    #[test]
    fn hello_checks_in_spec_order() {
        let cases: &[(Option<Value>, Result<(), &str>)] = &[
            (None, Err("MissingField")),
            (Some(json!("x")), Err("InvalidType")),
            (Some(json!({"protocol": "unified-v2-fs"})), Err("MissingField")),
            (Some(json!({"protocol": 1, "proto": 2})), Err("InvalidType")),
            (Some(json!({"protocol": "unified-v2-fs", "proto": 3})), Err("ProtocolMismatch")),
            (Some(json!({"protocol": "other", "proto": 2})), Err("ProtocolMismatch")),
            (Some(json!({"protocol": "unified-v2-fs", "proto": 2, "subscribe_invalidations": 1})), Err("InvalidType")),
            (Some(json!({"protocol": "unified-v2-fs", "proto": 2, "auth_token": "t"})), Ok(())),
        ];
        for (payload, want) in cases {
            let got = HelloRequest::parse(payload.as_ref()).map(|_| ()).map_err(|e| e.message);
            assert_eq!(got, want.map_err(str::to_owned), "{payload:?}");
        }
    }

    #[test]
    fn binary_frames_round_trip_and_refuse_garbage() {
        let mut reply = binary::read_reply_header(7, true).to_vec();
        reply.extend_from_slice(b"abc");
        assert_eq!(binary::parse_read_reply(&reply), Some((7, true, &b"abc"[..])));
        assert_eq!(binary::parse_read_reply(&[1, 2, 3]), None);
        assert_eq!(binary::parse_read_reply(&[2, 0, 0, 0, 0, 0]), None, "wrong kind");
        let write = binary::write_request(9, 3, 1 << 40, b"xyz");
        let parsed = binary::parse_write_request(&write).unwrap();
        assert_eq!((parsed.tag, parsed.h, parsed.off, parsed.data), (9, 3, 1 << 40, &b"xyz"[..]));
        assert_eq!(binary::parse_write_request(&write[..20]), None, "short header");
        let hello = json!({"protocol": "unified-v2-fs", "proto": 2, "binary_data": "yes"});
        assert_eq!(HelloRequest::parse(Some(&hello)).unwrap_err().message, "InvalidType");
    }

    #[test]
    fn args_messages() {
        let payload = json!({"off": "x", "len": 5000000000u64, "wait": 1});
        let args = Args::new("read", Some(&payload)).unwrap();
        assert_eq!(args.opt_u64("off").unwrap_err().message, "off must be u64");
        assert_eq!(args.opt_u32("len").unwrap_err().message, "len must be u32");
        assert_eq!(args.opt_bool("wait").unwrap_err().message, "wait must be bool");
        assert_eq!(args.str("name").unwrap_err().message, "READ requires a.name");
        assert_eq!(Args::new("read", Some(&json!([1]))).err().unwrap().message, "InvalidPayload");
        let bad = json!({"data_b64": "!!"});
        assert_eq!(
            Args::new("write", Some(&bad)).unwrap().b64("data_b64").unwrap_err().message,
            "invalid base64 payload"
        );
    }

    #[test]
    fn client_reply_parsing() {
        let ok: Value = serde_json::from_str(&render_ok("getattr", 1, &json!({"x": 1}))).unwrap();
        assert_eq!(parse_reply(&ok).unwrap(), json!({"x": 1}));
        let err: Value =
            serde_json::from_str(&render_error(Some(1), &FsError::new(Errno::RoFs, "export is read-only"))).unwrap();
        assert_eq!(parse_reply(&err).unwrap_err(), FsError::new(Errno::RoFs, "export is read-only"));
    }
}
