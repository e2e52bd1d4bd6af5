//! Stream parsing per provider: documented SSE transcripts split at every byte, error
//! replies, and broken streams.

use std::time::Duration;

use spiderweb_gateway::providers::{
    ErrorKind, Provider, ProviderError, ProviderKind, StopReason, StreamEvent, ToolCall, Usage,
};

const SSE: [(&str, &str); 1] = [("content-type", "text/event-stream; charset=utf-8")];
const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/providers/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// Feeds `chunks` after a head of `status`/`headers`; returns the events seen and how it
/// ended.
fn run(
    kind: ProviderKind,
    status: u16,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> (Vec<StreamEvent>, Result<(), ProviderError>) {
    let mut parser = Provider::new(kind).parser();
    let mut events = Vec::new();
    if let Err(error) = parser.head(status, headers) {
        return (events, Err(error));
    }
    for chunk in chunks {
        match parser.feed(chunk) {
            Ok(more) => events.extend(more),
            Err(error) => return (events, Err(error)),
        }
    }
    match parser.finish() {
        Ok(more) => {
            events.extend(more);
            (events, Ok(()))
        }
        Err(error) => (events, Err(error)),
    }
}

/// Parses a successful transcript whole, then split in two at every byte, then one byte
/// at a time; all must give the same events.
fn parse_split_everywhere(kind: ProviderKind, body: &[u8]) -> Vec<StreamEvent> {
    let (whole, end) = run(kind, 200, &SSE, &[body]);
    end.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    for split in 0..=body.len() {
        let (events, end) = run(kind, 200, &SSE, &[&body[..split], &body[split..]]);
        assert_eq!(end, Ok(()), "{kind:?} split at {split}");
        assert_eq!(events, whole, "{kind:?} split at {split}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let (events, end) = run(kind, 200, &SSE, &bytes);
    assert_eq!(end, Ok(()));
    assert_eq!(events, whole);
    assert_well_ordered(&whole);
    whole
}

/// The ordering promised by `event.rs`.
fn assert_well_ordered(events: &[StreamEvent]) {
    let mut open: Vec<&str> = Vec::new();
    for (position, event) in events.iter().enumerate() {
        match event {
            StreamEvent::ToolCallStart { id, .. } => open.push(id),
            StreamEvent::ToolCallArgsDelta { id, .. } => {
                assert!(
                    open.contains(&id.as_str()),
                    "delta for {id} outside its call"
                )
            }
            StreamEvent::ToolCallEnd(call) => {
                let at = open
                    .iter()
                    .position(|id| *id == call.id)
                    .expect("end of an open call");
                open.remove(at);
            }
            StreamEvent::Usage(_) => assert!(
                matches!(events.get(position + 1), Some(StreamEvent::Done { .. })),
                "usage must come right before done"
            ),
            StreamEvent::Done { .. } => assert_eq!(position, events.len() - 1, "done is last"),
            StreamEvent::TextDelta(_) => {}
        }
    }
    assert!(open.is_empty(), "calls left open: {open:?}");
    assert!(matches!(events.last(), Some(StreamEvent::Done { .. })));
}

fn text(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn calls(events: &[StreamEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallEnd(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn usage(events: &[StreamEvent]) -> Option<Usage> {
    events.iter().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    })
}

fn stop(events: &[StreamEvent]) -> StopReason {
    match events.last() {
        Some(StreamEvent::Done { stop_reason }) => stop_reason.clone(),
        other => panic!("no done event, last was {other:?}"),
    }
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
        signature: None,
    }
}

fn error_reply(
    kind: ProviderKind,
    status: u16,
    headers: &[(&str, &str)],
    body: &str,
) -> ProviderError {
    let (events, end) = run(kind, status, headers, &[body.as_bytes()]);
    assert!(events.is_empty());
    end.expect_err("an error reply must fail")
}

// ---- OpenAI Chat Completions (also Azure and compatible servers) ----

#[test]
fn openai_chat_assembles_parallel_tool_calls_at_every_split() {
    for kind in [
        ProviderKind::OpenAi,
        ProviderKind::AzureOpenAi,
        ProviderKind::OpenAiCompatible,
    ] {
        let events = parse_split_everywhere(kind, &fixture("openai_chat_parallel_tools.sse"));
        assert_eq!(
            calls(&events),
            [
                call(
                    "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "file_read",
                    r#"{"path": "src/main.rs"}"#
                ),
                call(
                    "call_zQvXbXlyZcjXn3J1sDo2lQbe",
                    "file_list",
                    r#"{"path": "src", "recursive": true}"#
                ),
            ]
        );
        assert_eq!(
            usage(&events),
            Some(Usage {
                input_tokens: 82,
                output_tokens: 47,
                cached_input_tokens: 64,
                cache_write_tokens: 0
            })
        );
        assert_eq!(stop(&events), StopReason::ToolUse);
    }
}

#[test]
fn compatible_servers_sending_whole_calls_and_stop_still_mean_tool_use() {
    // Ollama's shape: the whole call in one delta (here without `index`), then "stop".
    let body = concat!(
        "data: {\"id\":\"chatcmpl-412\",\"object\":\"chat.completion.chunk\",\"created\":1763758800,\"model\":\"llama3.1:8b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call_a1b2c3\",\"type\":\"function\",\"function\":{\"name\":\"file_read\",\"arguments\":\"{\\\"path\\\":\\\"README.md\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-412\",\"object\":\"chat.completion.chunk\",\"created\":1763758800,\"model\":\"llama3.1:8b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    let events = parse_split_everywhere(ProviderKind::OpenAiCompatible, body.as_bytes());
    assert_eq!(
        calls(&events),
        [call("call_a1b2c3", "file_read", r#"{"path":"README.md"}"#)]
    );
    assert_eq!(usage(&events), None, "no usage was sent");
    assert_eq!(stop(&events), StopReason::ToolUse);
}

#[test]
fn openai_chat_streams_text_split_inside_utf8() {
    let events = parse_split_everywhere(ProviderKind::OpenAi, &fixture("openai_chat_text.sse"));
    assert_eq!(text(&events), "Grüße aus dem Netz 🕸️.");
    assert_eq!(stop(&events), StopReason::EndTurn);
    assert_eq!(usage(&events).unwrap().output_tokens, 10);
}

#[test]
fn openai_chat_without_done_marker_is_incomplete() {
    let body = fixture("openai_chat_text.sse");
    let cut = String::from_utf8(body)
        .unwrap()
        .replace("data: [DONE]\n\n", "");
    let (events, end) = run(ProviderKind::OpenAi, 200, &SSE, &[cut.as_bytes()]);
    assert_eq!(text(&events), "Grüße aus dem Netz 🕸️.");
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::IncompleteStream);
    assert!(error.message.contains("[DONE]"), "{error}");
}

#[test]
fn a_stream_cut_mid_event_is_incomplete_and_keeps_what_came_before() {
    let body = fixture("openai_chat_parallel_tools.sse");
    let cut = &body[..body.len() / 2];
    let (events, end) = run(ProviderKind::OpenAi, 200, &SSE, &[cut]);
    assert!(matches!(events[0], StreamEvent::ToolCallStart { .. }));
    assert!(calls(&events).is_empty(), "no call may end in a cut stream");
    assert_eq!(end.unwrap_err().kind, ErrorKind::IncompleteStream);
}

#[test]
fn garbage_in_the_stream_is_a_malformed_stream_error() {
    let (_, end) = run(
        ProviderKind::OpenAi,
        200,
        &SSE,
        &[b"data: {\"choices\": [oops\n\n", b"data: [DONE]\n\n"],
    );
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::MalformedStream);
    assert!(error.message.contains("oops"), "{error}");
    let (_, end) = run(
        ProviderKind::Anthropic,
        200,
        &SSE,
        &[b"\xff\xfe\x00garbage\n\n"],
    );
    assert!(end.is_err());
}

#[test]
fn a_mid_stream_error_chunk_is_typed() {
    let body = b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let (_, end) = run(ProviderKind::OpenAi, 200, &SSE, &[body]);
    assert_eq!(end.unwrap_err().kind, ErrorKind::Server);
}

#[test]
fn openai_429_honours_retry_after_and_quota_is_not_rate_limit() {
    let body = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 200000, Used 199500, Requested 900. Please try again in 120ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    let error = error_reply(
        ProviderKind::OpenAi,
        429,
        &[("content-type", "application/json"), ("retry-after", "3")],
        body,
    );
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.status, Some(429));
    assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
    assert!(error.message.contains("Rate limit reached"));

    let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    let error = error_reply(ProviderKind::OpenAi, 429, &JSON, quota);
    assert_eq!(error.kind, ErrorKind::QuotaExceeded);
    assert!(!error.kind.is_transient());
}

#[test]
fn openai_errors_are_typed_from_their_documented_bodies() {
    let auth = r#"{"error":{"message":"Incorrect API key provided: sk-proj-****1234. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let error = error_reply(ProviderKind::OpenAi, 401, &JSON, auth);
    assert_eq!(error.kind, ErrorKind::Auth);
    assert!(error.to_string().contains("HTTP 401"), "{error}");

    let long = r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130341 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    assert_eq!(
        error_reply(ProviderKind::OpenAi, 400, &JSON, long).kind,
        ErrorKind::ContextLengthExceeded
    );
    let azure = r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#;
    assert_eq!(
        error_reply(ProviderKind::AzureOpenAi, 404, &JSON, azure).kind,
        ErrorKind::NotFound
    );
    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let error = error_reply(
        ProviderKind::OpenAiCompatible,
        502,
        &[("content-type", "text/html")],
        html,
    );
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(error.message.contains("502 Bad Gateway"));
    let ollama = r#"{"error":{"message":"model \"llama9\" not found, try pulling it first","type":"api_error","param":null,"code":null}}"#;
    let error = error_reply(ProviderKind::OpenAiCompatible, 404, &JSON, ollama);
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert!(error.message.contains("llama9"));
}

#[test]
fn a_success_status_without_an_event_stream_is_refused() {
    let (_, end) = run(
        ProviderKind::OpenAi,
        200,
        &[("content-type", "text/html")],
        &[b"<html>captive portal</html>"],
    );
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::MalformedStream);
    assert!(error.message.contains("captive portal"), "{error}");
}

#[test]
fn huge_error_bodies_are_cut() {
    let body = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(1 << 20));
    let error = error_reply(ProviderKind::OpenAi, 500, &JSON, &body);
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(
        error.message.len() < 100 << 10,
        "{} bytes kept",
        error.message.len()
    );
}

// ---- OpenAI Responses API (also the Codex backend) ----

#[test]
fn responses_assembles_interleaved_function_calls_at_every_split() {
    for kind in [ProviderKind::OpenAiResponses, ProviderKind::Codex] {
        let events = parse_split_everywhere(kind, &fixture("responses_tool_call.sse"));
        assert_eq!(text(&events), "Let me read both files.");
        assert_eq!(
            calls(&events),
            [
                call("call_12345xyz", "file_read", r#"{"path":"a.txt"}"#),
                call("call_67890abc", "file_read", r#"{"path":"b.txt"}"#),
            ]
        );
        assert_eq!(
            usage(&events),
            Some(Usage {
                input_tokens: 291,
                output_tokens: 58,
                cached_input_tokens: 128,
                cache_write_tokens: 0
            })
        );
        assert_eq!(stop(&events), StopReason::ToolUse);
    }
}

#[test]
fn responses_error_events_and_failures_are_typed() {
    let body = b"event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Rate limit reached\",\"param\":null,\"sequence_number\":3}\n\n";
    let (_, end) = run(ProviderKind::OpenAiResponses, 200, &SSE, &[body]);
    assert_eq!(end.unwrap_err().kind, ErrorKind::RateLimited);

    let failed = b"event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed to generate a response.\"}}}\n\n";
    let (_, end) = run(ProviderKind::OpenAiResponses, 200, &SSE, &[failed]);
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(error.message.contains("failed to generate"));

    let incomplete = b"event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"sequence_number\":9,\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":10,\"output_tokens\":16,\"total_tokens\":26}}}\n\n";
    let (events, end) = run(ProviderKind::OpenAiResponses, 200, &SSE, &[incomplete]);
    assert_eq!(end, Ok(()));
    assert_eq!(stop(&events), StopReason::MaxTokens);

    let truncated = fixture("responses_tool_call.sse");
    let truncated = &truncated[..truncated.len() - 40];
    let (_, end) = run(ProviderKind::Codex, 200, &SSE, &[truncated]);
    assert_eq!(end.unwrap_err().kind, ErrorKind::IncompleteStream);
}

#[test]
fn codex_usage_limit_reports_when_it_resets() {
    let body = r#"{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached","plan_type":"plus","resets_in_seconds":1800}}"#;
    let error = error_reply(ProviderKind::Codex, 429, &JSON, body);
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.retry_after, Some(Duration::from_secs(1800)));
}

// ---- Anthropic Messages (also Kimi Coding) ----

#[test]
fn anthropic_assembles_text_and_tool_use_at_every_split() {
    for kind in [ProviderKind::Anthropic, ProviderKind::KimiCoding] {
        let events = parse_split_everywhere(kind, &fixture("anthropic_tool_use.sse"));
        assert_eq!(text(&events), "Okay, let's check the files in src — ½ done");
        assert_eq!(
            calls(&events),
            [
                call(
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "file_list",
                    r#"{"path": "src"}"#
                ),
                call(
                    "toolu_01AbCdEfGhIjKlMnOpQrStUv",
                    "file_read",
                    r#"{"path": "README.md", "max_bytes": 4096}"#
                ),
            ]
        );
        // input_tokens excludes the 1024 cache reads on the wire; normalized, it includes them.
        assert_eq!(
            usage(&events),
            Some(Usage {
                input_tokens: 1496,
                output_tokens: 89,
                cached_input_tokens: 1024,
                cache_write_tokens: 0
            })
        );
        assert_eq!(stop(&events), StopReason::ToolUse);
    }
}

#[test]
fn anthropic_overloaded_mid_stream_is_typed() {
    let body = fixture("anthropic_tool_use.sse");
    let head = &body[..400];
    let split = head.iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let mut stream = head[..split].to_vec();
    stream.extend_from_slice(b"\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n");
    let (_, end) = run(ProviderKind::Anthropic, 200, &SSE, &[&stream]);
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Overloaded);
    assert!(error.message.contains("Overloaded"));
}

#[test]
fn anthropic_error_bodies_are_typed() {
    let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
    let error = error_reply(ProviderKind::Anthropic, 529, &JSON, overloaded);
    assert_eq!(error.kind, ErrorKind::Overloaded);
    assert!(error.kind.is_transient());
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50 requests per minute."}}"#;
    let error = error_reply(
        ProviderKind::Anthropic,
        429,
        &[
            ("content-type", "application/json"),
            ("retry-after", "Sat, 21 Nov 2099 00:00:00 GMT"),
        ],
        limited,
    );
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert!(error.retry_after.unwrap() > Duration::from_secs(3600));
    let long = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#;
    assert_eq!(
        error_reply(ProviderKind::Anthropic, 400, &JSON, long).kind,
        ErrorKind::ContextLengthExceeded
    );
    let auth =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    assert_eq!(
        error_reply(ProviderKind::KimiCoding, 401, &JSON, auth).kind,
        ErrorKind::Auth
    );
}

#[test]
fn anthropic_without_message_stop_is_incomplete() {
    let body = String::from_utf8(fixture("anthropic_tool_use.sse")).unwrap();
    let cut = body.replace(
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        "",
    );
    let (events, end) = run(ProviderKind::Anthropic, 200, &SSE, &[cut.as_bytes()]);
    assert_eq!(
        calls(&events).len(),
        2,
        "completed blocks are still reported"
    );
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::IncompleteStream);
    assert!(error.message.contains("message_stop"));
}

// ---- Gemini ----

#[test]
fn gemini_function_calls_keep_their_signature_at_every_split() {
    let events = parse_split_everywhere(ProviderKind::Gemini, &fixture("gemini_function_call.sse"));
    assert_eq!(text(&events), "I'll look at the directory first.");
    let found = calls(&events);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].name, "file_list");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&found[0].arguments).unwrap(),
        serde_json::json!({"path": "src", "recursive": false})
    );
    assert_eq!(found[0].signature.as_deref(), Some("CiQB0e2Kb7dN9nB1sig=="));
    assert_eq!(found[1].name, "file_read");
    assert_ne!(found[0].id, found[1].id, "made-up ids must differ");
    assert_eq!(
        usage(&events),
        Some(Usage {
            input_tokens: 96,
            output_tokens: 73,
            cached_input_tokens: 32,
            cache_write_tokens: 0
        })
    );
    assert_eq!(stop(&events), StopReason::ToolUse);
}

#[test]
fn gemini_without_finish_reason_is_incomplete() {
    let body = fixture("gemini_function_call.sse");
    let first = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (events, end) = run(ProviderKind::Gemini, 200, &SSE, &[&body[..first]]);
    assert_eq!(text(&events), "I'll look at the");
    assert_eq!(end.unwrap_err().kind, ErrorKind::IncompleteStream);
}

#[test]
fn gemini_error_bodies_are_typed() {
    let limited = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"38s"}]}}"#;
    let error = error_reply(ProviderKind::Gemini, 429, &JSON, limited);
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.retry_after, Some(Duration::from_secs(38)));
    let bad_key = r#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#;
    assert_eq!(
        error_reply(ProviderKind::Gemini, 400, &JSON, bad_key).kind,
        ErrorKind::Auth
    );
    let long = r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#;
    assert_eq!(
        error_reply(ProviderKind::Gemini, 400, &JSON, long).kind,
        ErrorKind::ContextLengthExceeded
    );
    let unavailable = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
    assert_eq!(
        error_reply(ProviderKind::Gemini, 503, &JSON, unavailable).kind,
        ErrorKind::Overloaded
    );
}

// ---- driver ----

#[test]
fn the_parser_refuses_misuse_and_stays_failed() {
    let mut parser = Provider::new(ProviderKind::OpenAi).parser();
    assert_eq!(
        parser.feed(b"data: x\n\n").unwrap_err().kind,
        ErrorKind::MalformedStream
    );
    assert!(parser.finish().is_err());

    let mut parser = Provider::new(ProviderKind::OpenAi).parser();
    parser.head(200, &SSE).unwrap();
    let error = parser.feed(b"data: nonsense\n\n").unwrap_err();
    assert_eq!(parser.feed(b"data: [DONE]\n\n").unwrap_err(), error);
    assert_eq!(parser.finish().unwrap_err(), error);
}

#[test]
fn a_reply_counts_as_started_once_it_yielded_an_event() {
    // Anthropic overloaded right after `message_start`: nothing shown, safe to retry.
    let mut parser = Provider::new(ProviderKind::Anthropic).parser();
    parser.head(200, &SSE).unwrap();
    let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}

event: ping
data: {"type": "ping"}

"#;
    assert!(parser.feed(start).unwrap().is_empty());
    assert!(!parser.stream_started());
    let overloaded = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let error = parser.feed(overloaded).unwrap_err();
    assert!(error.kind.is_transient() && !parser.stream_started());

    // Once text was yielded, a later failure is final.
    let mut parser = Provider::new(ProviderKind::OpenAi).parser();
    parser.head(200, &SSE).unwrap();
    let body = fixture("openai_chat_text.sse");
    let second = body.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let third = second
        + body[second..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap()
        + 2;
    assert!(
        parser.feed(&body[..second]).unwrap().is_empty(),
        "an empty first delta"
    );
    assert!(!parser.stream_started());
    assert!(!parser.feed(&body[second..third]).unwrap().is_empty());
    assert!(parser.stream_started());

    let mut parser = Provider::new(ProviderKind::OpenAi).parser();
    parser.head(429, &JSON).unwrap();
    parser.feed(b"{}").unwrap();
    assert!(
        !parser.stream_started(),
        "an error body is not a started stream"
    );
}

#[test]
fn bytes_after_the_terminal_event_are_ignored() {
    let mut body = fixture("openai_chat_text.sse");
    body.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n");
    let (events, end) = run(ProviderKind::OpenAi, 200, &SSE, &[&body]);
    assert_eq!(end, Ok(()));
    assert!(!text(&events).contains("late"));
}

#[test]
fn a_runaway_number_of_tool_calls_is_refused() {
    let mut body = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n",
    );
    for index in 0..300 {
        body.push_str(&format!(
            "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_{index}\",\"name\":\"file_read\",\"input\":{{}}}}}}\n\nevent: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{index}}}\n\n"
        ));
    }
    let (events, end) = run(ProviderKind::Anthropic, 200, &SSE, &[body.as_bytes()]);
    assert!(
        events.is_empty(),
        "the chunk that overflowed is dropped whole"
    );
    let error = end.unwrap_err();
    assert_eq!(error.kind, ErrorKind::ResponseTooLarge);
    assert!(error.message.contains("256"), "{error}");
}
