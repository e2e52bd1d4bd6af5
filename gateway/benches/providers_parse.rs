//! Parse throughput of each provider's stream parser on a long streamed reply.
//!
//! Run: `cargo bench -p spiderweb-gateway --bench providers_parse`. For each wire format
//! it synthesizes a reply in that provider's documented event shape (text deltas of a
//! few tokens each, then a tool call streamed in fragments, usage and the terminal
//! event), feeds it in 16 KiB chunks (bulk) and one event per chunk (how replies arrive
//! from a live provider), and prints events/s, MB/s and the mean cost per chunk.

use std::hint::black_box;
use std::time::{Duration, Instant};

use spiderweb_gateway::providers::{Provider, ProviderKind, StreamEvent};

const TEXT_DELTAS: usize = 20_000;
const ARG_FRAGMENTS: usize = 2_000;

fn openai_chat() -> Vec<String> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-B\",\"object\":\"chat.completion.chunk\",\"created\":1763758800,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_560af6e559\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
        )
    };
    let mut events = Vec::new();
    for i in 0..TEXT_DELTAS {
        events.push(chunk(&format!("{{\"content\":\" word{i}\"}}"), "null"));
    }
    events.push(chunk(
        r#"{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"file_write","arguments":""}}]}"#,
        "null",
    ));
    events.push(chunk(
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"content\":\""}}]}"#,
        "null",
    ));
    for _ in 0..ARG_FRAGMENTS {
        events.push(chunk(
            r#"{"tool_calls":[{"index":0,"function":{"arguments":"abc def "}}]}"#,
            "null",
        ));
    }
    events.push(chunk(
        r#"{"tool_calls":[{"index":0,"function":{"arguments":"\"}"}}]}"#,
        "null",
    ));
    events.push(chunk("{}", "\"tool_calls\""));
    events.push("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":900,\"completion_tokens\":24000,\"total_tokens\":24900}}\n\n".into());
    events.push("data: [DONE]\n\n".into());
    events
}

fn responses() -> Vec<String> {
    let mut events = Vec::new();
    let event = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    events.push(event("response.created", r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_1","status":"in_progress","output":[]}}"#.into()));
    for i in 0..TEXT_DELTAS {
        events.push(event(
            "response.output_text.delta",
            format!(r#"{{"type":"response.output_text.delta","sequence_number":{i},"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c5","output_index":0,"content_index":0,"delta":" word{i}","logprobs":[]}}"#),
        ));
    }
    events.push(event("response.output_item.added", r#"{"type":"response.output_item.added","output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_1","name":"file_write"}}"#.into()));
    for i in 0..ARG_FRAGMENTS {
        events.push(event(
            "response.function_call_arguments.delta",
            format!(r#"{{"type":"response.function_call_arguments.delta","sequence_number":{i},"item_id":"fc_1","output_index":1,"delta":"abc def "}}"#),
        ));
    }
    events.push(event("response.output_item.done", r#"{"type":"response.output_item.done","output_index":1,"item":{"id":"fc_1","type":"function_call","status":"completed","arguments":"{}","call_id":"call_1","name":"file_write"}}"#.into()));
    events.push(event("response.completed", r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","usage":{"input_tokens":900,"input_tokens_details":{"cached_tokens":0},"output_tokens":24000,"total_tokens":24900}}}"#.into()));
    events
}

fn anthropic() -> Vec<String> {
    let mut events = Vec::new();
    let event = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    events.push(event("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":900,"output_tokens":1}}}"#.into()));
    events.push(event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
            .into(),
    ));
    for i in 0..TEXT_DELTAS {
        events.push(event(
            "content_block_delta",
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":" word{i}"}}}}"#),
        ));
    }
    events.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#.into(),
    ));
    events.push(event("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"file_write","input":{}}}"#.into()));
    for _ in 0..ARG_FRAGMENTS {
        events.push(event(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"abc def "}}"#.into(),
        ));
    }
    events.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":1}"#.into(),
    ));
    events.push(event("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":24000}}"#.into()));
    events.push(event("message_stop", r#"{"type":"message_stop"}"#.into()));
    events
}

fn gemini() -> Vec<String> {
    let mut events = Vec::new();
    for i in 0..TEXT_DELTAS {
        events.push(format!(
            "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \" word{i}\"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 900,\"totalTokenCount\": 900}},\"modelVersion\": \"gemini-2.5-flash\"}}\r\n\r\n"
        ));
    }
    events.push("data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"file_write\",\"args\": {\"content\": \"abc\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 900,\"candidatesTokenCount\": 24000,\"totalTokenCount\": 24900}}\r\n\r\n".into());
    events
}

fn parse(kind: ProviderKind, chunks: &[&[u8]]) -> usize {
    let mut parser = Provider::new(kind).parser();
    parser
        .head(200, &[("content-type", "text/event-stream")])
        .unwrap();
    let mut count = 0;
    let mut done = false;
    for chunk in chunks {
        let events = black_box(parser.feed(chunk).unwrap());
        done |= matches!(events.last(), Some(StreamEvent::Done { .. }));
        count += events.len();
    }
    let last = parser.finish().unwrap();
    done |= matches!(last.last(), Some(StreamEvent::Done { .. }));
    assert!(done, "{kind:?} reply did not complete");
    count + last.len()
}

fn measure(kind: ProviderKind, label: &str, chunks: &[&[u8]], bytes: usize) {
    let mut events = parse(kind, chunks); // warm up
    let mut runs = 0u32;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        events = parse(kind, chunks);
        runs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64() / f64::from(runs);
    println!(
        "{:<18} {:<14} {:>8.1} MB/s {:>12.0} events/s {:>8.2} µs/chunk ({} events, {:.1} MB, {} chunks)",
        format!("{kind:?}"),
        label,
        bytes as f64 / elapsed / 1e6,
        events as f64 / elapsed,
        elapsed * 1e6 / chunks.len() as f64,
        events,
        bytes as f64 / 1e6,
        chunks.len(),
    );
}

fn main() {
    for (kind, events) in [
        (ProviderKind::OpenAi, openai_chat()),
        (ProviderKind::OpenAiResponses, responses()),
        (ProviderKind::Anthropic, anthropic()),
        (ProviderKind::Gemini, gemini()),
    ] {
        let body: Vec<u8> = events.concat().into_bytes();
        let bulk: Vec<&[u8]> = body.chunks(16 << 10).collect();
        measure(kind, "16KiB chunks", &bulk, body.len());
        let per_event: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        measure(kind, "event/chunk", &per_event, body.len());
    }
}
