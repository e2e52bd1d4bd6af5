//! The built-in demo provider speaks OpenAI Chat Completions streaming exactly enough for the
//! gateway's own parser, through its whole script, with arguments every tool accepts.
//!
//! The provider runs in this process (as it does in `spiderweb up`); requests are built by
//! the gateway's real request builder and sent over real HTTP with hyper's client; replies
//! are parsed by the gateway's real `openai-compatible` stream parser.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use spiderweb_gateway::cli::demo::DemoProvider;
use spiderweb_gateway::providers::chat::{ChatRequest, Message, ToolCall, ToolSchema};
use spiderweb_gateway::providers::event::{StopReason, StreamEvent, Usage};
use spiderweb_gateway::providers::{Provider, ProviderKind};
use spiderweb_proto::worker::{
    EntryType, FileListArgs, FileListResult, FileReadArgs, FileReadResult, ListEntry, ShellExecArgs, ShellExecResult,
    tool_schemas,
};

/// What one request produced, as the gateway's parser saw it.
struct Parsed {
    text: String,
    calls: Vec<ToolCall>,
    usage: Option<Usage>,
    stop: Option<StopReason>,
}

async fn http(
    demo: &DemoProvider,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<(String, String)>, Vec<Bytes>) {
    let stream = tokio::net::TcpStream::connect(demo.addr()).await.expect("connect to the demo provider");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", demo.addr().to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.expect("send the request");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            chunks.push(data);
        }
    }
    (status, headers, chunks)
}

fn tools() -> Vec<ToolSchema> {
    tool_schemas()
        .into_iter()
        .map(|t| ToolSchema { name: t.name.into(), description: t.description.into(), parameters: t.parameters })
        .collect()
}

async fn turn(demo: &DemoProvider, messages: &[Message], with_tools: bool) -> Parsed {
    let provider = Provider::new(ProviderKind::OpenAiCompatible);
    let chat = ChatRequest {
        model: "spiderweb-demo".into(),
        system: Some("You are a helpful agent.".into()),
        messages: messages.to_vec(),
        tools: if with_tools { tools() } else { vec![] },
        max_output_tokens: 1024,
        temperature: None,
    };
    let request = provider.build(&chat).expect("the gateway builds the request");
    let (status, headers, chunks) = http(demo, request.method, &format!("/v1{}", request.path), request.body).await;
    let mut parser = provider.parser();
    parser.head(status, &headers).unwrap_or_else(|e| panic!("status {status}: {e}"));
    let mut events = Vec::new();
    for chunk in &chunks {
        events.extend(parser.feed(chunk).expect("every chunk parses"));
    }
    events.extend(parser.finish().expect("the stream ends with data: [DONE]"));
    let mut parsed = Parsed { text: String::new(), calls: vec![], usage: None, stop: None };
    for event in events {
        match event {
            StreamEvent::TextDelta(t) => parsed.text.push_str(&t),
            StreamEvent::ToolCallEnd(call) => parsed.calls.push(call),
            StreamEvent::Usage(u) => parsed.usage = Some(u),
            StreamEvent::Done { stop_reason } => parsed.stop = Some(stop_reason),
            _ => {}
        }
    }
    assert!(chunks.len() > 3, "the reply streams in several chunks, got {}", chunks.len());
    assert!(parsed.text.starts_with("[demo provider]"), "every text is labelled: {:?}", parsed.text);
    let usage = parsed.usage.expect("usage arrives in the last chunk");
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "usage counts tokens: {usage:?}");
    parsed
}

fn only_call(parsed: &Parsed, tool: &str) -> ToolCall {
    assert_eq!(parsed.stop, Some(StopReason::ToolUse), "a tool step ends with finish_reason tool_calls");
    assert_eq!(parsed.calls.len(), 1, "one call per step: {:?}", parsed.calls);
    let call = parsed.calls[0].clone();
    assert_eq!(call.name, tool);
    call
}

fn result_of(call: &ToolCall, content: String) -> Message {
    Message::ToolResult { call_id: call.id.clone(), name: call.name.clone(), content, is_error: false }
}

/// The conversation up to the approval request, with real result shapes of the worker.
async fn up_to_the_command(demo: &DemoProvider) -> (Vec<Message>, ToolCall) {
    let mut messages = vec![Message::User { text: "What is in my workspace?".into() }];
    let step = turn(demo, &messages, true).await;
    let list = only_call(&step, "file_list");
    let args: FileListArgs = serde_json::from_str(&list.arguments).expect("file_list arguments match its schema");
    assert_eq!(args.path.as_deref(), Some("."));
    messages.push(Message::Assistant { text: step.text, tool_calls: vec![list.clone()] });
    let listing = FileListResult {
        path: ".".into(),
        entries: vec![
            ListEntry { name: "WELCOME.md".into(), kind: EntryType::File },
            ListEntry { name: "src".into(), kind: EntryType::Directory },
        ],
        truncated: false,
    };
    messages.push(result_of(&list, serde_json::to_string(&listing).unwrap()));

    let step = turn(demo, &messages, true).await;
    assert!(step.text.contains("WELCOME.md, src"), "it says what it saw: {}", step.text);
    let read = only_call(&step, "file_read");
    let args: FileReadArgs = serde_json::from_str(&read.arguments).expect("file_read arguments match its schema");
    assert_eq!(args.path, "WELCOME.md", "it reads the file it saw");
    messages.push(Message::Assistant { text: step.text, tool_calls: vec![read.clone()] });
    let content = FileReadResult {
        path: "WELCOME.md".into(),
        bytes: 40,
        truncated: false,
        content: "# Welcome aboard the good ship\n\nmore".into(),
        ready: true,
        wait_until_ready: true,
    };
    messages.push(result_of(&read, serde_json::to_string(&content).unwrap()));

    let step = turn(demo, &messages, true).await;
    assert!(step.text.contains("Welcome aboard the good ship"), "it quotes the file: {}", step.text);
    let exec = only_call(&step, "shell_exec");
    let raw: Value = serde_json::from_str(&exec.arguments).unwrap();
    let args: ShellExecArgs = serde_json::from_value(raw.clone()).expect("shell_exec arguments match its schema");
    assert_eq!(args.command, "ls -la");
    assert_eq!(raw["require_approval"], json!(true), "it asks for approval: {raw}");
    assert!(raw["justification"].as_str().is_some_and(|j| !j.is_empty()), "with a justification: {raw}");
    messages.push(Message::Assistant { text: step.text, tool_calls: vec![exec.clone()] });
    (messages, exec)
}

#[tokio::test]
async fn the_whole_script_parses_and_the_summary_quotes_the_tools() {
    let demo = DemoProvider::start().await.unwrap();
    let (mut messages, exec) = up_to_the_command(&demo).await;
    let output = ShellExecResult {
        exit_code: 0,
        stdout: "total 8 drwx------ workspace-listing-marker\n".into(),
        stderr: String::new(),
    };
    messages.push(result_of(&exec, serde_json::to_string(&output).unwrap()));
    let summary = turn(&demo, &messages, true).await;
    assert!(summary.calls.is_empty(), "the summary calls no tool");
    assert_eq!(summary.stop, Some(StopReason::EndTurn), "the summary ends with finish_reason stop");
    for quoted in ["Welcome aboard the good ship", "workspace-listing-marker", "2 entries"] {
        assert!(summary.text.contains(quoted), "the summary quotes {quoted:?}: {}", summary.text);
    }
}

#[tokio::test]
async fn a_denied_command_gets_a_graceful_summary() {
    let demo = DemoProvider::start().await.unwrap();
    let (mut messages, exec) = up_to_the_command(&demo).await;
    messages.push(result_of(&exec, "the user denied this command".into()));
    let summary = turn(&demo, &messages, true).await;
    assert_eq!(summary.stop, Some(StopReason::EndTurn));
    assert!(summary.text.contains("did not run"), "it accepts the denial: {}", summary.text);
    assert!(summary.text.contains("Welcome aboard"), "and still summarises: {}", summary.text);
}

#[tokio::test]
async fn explain_requests_without_tools_get_an_explanation() {
    let demo = DemoProvider::start().await.unwrap();
    let messages = vec![Message::User { text: "Explain what the command `ls -la` does and why.".into() }];
    let reply = turn(&demo, &messages, false).await;
    assert!(reply.calls.is_empty() && reply.stop == Some(StopReason::EndTurn));
    assert!(reply.text.contains("ls -la") && reply.text.contains("confined"), "{}", reply.text);
}

#[tokio::test]
async fn bad_requests_get_openai_error_objects() {
    let demo = DemoProvider::start().await.unwrap();
    let (status, headers, body) = http(&demo, "POST", "/v1/chat/completions", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    let mut parser = Provider::new(ProviderKind::OpenAiCompatible).parser();
    parser.head(status, &headers).unwrap();
    for chunk in &body {
        parser.feed(chunk).unwrap();
    }
    let error = parser.finish().expect_err("a 400 is a failed reply");
    assert_eq!(error.status, Some(400));
    assert!(error.message.contains("not JSON"), "the gateway reads the provider's own message: {error:?}");
    let (status, _, body) = http(&demo, "GET", "/v1/models", vec![]).await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_slice(&body.concat()).unwrap();
    assert_eq!(models["data"][0]["id"], json!("spiderweb-demo"));
    let (status, _, _) = http(&demo, "GET", "/v1/nothing", vec![]).await;
    assert_eq!(status, 404);
}
