//! Scriptable local LLM provider servers, for tests and benchmarks.
//!
//! Why it exists: the paid provider APIs cannot be reached from test machines, so tests talk
//! to a local HTTP/1.1 server on `127.0.0.1:0` that speaks each provider's documented
//! streaming wire format — paths, SSE event names and payloads, tool-call deltas, usage
//! blocks, error bodies and rate-limit headers — exactly as the gateway's parsers
//! (`gateway/src/providers/`) expect and the real services send:
//!
//! | [`Format`] | request | [`FakeProvider::base_url`] |
//! |---|---|---|
//! | `OpenAiChat` | `POST /v1/chat/completions`, SSE `data:` chunks, `data: [DONE]` | `http://127.0.0.1:<port>/v1` |
//! | `OpenAiResponses` | `POST /v1/responses`, SSE `event: response.*` | `http://127.0.0.1:<port>/v1` |
//! | `Anthropic` | `POST /v1/messages`, SSE `message_start` … `message_stop` | `http://127.0.0.1:<port>` |
//! | `Gemini` | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` | `http://127.0.0.1:<port>` |
//! | `AzureOpenAi` | `POST /openai/deployments/{deployment}/chat/completions?api-version=…`, as `OpenAiChat` | `http://127.0.0.1:<port>` |
//!
//! The base URL is what the gateway's request paths are relative to, i.e. what a broker
//! config's `providers.<id>.base_url` must be for requests built by `Provider::build`.
//!
//! Replies are scripted: [`FakeProvider::script`] queues [`Reply`]s, served one per request in
//! order. When the script is used up the server answers **500** in the format's error shape
//! ("fake provider: script exhausted after N replies") so a test that makes more requests than
//! it planned fails loudly — unless [`FakeProvider::always`] set a reply to repeat (benchmarks).
//! A request to a path the format does not have gets 404, and a body that is not JSON 400,
//! both in the format's error shape and without using a scripted reply. Every request is
//! recorded ([`FakeProvider::requests`]) so tests can assert what the gateway and broker sent.
//!
//! The server runs on threads of its own (its own tokio runtime), so it serves whether the
//! test is async or blocking; dropping the [`FakeProvider`] stops it and drops its connections.
//!
//! What it must never do: pretend to be a provider it is not (each format only answers its own
//! paths), or hang a test by accident (only [`Reply::Stall`] stalls, on purpose).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// A provider wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenAI Chat Completions (also OpenAI-compatible servers: Ollama, vLLM, llama.cpp).
    OpenAiChat,
    /// OpenAI Responses API.
    OpenAiResponses,
    /// Anthropic Messages (also Kimi Coding).
    Anthropic,
    /// Google Gemini `streamGenerateContent`.
    Gemini,
    /// Azure OpenAI: Chat Completions on a deployment, `api-key` header, Azure's error bodies.
    AzureOpenAi,
}

impl Format {
    /// Every format, for tests that cover them all.
    pub const ALL: [Format; 5] =
        [Format::OpenAiChat, Format::OpenAiResponses, Format::Anthropic, Format::Gemini, Format::AzureOpenAi];

    /// The path prefix below the server root that the gateway's paths are relative to.
    fn base_path(self) -> &'static str {
        match self {
            Format::OpenAiChat | Format::OpenAiResponses => "/v1",
            Format::Anthropic | Format::Gemini | Format::AzureOpenAi => "",
        }
    }

    /// Whether `path` (with query) is this format's streaming endpoint; for Gemini also
    /// returns the model named in the path.
    fn accepts(self, path_and_query: &str) -> Result<Option<String>, String> {
        let ok = match self {
            Format::OpenAiChat => path_and_query == "/v1/chat/completions",
            Format::OpenAiResponses => path_and_query == "/v1/responses",
            Format::Anthropic => path_and_query == "/v1/messages",
            Format::Gemini => {
                let model = path_and_query
                    .strip_prefix("/v1beta/models/")
                    .and_then(|rest| rest.strip_suffix(":streamGenerateContent?alt=sse"))
                    .filter(|model| !model.is_empty() && !model.contains('/'));
                return model.map(|m| Some(m.to_owned())).ok_or_else(|| not_found(path_and_query));
            }
            Format::AzureOpenAi => {
                let deployment = path_and_query
                    .strip_prefix("/openai/deployments/")
                    .and_then(|rest| rest.split_once("/chat/completions?api-version="))
                    .filter(|(deployment, version)| {
                        !deployment.is_empty() && !deployment.contains('/') && !version.is_empty()
                    })
                    .map(|(deployment, _)| deployment.to_owned());
                return deployment.map(Some).ok_or_else(|| not_found(path_and_query));
            }
        };
        if ok { Ok(None) } else { Err(not_found(path_and_query)) }
    }
}

impl Format {
    /// Whether `headers` carry `key` where this format's provider expects it.
    fn carries_key(self, headers: &[(String, String)], key: &str) -> bool {
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        match self {
            Format::OpenAiChat | Format::OpenAiResponses => header("authorization") == Some(&format!("Bearer {key}")),
            Format::Anthropic => header("x-api-key") == Some(key),
            Format::Gemini => header("x-goog-api-key") == Some(key),
            Format::AzureOpenAi => header("api-key") == Some(key),
        }
    }
}

fn not_found(path: &str) -> String {
    format!("fake provider: no endpoint {path}")
}

/// Token counts reported with a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Reported unless a reply says otherwise ([`Reply::with_usage`]).
pub const DEFAULT_USAGE: Usage = Usage { input_tokens: 100, output_tokens: 20 };

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer text, streamed in several chunks ([`FakeProvider::set_text_chunk_chars`]).
    Text(String),
    /// Parallel tool calls `(name, arguments JSON)`, each call's arguments in two deltas.
    ToolCalls(Vec<(String, String)>),
    /// Text first, then parallel tool calls.
    TextThenToolCalls(String, Vec<(String, String)>),
    /// A non-streamed HTTP reply (see [`Reply::error`] for the providers' real error bodies).
    Status { code: u16, headers: Vec<(String, String)>, body: String },
    /// A few good events, then one whose JSON does not parse, then the rest of a normal turn.
    Malformed,
    /// Headers and the first three events of a text turn, then the connection is closed
    /// mid-body.
    DropMidStream,
    /// Headers, then nothing until the client gives up (for timeouts).
    Stall,
    /// Another reply with its own usage numbers.
    WithUsage(Box<Reply>, Usage),
}

/// The provider errors tests need, rendered by [`Reply::error`] in each format's real shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCase {
    /// A wrong or missing key: 401 (Gemini answers 400 with reason `API_KEY_INVALID`, as the
    /// real API does).
    Unauthorized,
    /// 429 with `Retry-After` (Gemini also names the delay in a `RetryInfo` detail).
    RateLimited { retry_after_secs: u64 },
    /// 500.
    ServerError,
    /// Anthropic's 529 `overloaded_error`, Gemini's 503 `UNAVAILABLE`; OpenAI's 503 says
    /// `server_error`, as the real API does.
    Overloaded,
}

impl Reply {
    /// `Text` of `text`.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    /// `ToolCalls` from `(name, arguments JSON)` pairs.
    pub fn tool_calls<N: Into<String>, A: Into<String>>(calls: impl IntoIterator<Item = (N, A)>) -> Reply {
        Reply::ToolCalls(calls.into_iter().map(|(n, a)| (n.into(), a.into())).collect())
    }

    /// This reply, reporting `usage`.
    pub fn with_usage(self, input_tokens: u64, output_tokens: u64) -> Reply {
        Reply::WithUsage(Box::new(self), Usage { input_tokens, output_tokens })
    }

    /// The error `case` as `format`'s provider sends it: status, headers and JSON body.
    pub fn error(format: Format, case: ErrorCase) -> Reply {
        let (code, mut headers, body) = error_reply(format, case);
        headers.push(("content-type".into(), "application/json".into()));
        Reply::Status { code, headers, body: body.to_string() }
    }
}

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl Recorded {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct Settings {
    script: VecDeque<Reply>,
    always: Option<Reply>,
    served: usize,
    chunk_delay: Duration,
    text_chunk_chars: usize,
    required_key: Option<String>,
    requests: Vec<Recorded>,
}

/// Requests beyond this are counted but not kept, so a long benchmark does not grow memory.
pub const MAX_RECORDED: usize = 10_000;

/// A running fake provider. Stops when dropped.
pub struct FakeProvider {
    format: Format,
    addr: SocketAddr,
    state: Arc<Mutex<Settings>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    open: Arc<AtomicUsize>,
}

impl FakeProvider {
    /// Starts a server for `format` on `127.0.0.1:0`.
    pub fn start(format: Format) -> FakeProvider {
        let state = Arc::new(Mutex::new(Settings {
            script: VecDeque::new(),
            always: None,
            served: 0,
            chunk_delay: Duration::ZERO,
            text_chunk_chars: 8,
            required_key: None,
            requests: Vec::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel();
        let shared = state.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-provider-{}", addr.port()))
            .spawn(move || {
                // Two workers: a benchmark's thousand streams should not be held back by
                // the fake itself.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(serve(format, listener, shared, counter, stopped));
            })
            .expect("spawn the fake provider thread");
        FakeProvider { format, addr, state, stop: Some(stop), thread: Some(thread), open }
    }

    /// The format it speaks.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL the gateway's request paths are relative to (see the module doc).
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, self.format.base_path())
    }

    /// Queues `replies`, served in order after those already queued.
    pub fn script(&self, replies: Vec<Reply>) -> &Self {
        self.state.lock().unwrap().script.extend(replies);
        self
    }

    /// Serves `reply` whenever the script is empty (instead of 500).
    pub fn always(&self, reply: Reply) -> &Self {
        self.state.lock().unwrap().always = Some(reply);
        self
    }

    /// Sends streamed chunk `i` at `delay × (i + 1)` after the reply starts (0: at once).
    pub fn set_chunk_delay(&self, delay: Duration) -> &Self {
        self.state.lock().unwrap().chunk_delay = delay;
        self
    }

    /// How many characters of answer text go in one streamed chunk (default 8).
    pub fn set_text_chunk_chars(&self, chars: usize) -> &Self {
        self.state.lock().unwrap().text_chunk_chars = chars.max(1);
        self
    }

    /// Answers requests that do not carry `key` in the format's credential header
    /// (`authorization: Bearer`, `x-api-key`, `x-goog-api-key`) with the format's real
    /// "invalid key" error ([`ErrorCase::Unauthorized`]), without using a scripted reply.
    pub fn require_key(&self, key: impl Into<String>) -> &Self {
        self.state.lock().unwrap().required_key = Some(key.into());
        self
    }

    /// Every request received so far (the first [`MAX_RECORDED`]).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Client connections open now (a cancelled request closes its connection).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// How many scripted (or repeated) replies have been served.
    pub fn served(&self) -> usize {
        self.state.lock().unwrap().served
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn serve(
    format: Format,
    listener: std::net::TcpListener,
    state: Arc<Mutex<Settings>>,
    open: Arc<AtomicUsize>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let open = open.clone();
        open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(format, state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn answer(
    format: Format,
    state: Arc<Mutex<Settings>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let raw = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let reply = {
        let mut s = state.lock().unwrap();
        let authorized = s.required_key.as_deref().is_none_or(|key| format.carries_key(&headers, key));
        if s.requests.len() < MAX_RECORDED {
            s.requests.push(Recorded {
                method: method.clone(),
                path: path.clone(),
                headers,
                body: body.clone().unwrap_or(Value::Null),
            });
        }
        let route = if method == "POST" { format.accepts(&path) } else { Err(not_found(&path)) };
        match (route, &body) {
            (Err(message), _) => Err(render_error(format, 404, &message)),
            _ if !authorized => {
                let Reply::Status { code, headers, body } = Reply::error(format, ErrorCase::Unauthorized) else {
                    unreachable!("Reply::error is a Status")
                };
                Err(full(code, &headers, body))
            }
            (Ok(_), None) => Err(render_error(format, 400, "fake provider: the body is not JSON")),
            (Ok(model), Some(body)) => {
                let next = s.script.pop_front().or_else(|| s.always.clone());
                match next {
                    None => Err(render_error(
                        format,
                        500,
                        &format!("fake provider: script exhausted after {} replies", s.served),
                    )),
                    Some(reply) => {
                        s.served += 1;
                        let model = model
                            .or_else(|| body.get("model").and_then(Value::as_str).map(str::to_owned))
                            .unwrap_or_else(|| "fake-model".into());
                        Ok((reply, model, s.served, s.chunk_delay, s.text_chunk_chars))
                    }
                }
            }
        }
    };
    Ok(match reply {
        Err(response) => response,
        Ok((reply, model, serial, delay, chunk_chars)) => {
            let stream = Stream { format, model, serial, chunk_chars };
            stream.respond(reply, DEFAULT_USAGE, delay)
        }
    })
}

fn full(code: u16, headers: &[(String, String)], body: String) -> Response<Body> {
    let mut builder = Response::builder().status(code);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed()).unwrap()
}

fn render_error(format: Format, code: u16, message: &str) -> Response<Body> {
    let body = error_body(format, code, message);
    full(code, &[("content-type".into(), "application/json".into())], body.to_string())
}

/// One SSE stream being rendered: what the chunks need to know about the request.
struct Stream {
    format: Format,
    model: String,
    /// 1 for the first reply served, 2 for the second…: makes ids unique and predictable.
    serial: usize,
    chunk_chars: usize,
}

/// What the body sender does after its chunks.
enum Ending {
    Complete,
    Drop,
    Stall,
}

impl Stream {
    fn respond(&self, reply: Reply, usage: Usage, delay: Duration) -> Response<Body> {
        let (chunks, ending) = match reply {
            Reply::WithUsage(inner, usage) => return self.respond(*inner, usage, delay),
            Reply::Status { code, headers, body } => return full(code, &headers, body),
            Reply::Text(text) => (self.turn(&text, &[], usage), Ending::Complete),
            Reply::ToolCalls(calls) => (self.turn("", &calls, usage), Ending::Complete),
            Reply::TextThenToolCalls(text, calls) => (self.turn(&text, &calls, usage), Ending::Complete),
            Reply::Malformed => {
                let mut chunks = self.turn("ok", &[], usage);
                let bad = match self.format {
                    Format::OpenAiChat | Format::AzureOpenAi | Format::Gemini => {
                        "data: {\"choices\":[{\"delta\":\n\n".to_owned()
                    }
                    Format::OpenAiResponses => {
                        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\n\n"
                            .to_owned()
                    }
                    Format::Anthropic => {
                        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\n\n".to_owned()
                    }
                };
                let position = chunks.len().min(3);
                chunks.insert(position, Bytes::from(bad));
                (chunks, Ending::Complete)
            }
            Reply::DropMidStream => {
                let mut chunks = self.turn("this answer will be cut off", &[], usage);
                chunks.truncate(3);
                (chunks, Ending::Drop)
            }
            Reply::Stall => (Vec::new(), Ending::Stall),
        };
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tokio::spawn(async move {
            // An absolute schedule (chunk i at start + (i+1)·delay) keeps the rate steady: a
            // late chunk does not push back every later one.
            let start = tokio::time::Instant::now();
            for (position, chunk) in chunks.into_iter().enumerate() {
                if !delay.is_zero() {
                    tokio::time::sleep_until(start + delay * (position as u32 + 1)).await;
                }
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            }
            match ending {
                Ending::Complete => {}
                // An error from the body makes hyper close the connection without the final
                // zero-length chunk: the client sees the body break off. The pause lets hyper
                // flush the chunks before (it drops what it has buffered on an error).
                Ending::Drop => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Err(std::io::Error::other("fake provider drops the connection"))).await;
                }
                Ending::Stall => tx.closed().await,
            }
        });
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        Response::builder()
            .status(200)
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .header("x-request-id", format!("req_fake_{}", self.serial))
            .body(BodyExt::boxed(body))
            .unwrap()
    }

    /// The chunks of one successful turn: `text` (possibly empty) then `calls`.
    fn turn(&self, text: &str, calls: &[(String, String)], usage: Usage) -> Vec<Bytes> {
        let pieces = split_text(text, self.chunk_chars);
        let events = match self.format {
            Format::OpenAiChat | Format::AzureOpenAi => self.openai_chat(&pieces, calls, usage),
            Format::OpenAiResponses => self.openai_responses(text, &pieces, calls, usage),
            Format::Anthropic => self.anthropic(&pieces, calls, usage),
            Format::Gemini => self.gemini(&pieces, calls, usage),
        };
        events.into_iter().map(Bytes::from).collect()
    }

    fn call_id(&self, prefix: &str, index: usize) -> String {
        format!("{prefix}_fake{}x{index}", self.serial)
    }

    fn openai_chat(&self, pieces: &[String], calls: &[(String, String)], usage: Usage) -> Vec<String> {
        let id = format!("chatcmpl-fake{}", self.serial);
        let chunk = |delta: Value, finish: Value| {
            let payload = json!({
                "id": id, "object": "chat.completion.chunk", "created": 1_763_758_800, "model": self.model,
                "system_fingerprint": "fp_fake", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                "usage": null,
            });
            format!("data: {payload}\n\n")
        };
        let mut out = vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)];
        for piece in pieces {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
        for (index, (name, arguments)) in calls.iter().enumerate() {
            let start = json!({"index": index, "id": self.call_id("call", index), "type": "function",
                               "function": {"name": name, "arguments": ""}});
            out.push(chunk(json!({"tool_calls": [start]}), Value::Null));
            for half in halves(arguments) {
                out.push(chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": half}}]}),
                    Value::Null,
                ));
            }
        }
        let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
        out.push(chunk(json!({}), json!(finish)));
        let usage = json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_763_758_800, "model": self.model, "choices": [],
            "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                      "total_tokens": usage.input_tokens + usage.output_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0}},
        });
        out.push(format!("data: {usage}\n\n"));
        out.push("data: [DONE]\n\n".into());
        out
    }

    fn openai_responses(&self, text: &str, pieces: &[String], calls: &[(String, String)], usage: Usage) -> Vec<String> {
        let response_id = format!("resp_fake{}", self.serial);
        let mut sequence = 0u64;
        let mut event = |payload: Value| {
            let mut payload = payload;
            payload["sequence_number"] = json!(sequence);
            sequence += 1;
            format!("event: {}\ndata: {payload}\n\n", payload["type"].as_str().unwrap())
        };
        let response = |status: &str, output: Value, usage: Value| {
            json!({"id": response_id, "object": "response", "created_at": 1_763_758_802, "status": status,
                   "error": null, "incomplete_details": null, "model": self.model, "output": output, "usage": usage})
        };
        let mut out = vec![
            event(json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)})),
            event(json!({"type": "response.in_progress", "response": response("in_progress", json!([]), Value::Null)})),
        ];
        let mut output_index = 0;
        if !pieces.is_empty() {
            let item_id = format!("msg_fake{}", self.serial);
            out.push(event(json!({"type": "response.output_item.added", "output_index": 0,
                "item": {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}})));
            out.push(event(json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "annotations": [], "text": ""}})));
            for piece in pieces {
                out.push(event(json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                    "content_index": 0, "delta": piece, "logprobs": []})));
            }
            out.push(event(json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text, "logprobs": []})));
            out.push(event(json!({"type": "response.output_item.done", "output_index": 0,
                "item": {"id": item_id, "type": "message", "status": "completed",
                         "content": [{"type": "output_text", "annotations": [], "text": text}], "role": "assistant"}})));
            output_index = 1;
        }
        for (index, (name, arguments)) in calls.iter().enumerate() {
            let position = output_index + index;
            let item_id = self.call_id("fc", index);
            let call_id = self.call_id("call", index);
            out.push(event(json!({"type": "response.output_item.added", "output_index": position,
                "item": {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
                         "call_id": call_id, "name": name}})));
            for half in halves(arguments) {
                out.push(event(json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                    "output_index": position, "delta": half})));
            }
            out.push(event(json!({"type": "response.function_call_arguments.done", "item_id": item_id,
                "output_index": position, "arguments": arguments})));
            out.push(event(json!({"type": "response.output_item.done", "output_index": position,
                "item": {"id": item_id, "type": "function_call", "status": "completed", "arguments": arguments,
                         "call_id": call_id, "name": name}})));
        }
        let usage = json!({"input_tokens": usage.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                           "output_tokens": usage.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                           "total_tokens": usage.input_tokens + usage.output_tokens});
        out.push(event(json!({"type": "response.completed", "response": response("completed", json!([]), usage)})));
        out
    }

    fn anthropic(&self, pieces: &[String], calls: &[(String, String)], usage: Usage) -> Vec<String> {
        let event = |payload: Value| format!("event: {}\ndata: {payload}\n\n", payload["type"].as_str().unwrap());
        let mut out = vec![
            event(json!({"type": "message_start", "message": {
                "id": format!("msg_fake{}", self.serial), "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": usage.input_tokens, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1}}})),
            "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        ];
        let mut index = 0;
        if !pieces.is_empty() {
            out.push(event(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in pieces {
                out.push(event(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}})));
            }
            out.push(event(json!({"type": "content_block_stop", "index": 0})));
            index = 1;
        }
        for (position, (name, arguments)) in calls.iter().enumerate() {
            let block = index + position;
            out.push(event(json!({"type": "content_block_start", "index": block, "content_block":
                {"type": "tool_use", "id": self.call_id("toolu", position), "name": name, "input": {}}})));
            for half in std::iter::once("").chain(halves(arguments)) {
                out.push(event(json!({"type": "content_block_delta", "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": half}})));
            }
            out.push(event(json!({"type": "content_block_stop", "index": block})));
        }
        let stop = if calls.is_empty() { "end_turn" } else { "tool_use" };
        out.push(event(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": usage.output_tokens}})));
        out.push(event(json!({"type": "message_stop"})));
        out
    }

    fn gemini(&self, pieces: &[String], calls: &[(String, String)], usage: Usage) -> Vec<String> {
        let response_id = format!("fakeResponse{}", self.serial);
        let chunk = |parts: Value, finish: Option<&str>, usage_metadata: Value| {
            let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
            if let Some(reason) = finish {
                candidate["finishReason"] = json!(reason);
            }
            let payload = json!({"candidates": [candidate], "usageMetadata": usage_metadata,
                                 "modelVersion": self.model, "responseId": response_id});
            format!("data: {payload}\n\n")
        };
        let prompt_only = json!({"promptTokenCount": usage.input_tokens, "totalTokenCount": usage.input_tokens});
        let complete = json!({"promptTokenCount": usage.input_tokens, "candidatesTokenCount": usage.output_tokens,
                              "totalTokenCount": usage.input_tokens + usage.output_tokens});
        // Gemini sends each call whole, in the last chunk with the finish reason.
        let function_calls: Vec<Value> = calls
            .iter()
            .map(|(name, arguments)| {
                let args: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                json!({"functionCall": {"name": name, "args": args}})
            })
            .collect();
        let mut out = Vec::new();
        let last_text = if function_calls.is_empty() { pieces.len().saturating_sub(1) } else { pieces.len() };
        for piece in &pieces[..last_text] {
            out.push(chunk(json!([{"text": piece}]), None, prompt_only.clone()));
        }
        let mut final_parts: Vec<Value> = pieces[last_text..].iter().map(|p| json!({"text": p})).collect();
        final_parts.extend(function_calls);
        if final_parts.is_empty() {
            final_parts.push(json!({"text": ""}));
        }
        out.push(chunk(Value::Array(final_parts), Some("STOP"), complete));
        out
    }
}

/// `text` in pieces of at most `chars` characters.
fn split_text(text: &str, chars: usize) -> Vec<String> {
    let all: Vec<char> = text.chars().collect();
    all.chunks(chars).map(|piece| piece.iter().collect()).collect()
}

/// A tool call's arguments in two deltas, split on a character boundary.
fn halves(arguments: &str) -> [&str; 2] {
    let mut middle = arguments.len() / 2;
    while !arguments.is_char_boundary(middle) {
        middle -= 1;
    }
    [&arguments[..middle], &arguments[middle..]]
}

/// Status, extra headers and body of `case` in `format`'s documented shape.
fn error_reply(format: Format, case: ErrorCase) -> (u16, Vec<(String, String)>, Value) {
    match case {
        ErrorCase::Unauthorized => {
            let code = if format == Format::Gemini { 400 } else { 401 };
            (code, Vec::new(), error_body(format, 401, "invalid api key"))
        }
        ErrorCase::RateLimited { retry_after_secs } => {
            let mut headers = vec![("retry-after".to_owned(), retry_after_secs.to_string())];
            match format {
                Format::OpenAiChat | Format::OpenAiResponses | Format::AzureOpenAi => {
                    headers.push(("x-ratelimit-remaining-requests".into(), "0".into()));
                    headers.push(("x-ratelimit-reset-requests".into(), format!("{retry_after_secs}s")));
                }
                Format::Anthropic => {
                    headers.push(("anthropic-ratelimit-requests-remaining".into(), "0".into()));
                }
                Format::Gemini => {}
            }
            let mut body = error_body(format, 429, &format!("rate limit reached, retry in {retry_after_secs}s"));
            if format == Format::Gemini {
                body["error"]["details"] = json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                   "retryDelay": format!("{retry_after_secs}s")}]);
            }
            (429, headers, body)
        }
        ErrorCase::ServerError => (500, Vec::new(), error_body(format, 500, "the server had an error")),
        ErrorCase::Overloaded => {
            let code = if format == Format::Anthropic { 529 } else { 503 };
            (code, Vec::new(), error_body(format, code, "overloaded, please try again later"))
        }
    }
}

/// The JSON error body `format` sends with `status`.
fn error_body(format: Format, status: u16, message: &str) -> Value {
    match format {
        Format::OpenAiChat | Format::OpenAiResponses => {
            let (kind, code) = match status {
                400 => ("invalid_request_error", Value::Null),
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", json!("unknown_url")),
                429 => ("requests", json!("rate_limit_exceeded")),
                _ => ("server_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        // Azure's own shape: the status as a string code, no type.
        Format::AzureOpenAi => json!({"error": {"code": status.to_string(), "message": message}}),
        Format::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message},
                   "request_id": "req_fake"})
        }
        Format::Gemini => {
            let (code, state) = match status {
                401 => (400, "INVALID_ARGUMENT"),
                404 => (404, "NOT_FOUND"),
                429 => (429, "RESOURCE_EXHAUSTED"),
                503 => (503, "UNAVAILABLE"),
                400 => (400, "INVALID_ARGUMENT"),
                _ => (500, "INTERNAL"),
            };
            let mut body = json!({"error": {"code": code, "message": message, "status": state}});
            if status == 401 {
                body["error"]["message"] = json!("API key not valid. Please pass a valid API key.");
                body["error"]["details"] = json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]);
            }
            body
        }
    }
}
