//! The fake providers against the real consumers: each format's stream fetched over HTTP and
//! fed to the gateway's real parser (`Provider::parser`), then the same through the real
//! `spiderweb-broker` binary (which adds the key), and a plugin provider run by the broker
//! with the gateway's request line and answer parser at both ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use spiderweb_client::broker::BrokerClient;
use spiderweb_gateway::providers::plugin::{self, PluginReply};
use spiderweb_gateway::providers::{
    ChatRequest, ErrorKind, Message, Provider, ProviderError, ProviderKind, ProviderRequest, StopReason, StreamEvent,
    ToolCall, ToolSchema, Usage,
};
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, ErrorCode};
use spiderweb_tests::fake_provider::{ErrorCase, FakeProvider, Format, Reply};

const TEST_KEY: &str = "test-key";

fn kind(format: Format) -> ProviderKind {
    match format {
        Format::OpenAiChat => ProviderKind::OpenAi,
        Format::OpenAiResponses => ProviderKind::OpenAiResponses,
        Format::Anthropic => ProviderKind::Anthropic,
        Format::Gemini => ProviderKind::Gemini,
        Format::AzureOpenAi => ProviderKind::AzureOpenAi,
    }
}

fn chat(messages: Vec<Message>) -> ChatRequest {
    ChatRequest {
        model: "fake-model-1".into(),
        system: Some("You are a test.".into()),
        messages,
        tools: vec![ToolSchema {
            name: "file_read".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        }],
        max_output_tokens: 256,
        temperature: None,
    }
}

fn hello() -> ChatRequest {
    chat(vec![Message::User { text: "Say hello".into() }])
}

/// A reply as the HTTP client saw it: head, body chunks, and whether the body broke off.
struct Fetched {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    broken: bool,
}

/// POSTs `request` to `base_url` with a plain hyper HTTP/1.1 client (no broker, no key).
async fn fetch(base_url: &str, request: &ProviderRequest, body_timeout: Duration) -> Fetched {
    let url: hyper::Uri = format!("{base_url}{}", request.path).parse().unwrap();
    let authority = url.authority().unwrap().clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(url.path_and_query().unwrap().as_str())
        .header("host", authority.as_str());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response =
        sender.send_request(builder.body(Full::new(Bytes::from(request.body.clone()))).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers =
        response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned())).collect();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    let mut broken = false;
    loop {
        match tokio::time::timeout(body_timeout, body.frame()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                broken = true;
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push(data);
                }
            }
        }
    }
    Fetched { status, headers, chunks, broken }
}

/// Feeds a fetched reply through the gateway's parser for `format`.
fn parse(format: Format, fetched: &Fetched) -> Result<Vec<StreamEvent>, ProviderError> {
    let mut parser = Provider::new(kind(format)).parser();
    parser.head(fetched.status, &fetched.headers)?;
    let mut events = Vec::new();
    for chunk in &fetched.chunks {
        events.extend(parser.feed(chunk)?);
    }
    events.extend(parser.finish()?);
    Ok(events)
}

/// Builds `chat` for `fake`, sends it straight to the fake and parses the reply.
async fn turn(fake: &FakeProvider, chat: &ChatRequest) -> Result<Vec<StreamEvent>, ProviderError> {
    let request = Provider::new(kind(fake.format())).build(chat).unwrap();
    parse(fake.format(), &fetch(&fake.base_url(), &request, Duration::from_secs(10)).await)
}

fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn calls_of(events: &[StreamEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallEnd(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn usage_of(events: &[StreamEvent]) -> Option<Usage> {
    events.iter().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    })
}

#[tokio::test]
async fn each_format_streams_text_in_chunks_that_the_gateway_parser_reads() {
    let answer = "Grüße aus dem Netz 🕸️ — streamed in several chunks.";
    for format in Format::ALL {
        let fake = FakeProvider::start(format);
        fake.script(vec![Reply::text(answer).with_usage(11, 4)]);
        let events = turn(&fake, &hello()).await.unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(text_of(&events), answer, "{format:?}");
        let deltas = events.iter().filter(|e| matches!(e, StreamEvent::TextDelta(_))).count();
        assert!(deltas >= 3, "{format:?}: the text came in {deltas} deltas");
        assert_eq!(usage_of(&events).map(|u| (u.input_tokens, u.output_tokens)), Some((11, 4)), "{format:?}");
        assert_eq!(events.last(), Some(&StreamEvent::Done { stop_reason: StopReason::EndTurn }), "{format:?}");

        let built = Provider::new(kind(format)).build(&hello()).unwrap();
        let seen = fake.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(format!("{}{}", fake.base_url(), built.path), format!("http://{}{}", fake.addr(), seen[0].path));
        assert_eq!(seen[0].body, serde_json::from_slice::<Value>(&built.body).unwrap(), "{format:?}");
    }
}

#[tokio::test]
async fn parallel_tool_calls_after_text_and_their_results_paired_in_the_next_request() {
    let calls = vec![
        ("file_read".to_owned(), r#"{"path":"a.txt"}"#.to_owned()),
        ("file_list".to_owned(), r#"{"path":"src","recursive":true}"#.to_owned()),
    ];
    for format in Format::ALL {
        let fake = FakeProvider::start(format);
        fake.script(vec![Reply::TextThenToolCalls("Let me look.".into(), calls.clone()), Reply::text("Done.")]);
        let events = turn(&fake, &hello()).await.unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(text_of(&events), "Let me look.", "{format:?}");
        let got = calls_of(&events);
        assert_eq!(got.len(), 2, "{format:?}: {events:?}");
        for (call, (name, arguments)) in got.iter().zip(&calls) {
            assert_eq!(&call.name, name, "{format:?}");
            let parsed: Value = serde_json::from_str(&call.arguments).unwrap();
            assert_eq!(parsed, serde_json::from_str::<Value>(arguments).unwrap(), "{format:?}");
        }
        assert_ne!(got[0].id, got[1].id, "{format:?}: call ids are distinct");
        assert_eq!(events.last(), Some(&StreamEvent::Done { stop_reason: StopReason::ToolUse }), "{format:?}");

        // The next request carries both results, each paired with its call.
        let mut messages = vec![
            Message::User { text: "Say hello".into() },
            Message::Assistant { text: "Let me look.".into(), tool_calls: got.clone() },
        ];
        for call in &got {
            messages.push(Message::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content: format!("result of {}", call.name),
                is_error: false,
            });
        }
        let events = turn(&fake, &chat(messages)).await.unwrap();
        assert_eq!(text_of(&events), "Done.");
        let sent = &fake.requests()[1].body;
        for call in &got {
            let paired = paired_result(format, sent, call);
            assert_eq!(paired.as_deref(), Some(format!("result of {}", call.name).as_str()), "{format:?}: {sent}");
        }
    }
}

/// The result the request body `sent` pairs with `call`, found where `format` puts it.
fn paired_result(format: Format, sent: &Value, call: &ToolCall) -> Option<String> {
    let items = |key: &str| sent[key].as_array().cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().map(str::to_owned);
    match format {
        Format::OpenAiChat | Format::AzureOpenAi => items("messages")
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == call.id.as_str())
            .and_then(|m| text(&m["content"])),
        Format::OpenAiResponses => items("input")
            .iter()
            .find(|i| i["type"] == "function_call_output" && i["call_id"] == call.id.as_str())
            .and_then(|i| text(&i["output"])),
        Format::Anthropic => items("messages")
            .iter()
            .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
            .find_map(|block| {
                (block["type"] == "tool_result" && block["tool_use_id"] == call.id.as_str())
                    .then(|| text(&block["content"]).or_else(|| text(&block["content"][0]["text"])))
                    .flatten()
            }),
        Format::Gemini => {
            items("contents").iter().flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default()).find_map(|part| {
                let response = &part["functionResponse"];
                (response["name"] == call.name.as_str())
                    .then(|| {
                        let r = &response["response"];
                        text(&r["content"]).or_else(|| text(&r["result"])).or_else(|| text(&r["output"]))
                    })
                    .flatten()
            })
        }
    }
}

#[tokio::test]
async fn each_providers_errors_are_read_as_the_right_kind() {
    let cases = [
        (ErrorCase::Unauthorized, ErrorKind::Auth),
        (ErrorCase::RateLimited { retry_after_secs: 2 }, ErrorKind::RateLimited),
        (ErrorCase::ServerError, ErrorKind::Server),
        (ErrorCase::Overloaded, ErrorKind::Overloaded),
    ];
    for format in Format::ALL {
        let fake = FakeProvider::start(format);
        fake.script(cases.iter().map(|(case, _)| Reply::error(format, *case)).collect());
        for (case, expected) in cases {
            // OpenAI reports an overload as a 503 `server_error`: transient all the same.
            let openai = matches!(format, Format::OpenAiChat | Format::OpenAiResponses);
            let expected = if openai && expected == ErrorKind::Overloaded { ErrorKind::Server } else { expected };
            let error = turn(&fake, &hello()).await.unwrap_err();
            assert_eq!(error.kind, expected, "{format:?} {case:?}: {error}");
            if let ErrorCase::RateLimited { .. } = case {
                assert_eq!(error.status, Some(429));
                assert_eq!(error.retry_after, Some(Duration::from_secs(2)), "{format:?}: {error:?}");
            }
            if format == Format::Anthropic && case == ErrorCase::Overloaded {
                assert_eq!(error.status, Some(529));
            }
        }
    }
}

#[tokio::test]
async fn malformed_dropped_and_stalled_streams_fail_clearly() {
    for format in Format::ALL {
        let fake = FakeProvider::start(format);
        fake.script(vec![Reply::Malformed, Reply::DropMidStream, Reply::Stall]);
        let error = turn(&fake, &hello()).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::MalformedStream, "{format:?}: {error}");

        let request = Provider::new(kind(format)).build(&hello()).unwrap();
        let dropped = fetch(&fake.base_url(), &request, Duration::from_secs(10)).await;
        assert!(dropped.broken, "{format:?}: the body should break off");
        assert!(!dropped.chunks.is_empty(), "{format:?}: some chunks came first");
        let error = parse(format, &dropped).unwrap_err();
        assert_eq!(error.kind, ErrorKind::IncompleteStream, "{format:?}: {error}");

        let stalled = fetch(&fake.base_url(), &request, Duration::from_millis(300)).await;
        assert_eq!(stalled.status, 200, "{format:?}");
        assert!(stalled.chunks.is_empty() && !stalled.broken, "{format:?}: headers, then nothing");
    }
}

#[tokio::test]
async fn a_required_key_missing_from_the_request_is_the_providers_real_401() {
    for format in Format::ALL {
        let fake = FakeProvider::start(format);
        fake.require_key(TEST_KEY).script(vec![Reply::text("never served")]);
        let error = turn(&fake, &hello()).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Auth, "{format:?}: {error}");
        assert_eq!(fake.served(), 0, "{format:?}: the scripted reply is kept");
    }
}

#[tokio::test]
async fn an_exhausted_script_answers_500_and_unknown_paths_404() {
    let fake = FakeProvider::start(Format::Anthropic);
    fake.script(vec![Reply::text("only one")]);
    assert_eq!(text_of(&turn(&fake, &hello()).await.unwrap()), "only one");
    let error = turn(&fake, &hello()).await.unwrap_err();
    assert_eq!((error.kind, error.status), (ErrorKind::Server, Some(500)));
    assert!(error.message.contains("script exhausted after 1 replies"), "{error}");

    let mut request = Provider::new(ProviderKind::Anthropic).build(&hello()).unwrap();
    request.path = "/v1/complete".into();
    let fetched = fetch(&fake.base_url(), &request, Duration::from_secs(10)).await;
    assert_eq!(fetched.status, 404);
    assert_eq!(fake.served(), 1, "a wrong path does not use up a scripted reply");

    let fake = FakeProvider::start(Format::Gemini);
    fake.always(Reply::text("again"));
    for _ in 0..3 {
        assert_eq!(text_of(&turn(&fake, &hello()).await.unwrap()), "again");
    }
    assert!(fake.requests()[0].path.ends_with("/models/fake-model-1:streamGenerateContent?alt=sse"));
}

// ---------------------------------------------------------------------------------------------
// Through the real broker
// ---------------------------------------------------------------------------------------------

/// The `spiderweb-broker` binary built next to this test (`cargo build --workspace --bins`).
fn broker_bin() -> PathBuf {
    let path = spiderweb_tests::bin_dir().join("spiderweb-broker");
    assert!(path.is_file(), "{} not found: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A running broker in its own temp dir; killed when dropped.
struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Broker {
    fn start(config: Value, env: &[(&str, &str)], credentials: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("broker.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let socket = dir.path().join("run/broker.sock");
        let mut command = Command::new(broker_bin());
        command
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("CODEX_HOME", dir.path().join("codex"))
            .env("SPIDERWEB_BROKER_LOG", "debug");
        if !credentials.is_empty() {
            let creds = dir.path().join("credentials");
            std::fs::create_dir_all(&creds).unwrap();
            for (name, value) in credentials {
                std::fs::write(creds.join(name), value).unwrap();
            }
            command.env("CREDENTIALS_DIRECTORY", creds);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        let mut broker = Broker { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !broker.socket.exists() {
            if let Some(status) = broker.child.try_wait().unwrap() {
                panic!("the broker exited ({status}): {}", broker.stderr());
            }
            assert!(Instant::now() < deadline, "the broker did not listen within 20 s: {}", broker.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// A connection; the socket file exists a moment before the broker listens, so a refused
    /// connection is retried for a bounded time.
    async fn client(&self) -> BrokerClient {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match BrokerClient::connect(&self.socket).await {
                Ok(client) => return client,
                Err(spiderweb_client::broker::ClientError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("connect to the broker: {e:?}\n{}", self.stderr()),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one provider request produced through the broker.
struct Brokered {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    error: Option<(ErrorCode, String)>,
    wire: String,
}

async fn through_broker(client: &mut BrokerClient, id: u64, provider: &str, request: &ProviderRequest) -> Brokered {
    client
        .send(BrokerRequest::ProviderRequest(spiderweb_proto::broker::ProviderRequest {
            id,
            provider: provider.into(),
            method: request.method.into(),
            path: request.path.clone(),
            headers: request.headers.iter().map(|(n, v)| ((*n).to_owned(), v.clone())).collect(),
            body: Bytes::from(request.body.clone()).into(),
        }))
        .await
        .unwrap();
    let mut got = Brokered { status: None, headers: vec![], chunks: vec![], error: None, wire: String::new() };
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("a reply").unwrap();
        got.wire.push_str(&serde_json::to_string(&reply).unwrap());
        assert_eq!(reply.id(), Some(id), "{reply:?}");
        match reply {
            BrokerReply::ResponseHead { status, headers, .. } => {
                got.status = Some(status);
                got.headers = headers;
            }
            BrokerReply::BodyChunk { data, .. } => got.chunks.push(data.0),
            BrokerReply::End { .. } => return got,
            BrokerReply::Error { code, message, .. } => {
                got.error = Some((code, message));
                return got;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

impl Brokered {
    fn parse(&self, format: Format) -> Result<Vec<StreamEvent>, ProviderError> {
        assert!(self.error.is_none(), "the broker refused: {:?}", self.error);
        parse(
            format,
            &Fetched {
                status: self.status.unwrap(),
                headers: self.headers.clone(),
                chunks: self.chunks.clone(),
                broken: false,
            },
        )
    }
}

#[tokio::test]
async fn every_format_through_the_real_broker_with_its_key_added() {
    let fakes: Vec<(&str, FakeProvider)> = vec![
        ("openai", FakeProvider::start(Format::OpenAiChat)),
        ("openai-responses", FakeProvider::start(Format::OpenAiResponses)),
        ("anthropic", FakeProvider::start(Format::Anthropic)),
        ("gemini", FakeProvider::start(Format::Gemini)),
        ("azure-openai", FakeProvider::start(Format::AzureOpenAi)),
    ];
    let mut providers = serde_json::Map::new();
    for (id, fake) in &fakes {
        let mut entry = json!({"base_url": fake.base_url()});
        if *id == "openai-responses" {
            entry["kind"] = json!("openai");
        }
        providers.insert((*id).to_owned(), entry);
        fake.require_key(TEST_KEY).script(vec![
            Reply::TextThenToolCalls("Checking.".into(), vec![("file_read".into(), r#"{"path":"a"}"#.into())]),
            Reply::error(fake.format(), ErrorCase::RateLimited { retry_after_secs: 3 }),
        ]);
    }
    let broker = Broker::start(
        json!({"providers": providers}),
        &[
            ("OPENAI_API_KEY", TEST_KEY),
            ("ANTHROPIC_API_KEY", TEST_KEY),
            ("GEMINI_API_KEY", TEST_KEY),
            ("AZURE_OPENAI_API_KEY", TEST_KEY),
        ],
        // A provider that is not built in gets its key from a systemd credential.
        &[("openai-responses-api-key", TEST_KEY)],
    );
    let mut client = broker.client().await;
    let mut wire = String::new();
    for (n, (id, fake)) in fakes.iter().enumerate() {
        let format = fake.format();
        let request = Provider::new(kind(format)).build(&hello()).unwrap();
        let got = through_broker(&mut client, 2 * n as u64 + 1, id, &request).await;
        wire.push_str(&got.wire);
        let events = got.parse(format).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(text_of(&events), "Checking.", "{id}");
        assert_eq!(calls_of(&events).len(), 1, "{id}");
        assert_eq!(events.last(), Some(&StreamEvent::Done { stop_reason: StopReason::ToolUse }), "{id}");

        let seen = &fake.requests()[0];
        let (header, value) = match format {
            Format::OpenAiChat | Format::OpenAiResponses => ("authorization", format!("Bearer {TEST_KEY}")),
            Format::Anthropic => ("x-api-key", TEST_KEY.to_owned()),
            Format::Gemini => ("x-goog-api-key", TEST_KEY.to_owned()),
            Format::AzureOpenAi => ("api-key", TEST_KEY.to_owned()),
        };
        assert_eq!(seen.header(header), Some(value.as_str()), "{id}: {:?}", seen.headers);
        assert!(!seen.path.contains(TEST_KEY), "{id}: keys never go in URLs");

        // A 429 keeps its Retry-After through the broker.
        let got = through_broker(&mut client, 2 * n as u64 + 2, id, &request).await;
        wire.push_str(&got.wire);
        let error = got.parse(format).unwrap_err();
        assert_eq!((error.kind, error.retry_after), (ErrorKind::RateLimited, Some(Duration::from_secs(3))), "{id}");
    }
    assert!(!wire.contains(TEST_KEY), "a key came back over the broker socket");
    assert!(!broker.stderr().contains(TEST_KEY), "a key is in the broker's log");
}

#[tokio::test]
async fn a_plugin_provider_end_to_end_gateway_request_broker_run_gateway_parse() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("plugin.sh");
    // Answers with a tool call whose arguments quote the key it was given, so the test sees
    // that the key arrived (and only in the plugin).
    std::fs::write(
        &script,
        r#"cat > "$1/request"
printf '{"jsonrpc":"2.0","id":1,"result":{"content":"calling","tool_calls":[{"id":"c1","name":"file_read","arguments":{"path":"%s"}}],"usage":{"input_tokens":7,"output_tokens":3}}}\n' "${MY_PLUGIN_KEY:-none}" | sed 's/test-key/key-seen/'
"#,
    )
    .unwrap();
    let broker = Broker::start(
        json!({"providers": {"my-llm": {"kind": "plugin", "command": "/bin/sh",
            "args": [script, dir.path()], "key_env": "MY_PLUGIN_KEY", "timeout_ms": 20000}}}),
        &[("MY_PLUGIN_KEY", TEST_KEY)],
        &[],
    );
    let mut client = broker.client().await;
    let chat = hello();
    let request = plugin::request(&chat);
    let got = through_broker(&mut client, 1, "my-llm", &request).await;
    assert_eq!(got.status, Some(200), "{:?}", got.error);
    let mut reply = PluginReply::new("my-llm");
    for chunk in &got.chunks {
        reply.feed(chunk).unwrap();
    }
    let events = reply.finish().unwrap();
    assert_eq!(text_of(&events), "calling");
    let calls = calls_of(&events);
    assert_eq!(calls[0].arguments, r#"{"path":"key-seen"}"#, "the plugin got the key through key_env");
    assert_eq!(usage_of(&events).map(|u| (u.input_tokens, u.output_tokens)), Some((7, 3)));
    let mut expected = plugin::request_line(&chat);
    expected.push(b'\n');
    assert_eq!(std::fs::read(dir.path().join("request")).unwrap(), expected);
    assert!(!got.wire.contains(TEST_KEY) && !broker.stderr().contains(TEST_KEY));
}
