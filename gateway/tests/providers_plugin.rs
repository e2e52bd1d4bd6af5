//! Plugin providers, the gateway's half: the JSON-RPC request line of `seeds/003_*` byte for
//! byte, and the answers a plugin prints (as the broker streams its stdout back) turned into
//! events or typed errors. The broker's half (running the binary) is tested with real plugin
//! scripts in `broker/tests/plugin.rs`, and both together in `tests/tests/fake_provider.rs`.

use serde_json::json;
use spiderweb_gateway::providers::plugin::{self, PluginError, PluginReply};
use spiderweb_gateway::providers::{ChatRequest, Message, StopReason, StreamEvent, ToolCall, ToolSchema, Usage};

fn chat() -> ChatRequest {
    ChatRequest {
        model: "m1".into(),
        system: Some("sys".into()),
        messages: vec![
            Message::User { text: "hi".into() },
            Message::Assistant {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "file_read".into(),
                    arguments: r#"{"path":"a"}"#.into(),
                    signature: None,
                }],
            },
            Message::ToolResult {
                call_id: "c1".into(),
                name: "file_read".into(),
                content: "data".into(),
                is_error: false,
            },
        ],
        tools: vec![ToolSchema {
            name: "file_read".into(),
            description: "Read".into(),
            parameters: json!({"type": "object"}),
        }],
        max_output_tokens: 256,
        temperature: Some(0.5),
    }
}

/// Parses `stdout` delivered in the given chunk sizes, as the broker's body chunks would be.
fn parse(stdout: &str, chunk: usize) -> Result<Vec<StreamEvent>, PluginError> {
    let mut reply = PluginReply::new("test-plugin");
    for piece in stdout.as_bytes().chunks(chunk.max(1)) {
        reply.feed(piece)?;
    }
    reply.finish()
}

#[test]
fn the_request_is_the_seed_protocol_line_posted_to_the_broker() {
    let expected = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"chat","params":{"messages":["#,
        r#"{"role":"system","content":"sys"},"#,
        r#"{"role":"user","content":"hi"},"#,
        r#"{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"file_read","arguments":"{\"path\":\"a\"}"}]},"#,
        r#"{"role":"tool","content":"data","tool_call_id":"c1"}],"#,
        r#""tools":[{"name":"file_read","description":"Read","parameters":{"type":"object"}}],"#,
        r#""model":"m1","options":{"max_tokens":256,"temperature":0.5}}}"#,
    );
    assert_eq!(String::from_utf8(plugin::request_line(&chat())).unwrap(), expected);
    let request = plugin::request(&chat());
    assert_eq!((request.method, request.path.as_str()), ("POST", "/"));
    assert_eq!(request.body, expected.as_bytes(), "the broker adds the newline, not the gateway");
    assert!(request.headers.iter().all(|(name, _)| *name == "content-type"), "{:?}", request.headers);
}

#[test]
fn the_last_non_empty_line_is_the_answer_wherever_the_chunks_split() {
    let stdout = "a log line the plugin printed first\n\
                  {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":\"hello from plugin\",\"tool_calls\":[]}}\n\n";
    for chunk in [1, 7, stdout.len()] {
        assert_eq!(
            parse(stdout, chunk).unwrap(),
            [
                StreamEvent::TextDelta("hello from plugin".into()),
                StreamEvent::Done { stop_reason: StopReason::EndTurn }
            ],
            "chunks of {chunk}"
        );
    }
}

#[test]
fn tool_calls_and_usage_become_events() {
    let events = parse(
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":"","tool_calls":[{"id":"c9","name":"search","arguments":{"q":"rust"}},{"name":"shell","arguments":"{\"cmd\":\"ls\"}"},{"id":"broken"}],"usage":{"input_tokens":10,"output_tokens":5}}}"#,
        64,
    )
    .unwrap();
    let calls: Vec<&ToolCall> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallEnd(call) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2, "the entry without a name is skipped");
    assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("c9", "search"));
    assert_eq!(calls[0].arguments, r#"{"q":"rust"}"#);
    assert_eq!(calls[1].id, "call_1");
    assert_eq!(calls[1].arguments, r#"{"cmd":"ls"}"#);
    assert!(events.contains(&StreamEvent::Usage(Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() })));
    assert_eq!(events.last(), Some(&StreamEvent::Done { stop_reason: StopReason::ToolUse }));
}

#[test]
fn an_error_response_is_reported_with_code_and_message() {
    let error =
        parse(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"model unavailable"}}"#, 10).unwrap_err();
    assert!(
        matches!(&error, PluginError::Rpc { code: -32000, message, .. } if message == "model unavailable"),
        "{error:?}"
    );
    assert!(error.to_string().contains("test-plugin"));
}

#[test]
fn garbage_empty_and_missing_answers_are_refused_with_a_quote() {
    let error = parse("this is not json-rpc\n", 4).unwrap_err();
    assert!(matches!(&error, PluginError::Garbage { line, .. } if line == "this is not json-rpc"), "{error:?}");
    assert!(matches!(parse("{\"jsonrpc\":\"2.0\",\"id\":1}\n", 4).unwrap_err(), PluginError::Empty { .. }));
    assert!(matches!(parse("", 4).unwrap_err(), PluginError::NoOutput { .. }));
    assert!(matches!(parse("\n  \n", 4).unwrap_err(), PluginError::NoOutput { .. }));
}

#[test]
fn an_answer_to_another_request_id_is_refused() {
    for id in ["2", "\"1\"", "{}"] {
        let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":"hi"}}}}"#);
        let error = parse(&line, 100).unwrap_err();
        assert!(matches!(&error, PluginError::IdMismatch { got, .. } if got == id), "{id}: {error:?}");
        assert!(error.to_string().contains("instead of 1"), "{error}");
    }
    // ZeptoClaw does not require the id; a null id (JSON-RPC's "unknown") is accepted too.
    assert!(parse(r#"{"jsonrpc":"2.0","result":{"content":"hi"}}"#, 100).is_ok());
    assert!(parse(r#"{"jsonrpc":"2.0","id":null,"result":{"content":"hi"}}"#, 100).is_ok());
}

#[test]
fn oversized_output_is_refused_before_it_is_buffered() {
    let mut reply = PluginReply::new("big").with_max_output_bytes(1024);
    reply.feed(&[b'x'; 1000]).unwrap();
    let error = reply.feed(&[b'x'; 100]).unwrap_err();
    assert!(matches!(error, PluginError::OutputTooLarge { limit: 1024, .. }), "{error:?}");
}
