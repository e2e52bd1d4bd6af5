//! Hostile and malformed input on `/`: every parse-failure class gets the documented error
//! frame and the connection survives; protocol violations close only that connection; the
//! gateway keeps serving others and its memory does not grow with garbage.

use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{Client, Gateway, OpCode, OpData, ROOT_FID, raw_upgrade};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

fn legacy_err(message: &str) -> Value {
    json!({"channel":"control","type":"control.error","ok":false,"error":{"code":"unsupported_legacy_api","message":message}})
}

fn legacy_err_id(id: &str, message: &str) -> Value {
    json!({"channel":"control","type":"control.error","id":id,"ok":false,"error":{"code":"unsupported_legacy_api","message":message}})
}

fn acheron_parse_err(tag: Option<u64>, message: &str) -> Value {
    let mut v = json!({"channel":"acheron","type":"acheron.error","ok":false,"error":{"code":"unsupported_legacy_api","message":message}});
    if let Some(t) = tag {
        v["tag"] = json!(t);
    }
    v
}

async fn send_expect(c: &mut Client, raw: &str, expected: &Value) {
    c.send_raw_text(raw).await;
    let r = c.recv_json().await;
    assert_eq!(&r, expected, "reply to {:?}", if raw.len() > 200 { &raw[..200] } else { raw });
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + inner.len());
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(close);
    }
    s
}

#[tokio::test]
async fn invalid_json_is_syntax_error_and_the_connection_stays_open() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    for raw in [
        "{not json",
        "",
        "   ",
        "{\"channel\":\"control\"",
        "{\"a\":1,}",
        "[1,2",
        "NaN",
        "{'single':1}",
        "{} trailing",
        "\"unterminated",
    ] {
        send_expect(&mut c, raw, &legacy_err("SyntaxError")).await;
    }
    c.ping().await;
    gw.assert_serving("after invalid JSON").await;
}

#[tokio::test]
async fn non_objects_are_invalid_envelope() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    for raw in [
        "[1,2]",
        "[]",
        "\"str\"",
        "42",
        "null",
        "true",
        "[{\"channel\":\"control\",\"type\":\"control.ping\",\"id\":\"x\"}]",
    ] {
        send_expect(&mut c, raw, &legacy_err("InvalidEnvelope")).await;
    }
    c.ping().await;
    gw.assert_serving("after non-object frames").await;
}

#[tokio::test]
async fn envelope_field_errors_echo_string_ids() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    let cases: Vec<(Value, Value)> = vec![
        (json!({"channel":"control","id":"a"}), legacy_err_id("a", "MissingField")),
        (json!({"id":"m"}), legacy_err_id("m", "MissingField")),
        (json!({"channel":"control","type":5,"id":"b"}), legacy_err_id("b", "InvalidType")),
        (json!({"channel":"control","type":null,"id":"b2"}), legacy_err_id("b2", "InvalidType")),
        (json!({"type":"session.send","id":"c","content":"hi"}), legacy_err_id("c", "MissingField")),
        (json!({"type":"req","id":"c2","method":"connect"}), legacy_err_id("c2", "MissingField")),
        (json!({"channel":"legacy","type":"control.ping","id":"d"}), legacy_err_id("d", "InvalidType")),
        (json!({"channel":7,"type":"control.ping","id":"e"}), legacy_err_id("e", "InvalidType")),
        (json!({"channel":"control","type":"control.ping","id":5}), legacy_err("InvalidType")),
        (
            json!({"channel":"control","type":"control.ping","id":"f","correlation_id":5}),
            legacy_err_id("f", "InvalidType"),
        ),
        (
            json!({"channel":"control","type":"control.ping","id":"g","session_key":[]}),
            legacy_err_id("g", "InvalidType"),
        ),
        (json!({"channel":"control","type":"acheron.t_version","id":"h"}), legacy_err_id("h", "UnsupportedType")),
        (json!({"channel":"control","type":"control.bogus","id":"i"}), legacy_err_id("i", "UnsupportedType")),
        (json!({"channel":"control","type":"session.send","id":"j"}), legacy_err_id("j", "UnsupportedType")),
        (json!({"channel":"control","type":"chat.send","id":"k"}), legacy_err_id("k", "UnsupportedType")),
        (json!({"channel":"control","type":"CONTROL.PING","id":"k2"}), legacy_err_id("k2", "UnsupportedType")),
    ];
    for (frame, expected) in cases {
        send_expect(&mut c, &frame.to_string(), &expected).await;
    }
    // Unknown extra top-level fields are ignored.
    c.send_json(&json!({"channel":"control","type":"control.ping","id":"l","extra":{"x":1},"agent":"whatever"})).await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("control.pong"), "{r}");
    c.ping().await;
    gw.assert_serving("after envelope errors").await;
}

#[tokio::test]
async fn acheron_channel_parse_failures_answer_on_the_acheron_channel() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    c.fs_attach().await;
    let s = |v: Value| v.to_string();
    let cases: Vec<(String, Value)> = vec![
        (
            s(json!({"channel":"acheron","type":"acheron.t_bogus","tag":7})),
            acheron_parse_err(Some(7), "UnsupportedType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.fs_t_read","tag":8})),
            acheron_parse_err(Some(8), "UnsupportedType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.fs_error","tag":9})),
            acheron_parse_err(Some(9), "UnsupportedType"),
        ),
        (
            s(json!({"channel":"acheron","type":"control.ping","tag":10})),
            acheron_parse_err(Some(10), "UnsupportedType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":11,"fid":"1"})),
            acheron_parse_err(Some(11), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":12,"fid":-1})),
            acheron_parse_err(Some(12), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":13,"fid":1.5})),
            acheron_parse_err(Some(13), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":14,"fid":4294967296u64})),
            acheron_parse_err(Some(14), "InvalidType"),
        ),
        // Numbers beyond f64's range are a JSON syntax error to our parser, so the channel
        // cannot be read and the answer comes on the control channel.
        (
            r#"{"channel":"acheron","type":"acheron.t_read","tag":15,"fid":1e400}"#.to_string(),
            legacy_err("SyntaxError"),
        ),
        (
            r#"{"channel":"acheron","type":"acheron.t_read","tag":16,"fid":1,"offset":1e400}"#.to_string(),
            legacy_err("SyntaxError"),
        ),
        (
            r#"{"channel":"acheron","type":"acheron.t_read","tag":17,"fid":1,"offset":99999999999999999999999}"#
                .to_string(),
            acheron_parse_err(Some(17), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":18,"fid":1,"offset":-5})),
            acheron_parse_err(Some(18), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":19,"fid":1,"count":4294967296u64})),
            acheron_parse_err(Some(19), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_walk","tag":20,"fid":1,"newfid":2,"path":[1]})),
            acheron_parse_err(Some(20), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_walk","tag":21,"fid":1,"newfid":2,"path":"meta"})),
            acheron_parse_err(Some(21), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_open","tag":22,"fid":1,"mode":5})),
            acheron_parse_err(Some(22), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_version","tag":23,"version":1})),
            acheron_parse_err(Some(23), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_write","tag":24,"fid":1,"data_b64":"!!!not base64"})),
            acheron_parse_err(Some(24), "InvalidBase64"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_write","tag":25,"fid":1,"data_b64":"abc"})),
            acheron_parse_err(Some(25), "InvalidBase64"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_write","tag":26,"fid":1,"data":5})),
            acheron_parse_err(Some(26), "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":27,"fid":1,"h":-1})),
            acheron_parse_err(Some(27), "InvalidType"),
        ),
        // An invalid tag cannot be echoed.
        (
            r#"{"channel":"acheron","type":"acheron.t_read","tag":99999999999999999999,"fid":1}"#.to_string(),
            acheron_parse_err(None, "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":4294967296u64,"fid":1})),
            acheron_parse_err(None, "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":-1,"fid":1})),
            acheron_parse_err(None, "InvalidType"),
        ),
        (
            s(json!({"channel":"acheron","type":"acheron.t_read","tag":"7","fid":1})),
            acheron_parse_err(None, "InvalidType"),
        ),
    ];
    for (raw, expected) in cases {
        send_expect(&mut c, &raw, &expected).await;
    }
    // The fids are intact and the connection works.
    let st = c.acheron_ok("t_stat", json!({"fid": ROOT_FID})).await;
    assert_eq!(st["kind"], json!("dir"));
    c.ping().await;
    gw.assert_serving("after acheron parse failures").await;
}

#[tokio::test]
async fn deep_nesting_is_rejected_without_crashing() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    for (depth, open, close) in [(10_000, "[", "]"), (100_000, "[", "]"), (10_000, "{\"a\":", "}"), (200, "[", "]")] {
        let payload = nested(depth, open, close, "1");
        let raw = format!(r#"{{"channel":"control","type":"control.ping","id":"deep","payload":{payload}}}"#);
        c.send_raw_text(&raw).await;
        let r = c.recv_json().await;
        assert_eq!(r["type"], json!("control.error"), "depth {depth}: {r}");
        assert_eq!(r["error"]["code"], json!("unsupported_legacy_api"), "depth {depth}: {r}");
        assert_eq!(r["error"]["message"], json!("NestingTooDeep"), "depth {depth}: {r}");
    }
    // A bare deeply nested array (not an object) too.
    c.send_raw_text(&nested(50_000, "[", "]", "")).await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], json!("unsupported_legacy_api"), "{r}");
    // Moderate nesting is fine.
    let raw = format!(
        r#"{{"channel":"control","type":"control.ping","id":"shallow","payload":{{"x":{}}}}}"#,
        nested(20, "[", "]", "1")
    );
    c.send_raw_text(&raw).await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("control.pong"), "{r}");
    gw.assert_serving("after deep nesting").await;
}

#[tokio::test]
async fn binary_frames_get_invalid_envelope_and_the_connection_stays_open() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    for payload in
        [b"{\"channel\":\"control\",\"type\":\"control.ping\",\"id\":\"b\"}".to_vec(), vec![], vec![0xff; 4096]]
    {
        c.send_binary(payload).await;
        let r = c.recv_json().await;
        assert_eq!(r["channel"], json!("control"), "{r}");
        assert_eq!(r["type"], json!("control.error"), "{r}");
        assert_eq!(r["ok"], json!(false), "{r}");
        assert_eq!(r["error"]["code"], json!("invalid_envelope"), "{r}");
    }
    c.ping().await;
    gw.assert_serving("after binary frames").await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_only_that_connection() {
    let mut gw = Gateway::start();
    let mut bystander = gw.admin().await;
    let mut c = gw.admin().await;
    c.send_frame(Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(OpData::Text), true)).await;
    assert_eq!(c.expect_close().await, Some(1007));
    // Invalid UTF-8 split across fragments as well.
    let mut c = gw.admin().await;
    c.send_frame(Frame::message(b"{\"channel\":\"control\",\"id\":\"".to_vec(), OpCode::Data(OpData::Text), false))
        .await;
    c.send_frame(Frame::message(vec![0xc3, 0x28, b'"', b'}'], OpCode::Data(OpData::Continue), true)).await;
    assert_eq!(c.expect_close().await, Some(1007));
    bystander.ping().await;
    gw.assert_serving("after invalid UTF-8").await;
}

#[tokio::test]
async fn reserved_opcodes_close_with_1002() {
    let mut gw = Gateway::start();
    let auth = format!("Bearer {}", gw.admin_token());
    // tungstenite refuses to build frames with reserved opcodes, so they are written by hand:
    // FIN + opcode, MASK + length 1, a zero mask key, one payload byte.
    for opcode in [0x3u8, 0xB] {
        let (mut s, _) = raw_upgrade(gw.addr(), "/", &[("Authorization", &auth)]).await.expect("upgrade");
        s.write_all(&[0x80 | opcode, 0x81, 0, 0, 0, 0, b'x']).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(res.is_ok(), "opcode {opcode:#x}: the connection stayed open; got {got:?}");
        assert!(got.len() >= 4 && got[0] == 0x88, "opcode {opcode:#x}: expected a close frame, got {got:?}");
        assert_eq!(u16::from_be_bytes([got[2], got[3]]), 1002, "opcode {opcode:#x}: close code");
    }
    gw.assert_serving("after reserved opcodes").await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_the_connection() {
    let mut gw = Gateway::start();
    let auth = format!("Bearer {}", gw.admin_token());
    let (mut s, _) = raw_upgrade(gw.addr(), "/", &[("Authorization", &auth)]).await.expect("upgrade");
    let payload = br#"{"channel":"control","type":"control.version","id":"v","payload":{"protocol":"unified-v2"}}"#;
    let mut frame = vec![0x81, payload.len() as u8];
    frame.extend_from_slice(payload);
    s.write_all(&frame).await.unwrap();
    // The server must not answer the frame; it closes (with 1002 if it sends a close frame).
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(res.is_ok(), "the connection stayed open after an unmasked frame; got {got:?}");
    if !got.is_empty() {
        assert_eq!(got[0], 0x88, "only a close frame may come back, got {got:?}");
        assert!(got.len() >= 4, "close frame without a status code: {got:?}");
        assert_eq!(u16::from_be_bytes([got[2], got[3]]), 1002, "close code for an unmasked frame");
    }
    gw.assert_serving("after an unmasked frame").await;
}

#[tokio::test]
async fn oversize_frames_close_with_1009_and_4mib_frames_are_accepted() {
    let mut gw = Gateway::start();
    let mut bystander = gw.admin().await;
    // 3 MiB is within the default 4 MiB (quirk 7).
    let mut c = gw.admin().await;
    let big_id = "i".repeat(3 << 20);
    c.send_json(&json!({"channel":"control","type":"control.ping","id":big_id})).await;
    let r = c.recv_json_within(Duration::from_secs(20)).await;
    assert_eq!(r["type"], json!("control.pong"), "3 MiB ping must be answered");
    assert_eq!(r["id"].as_str().map(str::len), Some(3 << 20));
    c.ping().await;

    let huge = format!(r#"{{"channel":"control","type":"control.ping","id":"{}"}}"#, "x".repeat(5 << 20));
    // The send may fail (the server closes while we write) but must not hang.
    let _ = c.send_message_within(Message::text(huge), Duration::from_secs(15)).await;
    assert_eq!(c.expect_close().await, Some(1009), "a 5 MiB frame must be refused with 1009");

    // A fragmented message whose total exceeds the limit is refused too.
    let mut c = gw.admin().await;
    let chunk = "y".repeat(2 << 20);
    let first = Frame::message(
        format!(r#"{{"channel":"control","type":"control.ping","id":"{chunk}"#).into_bytes(),
        OpCode::Data(OpData::Text),
        false,
    );
    let mut ok = c.send_message_within(Message::Frame(first), Duration::from_secs(15)).await.is_ok();
    for last in [false, false, true] {
        if !ok {
            break;
        }
        let body = if last { format!("{chunk}\"}}") } else { chunk.clone() };
        let frame = Frame::message(body.into_bytes(), OpCode::Data(OpData::Continue), last);
        ok = c.send_message_within(Message::Frame(frame), Duration::from_secs(15)).await.is_ok();
    }
    assert_eq!(c.expect_close().await, Some(1009), "an 8 MiB fragmented message must be refused with 1009");

    bystander.ping().await;
    gw.assert_serving("after oversize frames").await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let text = r#"{"channel":"control","type":"control.ping","id":"frag"}"#;
    let (a, rest) = text.split_at(10);
    let (b, d) = rest.split_at(20);
    c.send_frame(Frame::message(a.as_bytes().to_vec(), OpCode::Data(OpData::Text), false)).await;
    c.send_frame(Frame::message(b.as_bytes().to_vec(), OpCode::Data(OpData::Continue), false)).await;
    // A control frame may be interleaved between fragments.
    c.send_message(Message::Ping(b"mid".to_vec().into())).await;
    c.send_frame(Frame::message(d.as_bytes().to_vec(), OpCode::Data(OpData::Continue), true)).await;
    let r = c.recv_json().await;
    assert_eq!(r, json!({"channel":"control","type":"control.pong","id":"frag","ok":true,"payload":{}}));
    // A multi-byte UTF-8 character split across fragments is fine.
    let text = r#"{"channel":"control","type":"control.ping","id":"é✓"}"#.as_bytes();
    let cut = text.iter().position(|b| *b == 0xc3).unwrap() + 1;
    c.send_frame(Frame::message(text[..cut].to_vec(), OpCode::Data(OpData::Text), false)).await;
    c.send_frame(Frame::message(text[cut..].to_vec(), OpCode::Data(OpData::Continue), true)).await;
    let r = c.recv_json().await;
    assert_eq!(r["id"], json!("é✓"), "{r}");
}

#[tokio::test]
async fn handshake_out_of_order_and_unknown_fids() {
    let mut gw = Gateway::start();
    let mut c = Client::connect(&gw, &gw.admin_token()).await;
    c.send_json(&json!({"channel":"control","type":"control.connect","id":"c0"})).await;
    assert_eq!(c.recv_json().await["error"]["code"], json!("protocol_mismatch"));
    c.expect_close().await;
    let mut c = Client::connect(&gw, &gw.admin_token()).await;
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_attach","tag":1,"fid":1})).await;
    assert_eq!(c.recv_json().await["error"]["code"], json!("protocol_mismatch"));
    c.expect_close().await;

    let mut c = gw.admin().await;
    c.fs_version().await;
    for ty in ["t_read", "t_stat", "t_open"] {
        let e = c.acheron_err_code(ty, json!({"fid": 77}), "enoent").await;
        assert_eq!(e["message"], json!("unknown fid"), "{ty}");
    }
    c.fs_attach().await;
    let r = c
        .acheron_ok(
            "t_walk",
            json!({"fid": ROOT_FID, "newfid": 2, "path": ["..", "..", "..", "..", "meta", "..", ".."]}),
        )
        .await;
    assert_eq!(r["qid"], json!({"path": 1, "type": "dir"}), "walking above the root stays at the root: {r}");
    gw.assert_serving("after out-of-order handshakes").await;
}

#[tokio::test]
async fn garbage_http_does_not_hurt_the_server() {
    // A short handshake timeout so requests the server waits on (incomplete heads) end quickly.
    let mut gw = Gateway::start_with(json!({"server": {"handshake_timeout_ms": 1000}}));
    for req in [
        b"GARBAGE\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // a TLS ClientHello prefix
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000)).into_bytes(),
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .to_vec(), // no key
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let _ = s.write_all(&req).await;
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink)).await;
        assert!(
            r.is_ok(),
            "the server neither answered nor closed a garbage request within 15 s: {:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
        if sink.starts_with(b"HTTP/1.1 ") {
            let status: u16 = String::from_utf8_lossy(&sink[9..12]).parse().unwrap_or(0);
            assert!(
                (400..500).contains(&status),
                "garbage request must get a 4xx, got {:?}",
                String::from_utf8_lossy(&sink[..sink.len().min(200)])
            );
        }
    }
    gw.assert_serving("after garbage HTTP").await;
}

async fn garbage_run(c: &mut Client, garbage: &[String], n: usize) {
    for i in 0..n {
        if i % 10 == 9 {
            c.send_binary(vec![0u8; 4096]).await;
        } else {
            c.send_raw_text(&garbage[i % garbage.len()]).await;
        }
        let r = c.recv_json().await;
        assert_eq!(r["ok"], json!(false), "garbage frame {i} must get an error: {r}");
    }
}

#[tokio::test]
async fn two_thousand_garbage_frames_do_not_grow_memory() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    c.fs_attach().await;
    let deep =
        format!(r#"{{"channel":"control","type":"control.ping","id":"d","payload":{}}}"#, nested(5_000, "[", "]", "1"));
    let big_invalid = format!("{{\"channel\":\"control\",\"type\":\"control.ping\",\"id\":\"{}", "z".repeat(32 * 1024));
    let garbage: Vec<String> = vec![
        "{not json".into(),
        "[1,2,3]".into(),
        deep,
        big_invalid,
        json!({"channel":"control","type":"control.bogus","id":"u"}).to_string(),
        json!({"channel":"acheron","type":"acheron.t_read","tag":3,"fid":-1}).to_string(),
        json!({"channel":"acheron","type":"acheron.t_bogus","tag":4}).to_string(),
        json!({"channel":"acheron","type":"acheron.t_read","tag":5,"fid":424242}).to_string(),
        json!({"type":"session.send","content":"hello"}).to_string(),
    ];
    garbage_run(&mut c, &garbage, 300).await; // warm-up: buffers, allocator arenas
    let before = gw.rss_kib();
    garbage_run(&mut c, &garbage, 2_000).await;
    c.ping().await;
    let after = gw.rss_kib();
    let grown = after.saturating_sub(before);
    println!("VmRSS before {before} KiB, after 2000 garbage frames {after} KiB (+{grown} KiB)");
    assert!(
        grown < 16 * 1024,
        "gateway VmRSS grew by {grown} KiB (> 16 MiB) after 2000 garbage frames ({before} → {after} KiB)"
    );
    gw.assert_serving("after 2000 garbage frames").await;
}
