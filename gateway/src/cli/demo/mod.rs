//! The built-in demo provider: an OpenAI Chat Completions-compatible HTTP server on loopback.
//!
//! Why it exists: `spiderweb up` with no provider configured and no local model server still
//! shows the whole loop (tool calls in confined workers, an approval, a summary). It runs in
//! the `up` process and is registered with the broker like any local OpenAI-compatible server,
//! so every byte still goes gateway → broker → provider.
//!
//! Routes: `POST /v1/chat/completions` (streamed when `"stream": true`, which the gateway
//! always asks for; otherwise one `chat.completion` object), `GET /v1/models`. Anything else
//! gets OpenAI's error object with 404; unreadable bodies get 400.
//!
//! What it must never do: listen beyond loopback, buffer a request body without bound, or
//! pretend to be a real model (see [`script`]).

pub mod chunks;
pub mod script;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The model id the demo provider answers as.
pub const MODEL: &str = "spiderweb-demo";

/// Largest request body read (a long conversation with tool results stays far below).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Pause between two stream chunks, so a person sees the text arrive.
const CHUNK_INTERVAL: Duration = Duration::from_millis(15);

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A running demo provider.
pub struct DemoProvider {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DemoProvider {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime until dropped.
    pub async fn start() -> std::io::Result<DemoProvider> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener));
        Ok(DemoProvider { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to register with the broker (`…/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for DemoProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!(error = %e, "demo provider: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(route));
            let _ = conn.await;
        });
    }
}

async fn route(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    Ok(match (request.method(), path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => match read_json(request).await {
            Ok(body) => complete(&body),
            Err(response) => response,
        },
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "spiderweb"}]}),
        ),
        _ => error(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", &format!("no route for {path}")),
    })
}

async fn read_json(request: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let message = format!("cannot read the request body (at most {MAX_BODY_BYTES} bytes): {e}");
            return Err(error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_body", &message));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", &format!("body is not JSON: {e}"))
    })
}

fn complete(body: &Value) -> Response<Body> {
    if !body.get("messages").is_some_and(Value::is_array) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_messages",
            "messages must be an array",
        );
    }
    let reply = script::reply_for(body);
    let model = body.get("model").and_then(Value::as_str).unwrap_or(MODEL);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let id = format!("demo{created}{}", reply.text.len());
    let prompt_tokens = chunks::estimate_tokens(&body.to_string());
    if body.get("stream") != Some(&Value::Bool(true)) {
        return json_response(StatusCode::OK, &whole_completion(&reply, model, &id, created, prompt_tokens));
    }
    let events = chunks::sse_events(&reply, model, &id, created, prompt_tokens);
    let stream = futures_util::stream::unfold(events.into_iter(), |mut events| async move {
        let event = events.next()?;
        tokio::time::sleep(CHUNK_INTERVAL).await;
        Some((Ok::<_, Infallible>(Frame::data(event)), events))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static response parts are valid")
}

fn whole_completion(reply: &script::Reply, model: &str, id: &str, created: u64, prompt_tokens: u64) -> Value {
    let tool_calls: Vec<Value> = reply
        .tool_call
        .iter()
        .map(|(name, args)| json!({"id": format!("call_{id}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}}))
        .collect();
    let completion_tokens = chunks::estimate_tokens(&reply.text);
    let mut message = json!({"role": "assistant", "content": reply.text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({"id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": if reply.tool_call.is_some() { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}})
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("static response parts are valid")
}

/// OpenAI's documented error object.
fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}
