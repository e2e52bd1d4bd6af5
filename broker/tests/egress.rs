//! Provider egress through the real broker against local servers speaking the providers'
//! wire formats: credential headers, streaming, cancellation, upstream errors, bad requests.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;
use spiderweb_client::broker::BrokerClient;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, CredentialSource, ErrorCode, ProviderRequest};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const OPENAI_KEY: &str = "sk-test-openai-3f9a1c";
const ANTHROPIC_KEY: &str = "sk-ant-test-77b2e0";
const KIMI_KEY: &str = "kimi-test-key-5d41";
const GEMINI_KEY: &str = "AIza-test-gemini-9c0e";
const AZURE_KEY: &str = "azure-test-key-1e2f";
const ALL_KEYS: &[&str] = &[OPENAI_KEY, ANTHROPIC_KEY, KIMI_KEY, GEMINI_KEY, AZURE_KEY];

fn chat_completion() -> serde_json::Value {
    json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",
           "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]})
}

/// Every provider kind pointed at one local server, each under its own path prefix.
fn all_providers(server: &LocalServer) -> serde_json::Value {
    json!({"providers": {
        "openai": {"base_url": server.url("/openai/v1")},
        "anthropic": {"base_url": server.url("/anthropic/v1")},
        "kimi-coding": {"base_url": server.url("/kimi/coding/v1")},
        "gemini": {"base_url": server.url("/gemini/v1beta")},
        "azure-openai": {"base_url": server.url("/azure/openai/deployments/gpt-4o")},
        "ollama": {"kind": "openai-compatible", "base_url": server.url("/ollama/v1")},
    }})
}

fn assert_no_key(text: &str, what: &str) {
    for key in ALL_KEYS {
        assert!(!text.contains(key), "a key leaked into {what}: {text}");
    }
}

#[tokio::test]
async fn each_provider_gets_its_own_credential_header_and_no_key_comes_back() {
    let server = LocalServer::start(|_| Reply::json(200, chat_completion())).await;
    let broker = Broker::start(BrokerSpec {
        config: all_providers(&server),
        env: vec![
            ("OPENAI_API_KEY".into(), OPENAI_KEY.into()),
            ("ANTHROPIC_API_KEY".into(), ANTHROPIC_KEY.into()),
            ("KIMICODE_API_KEY".into(), KIMI_KEY.into()),
            ("GEMINI_API_KEY".into(), GEMINI_KEY.into()),
            ("AZURE_OPENAI_API_KEY".into(), AZURE_KEY.into()),
        ],
        ..Default::default()
    });
    let mut client = broker.client().await;
    let cases = [
        ("openai", "/chat/completions"),
        ("anthropic", "/messages"),
        ("kimi-coding", "/messages"),
        ("gemini", "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
        ("azure-openai", "/chat/completions?api-version=2024-10-21"),
        ("ollama", "/chat/completions"),
    ];
    let mut wire = String::new();
    for (i, (provider, path)) in cases.iter().enumerate() {
        let got = call(&mut client, provider_request(i as u64 + 1, provider, path, json!({"model":"m"}))).await;
        assert_eq!(got.status, Some(200), "{provider}: {got:?}");
        assert!(got.ended);
        wire.push_str(&got.wire);
    }
    let seen = server.seen();
    let by_prefix = |prefix: &str| seen.iter().find(|s| s.path_and_query.starts_with(prefix)).unwrap().clone();

    let openai = by_prefix("/openai/v1/chat/completions");
    assert_eq!(openai.header("authorization"), Some(format!("Bearer {OPENAI_KEY}").as_str()));
    let anthropic = by_prefix("/anthropic/v1/messages");
    assert_eq!(anthropic.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(anthropic.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(anthropic.header("authorization"), None);
    let kimi = by_prefix("/kimi/coding/v1/messages");
    assert_eq!(kimi.header("x-api-key"), Some(KIMI_KEY), "KIMICODE_API_KEY wins over ANTHROPIC_API_KEY");
    let gemini = by_prefix("/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent");
    assert_eq!(gemini.path_and_query, "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse");
    assert_eq!(gemini.header("x-goog-api-key"), Some(GEMINI_KEY));
    assert!(!gemini.path_and_query.contains(GEMINI_KEY), "keys never go in URLs");
    let azure = by_prefix("/azure/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(azure.header("api-key"), Some(AZURE_KEY));
    let ollama = by_prefix("/ollama/v1/chat/completions");
    assert!(ollama.header("authorization").is_none() && ollama.header("x-api-key").is_none(), "{ollama:?}");
    assert_eq!(ollama.body, Bytes::from(json!({"model":"m"}).to_string()));

    assert_no_key(&wire, "replies");
    assert_no_key(&broker.stderr(), "the broker's log");
}

#[tokio::test]
async fn env_precedence_and_sources_are_reported_without_keys() {
    let broker = Broker::start(BrokerSpec {
        env: vec![
            ("OPENAI_CODEX_API_KEY".into(), "codex-key-aa".into()),
            ("OPENAI_API_KEY".into(), OPENAI_KEY.into()),
            ("KIMI_API_KEY".into(), KIMI_KEY.into()),
            ("ANTHROPIC_API_KEY".into(), ANTHROPIC_KEY.into()),
            ("GOOGLE_API_KEY".into(), GEMINI_KEY.into()),
        ],
        credentials: vec![("anthropic-api-key".into(), "from-systemd-credential\n".into())],
        config: json!({"providers": {"ollama": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}}}),
        ..Default::default()
    });
    let mut client = broker.client().await;
    let reply = client.call(BrokerRequest::CredentialStatus { id: 5 }).await.unwrap();
    let text = serde_json::to_string(&reply).unwrap();
    assert_no_key(&text, "the status reply");
    assert!(!text.contains("codex-key-aa") && !text.contains("from-systemd-credential"), "{text}");
    let BrokerReply::CredentialStatus { id: 5, providers } = reply else { panic!("{reply:?}") };
    let source = |id: &str| providers.iter().find(|p| p.provider == id).unwrap().clone();
    let env = |v: &str| Some(CredentialSource::Environment { variable: v.into() });
    assert_eq!(source("openai-codex-spark").source, env("OPENAI_CODEX_API_KEY"));
    assert_eq!(source("openai-codex").source, env("OPENAI_CODEX_API_KEY"));
    assert_eq!(source("openai").source, env("OPENAI_API_KEY"));
    assert_eq!(source("kimi-coding").source, env("KIMI_API_KEY"));
    assert_eq!(source("anthropic").source, Some(CredentialSource::SystemdCredential), "systemd credential beats env");
    assert_eq!(source("gemini").source, env("GOOGLE_API_KEY"));
    assert_eq!(source("azure-openai").source, None);
    assert!(source("ollama").keyless);
}

#[tokio::test]
async fn a_systemd_credential_is_sent_trimmed_and_missing_keys_say_where_to_put_one() {
    let server = LocalServer::start(|_| Reply::json(200, json!({"type":"message"}))).await;
    let broker = Broker::start(BrokerSpec {
        config: all_providers(&server),
        credentials: vec![("anthropic-api-key".into(), format!("{ANTHROPIC_KEY}\n"))],
        ..Default::default()
    });
    let mut client = broker.client().await;
    let got = call(&mut client, provider_request(1, "anthropic", "/messages", json!({}))).await;
    assert_eq!(got.status, Some(200));
    assert_eq!(server.seen()[0].header("x-api-key"), Some(ANTHROPIC_KEY));

    let got = call(&mut client, provider_request(2, "openai", "/chat/completions", json!({}))).await;
    let (code, message) = got.error.unwrap();
    assert_eq!(code, ErrorCode::NoCredential);
    assert!(
        message.contains("set-key openai") && message.contains("openai-api-key") && message.contains("OPENAI_API_KEY"),
        "{message}"
    );
    assert_eq!(server.seen().len(), 1, "nothing is sent without a credential");
}

#[tokio::test]
async fn a_streamed_reply_is_forwarded_chunk_by_chunk_before_the_upstream_finishes() {
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(8);
    let chunk_rx = std::sync::Mutex::new(Some(chunk_rx));
    let server = LocalServer::start(move |_| Reply::Stream {
        status: 200,
        headers: vec![
            ("content-type", "text/event-stream".into()),
            ("x-request-id", "req_123".into()),
            ("set-cookie", "s=1".into()),
        ],
        chunks: chunk_rx.lock().unwrap().take().expect("one streamed request"),
    })
    .await;
    let broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    client.send(provider_request(7, "openai", "/chat/completions", json!({"stream":true}))).await.unwrap();
    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    chunk_tx.send(Bytes::from(first)).await.unwrap();

    let head = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap();
    let BrokerReply::ResponseHead { id: 7, status: 200, headers } = head else { panic!("{head:?}") };
    assert!(headers.contains(&("content-type".into(), "text/event-stream".into())));
    assert!(headers.contains(&("x-request-id".into(), "req_123".into())));
    assert!(!headers.iter().any(|(n, _)| n == "set-cookie"), "cookies are not forwarded");
    let chunk = tokio::time::timeout(Duration::from_secs(10), client.next()).await.unwrap().unwrap();
    assert_eq!(
        chunk,
        BrokerReply::BodyChunk { id: 7, data: Bytes::from(first).into() },
        "first chunk while upstream is still open"
    );

    chunk_tx.send(Bytes::from("data: [DONE]\n\n")).await.unwrap();
    drop(chunk_tx);
    let rest = collect(&mut client, 7).await;
    assert_eq!(rest.body_text(), "data: [DONE]\n\n");
    assert!(rest.ended);
}

/// A broker with `OPENAI_API_KEY` set.
fn openai_broker(config: serde_json::Value) -> Broker {
    Broker::start(BrokerSpec { config, env: vec![("OPENAI_API_KEY".into(), OPENAI_KEY.into())], ..Default::default() })
}

type Upstreams = mpsc::Receiver<mpsc::Sender<Bytes>>;

/// Starts streamed request `id` and returns, once its head has arrived, the upstream's
/// chunk sender (dropping it ends the upstream body; `closed()` tells the upstream was aborted).
async fn open_stream(client: &mut BrokerClient, id: u64, upstreams: &mut Upstreams) -> mpsc::Sender<Bytes> {
    client.send(provider_request(id, "openai", "/responses", json!({"stream": true}))).await.unwrap();
    let head = client.next().await.unwrap();
    assert!(matches!(head, BrokerReply::ResponseHead { id: got, status: 200, .. } if got == id), "{head:?}");
    upstreams.recv().await.unwrap()
}

/// Reads replies until request `id` fails (skipping its body chunks) and returns the code.
async fn error_of(client: &mut BrokerClient, id: u64) -> ErrorCode {
    loop {
        match client.next().await.unwrap() {
            BrokerReply::BodyChunk { id: got, .. } if got == id => continue,
            BrokerReply::Error { id: Some(got), code, .. } if got == id => return code,
            other => panic!("{other:?}"),
        }
    }
}

/// A stream the test controls, plus a signal when the upstream side is dropped.
async fn endless_stream_server() -> (LocalServer, Upstreams) {
    let (senders_tx, senders_rx) = mpsc::channel::<mpsc::Sender<Bytes>>(8);
    let server = LocalServer::start(move |_| {
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(Bytes::from("data: {}\n\n")).unwrap();
        senders_tx.try_send(tx).unwrap();
        Reply::Stream { status: 200, headers: vec![("content-type", "text/event-stream".into())], chunks: rx }
    })
    .await;
    (server, senders_rx)
}

#[tokio::test]
async fn upstream_errors_and_rate_limits_are_forwarded_as_the_provider_sent_them() {
    let server = LocalServer::start(|seen| {
        if seen.path_and_query.starts_with("/anthropic") {
            Reply::Full {
                status: 429,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("retry-after", "17".into()),
                    ("anthropic-ratelimit-requests-remaining", "0".into()),
                    ("request-id", "req_01abc".into()),
                ],
                body: json!({"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}).to_string().into(),
            }
        } else {
            Reply::json(401, json!({"error":{"message":"Incorrect API key provided: sk-test-*****1c. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}))
        }
    })
    .await;
    let broker = Broker::start(BrokerSpec {
        config: all_providers(&server),
        env: vec![("OPENAI_API_KEY".into(), OPENAI_KEY.into()), ("ANTHROPIC_API_KEY".into(), ANTHROPIC_KEY.into())],
        ..Default::default()
    });
    let mut client = broker.client().await;
    let limited = call(&mut client, provider_request(1, "anthropic", "/messages", json!({}))).await;
    assert_eq!(limited.status, Some(429));
    for h in ["retry-after", "anthropic-ratelimit-requests-remaining", "request-id"] {
        assert!(limited.headers.iter().any(|(n, _)| n == h), "{h} forwarded: {:?}", limited.headers);
    }
    assert!(limited.body_text().contains("rate_limit_error"));
    let refused = call(&mut client, provider_request(2, "openai", "/chat/completions", json!({}))).await;
    assert_eq!(refused.status, Some(401));
    assert!(refused.body_text().contains("invalid_api_key"));
    assert_no_key(&(limited.wire + &refused.wire), "replies");
    assert_no_key(&broker.stderr(), "the broker's log");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_clear_error_without_the_key() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broker =
        openai_broker(json!({"providers": {"openai": {"base_url": format!("http://127.0.0.1:{closed_port}/v1")}}}));
    let mut client = broker.client().await;
    let got = call(&mut client, provider_request(1, "openai", "/models", json!({}))).await;
    let (code, message) = got.error.unwrap();
    assert_eq!(code, ErrorCode::UpstreamUnreachable);
    assert!(message.contains("openai") && message.contains("connect"), "{message}");
    assert_no_key(&(message + &broker.stderr()), "the error");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_broker_keeps_serving() {
    let server = LocalServer::start(|_| Reply::json(200, chat_completion())).await;
    let mut config = all_providers(&server);
    config["limits"] = json!({"max_request_body_bytes": 1024, "max_frame_bytes": 65536});
    config["providers"].as_object_mut().unwrap().remove("azure-openai");
    let broker = openai_broker(config);
    let mut client = broker.client().await;

    let request = |id: u64, provider: &str, method: &str, path: &str, headers: Vec<(String, String)>, body: Bytes| {
        BrokerRequest::ProviderRequest(ProviderRequest {
            id,
            provider: provider.into(),
            method: method.into(),
            path: path.into(),
            headers,
            body: body.into(),
        })
    };
    let cases = [
        (request(1, "nope", "POST", "/x", vec![], Bytes::new()), ErrorCode::UnknownProvider, "nope"),
        (request(2, "openai", "POST", "/../../admin", vec![], Bytes::new()), ErrorCode::PathNotAllowed, ".."),
        (
            request(3, "openai", "POST", "//evil.example/v1", vec![], Bytes::new()),
            ErrorCode::PathNotAllowed,
            "authority",
        ),
        (request(4, "openai", "POST", "/%2e%2e/admin", vec![], Bytes::new()), ErrorCode::PathNotAllowed, "encoded"),
        (
            request(
                5,
                "openai",
                "POST",
                "/chat/completions",
                vec![("Authorization".into(), "Bearer mine".into())],
                Bytes::new(),
            ),
            ErrorCode::HeaderNotAllowed,
            "authorization",
        ),
        (request(6, "openai", "DELETE", "/files/x", vec![], Bytes::new()), ErrorCode::MethodNotAllowed, "DELETE"),
        (
            request(7, "openai", "POST", "/chat/completions", vec![], Bytes::from(vec![b'x'; 2048])),
            ErrorCode::BodyTooLarge,
            "1024",
        ),
        (
            request(8, "azure-openai", "POST", "/chat/completions", vec![], Bytes::new()),
            ErrorCode::UnknownProvider,
            "base_url",
        ),
    ];
    for (req, code, needle) in cases {
        let id = req.id();
        let got = call(&mut client, req).await;
        let (got_code, message) = got.error.unwrap_or_else(|| panic!("request {id} was not refused"));
        assert_eq!(got_code, code, "request {id}: {message}");
        assert!(message.contains(needle), "request {id}: {message:?} should mention {needle:?}");
    }
    assert!(server.seen().is_empty(), "no refused request reached the upstream");

    // A frame whose JSON is not a request: answered, connection kept.
    let bad = br#"{"op":"provider_request","id":"not a number"}"#;
    let stream = client.stream_mut();
    stream.write_all(&(bad.len() as u32).to_be_bytes()).await.unwrap();
    stream.write_all(bad).await.unwrap();
    let reply = client.next().await.unwrap();
    assert!(matches!(reply, BrokerReply::Error { id: None, code: ErrorCode::MalformedRequest, .. }), "{reply:?}");
    let ok = call(&mut client, provider_request(9, "openai", "/chat/completions", json!({}))).await;
    assert_eq!(ok.status, Some(200), "the same connection still serves");

    // A frame above the limit loses the framing: error, then that connection closes.
    let stream = client.stream_mut();
    stream.write_all(&(10_000_000u32).to_be_bytes()).await.unwrap();
    let reply = client.next().await.unwrap();
    assert!(
        matches!(&reply, BrokerReply::Error { code: ErrorCode::MalformedRequest, message, .. } if message.contains("exceeds")),
        "{reply:?}"
    );
    assert!(client.next().await.is_err(), "connection closed after an oversize frame");

    let mut fresh = broker.client().await;
    let ok = call(&mut fresh, provider_request(1, "openai", "/chat/completions", json!({}))).await;
    assert_eq!(ok.status, Some(200), "the broker keeps serving new connections");
}

#[tokio::test]
async fn requests_on_one_connection_run_concurrently_and_replies_carry_their_ids() {
    let server = LocalServer::start(|seen| Reply::json(200, json!({"echo": seen.path_and_query}))).await;
    let broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    for id in 0..20u64 {
        client.send(provider_request(id, "openai", &format!("/r/{id}"), json!({}))).await.unwrap();
    }
    let mut bodies = std::collections::HashMap::<u64, Vec<u8>>::new();
    let mut ended = 0;
    while ended < 20 {
        match client.next().await.unwrap() {
            BrokerReply::ResponseHead { status, .. } => assert_eq!(status, 200),
            BrokerReply::BodyChunk { id, data } => bodies.entry(id).or_default().extend_from_slice(&data.0),
            BrokerReply::End { .. } => ended += 1,
            other => panic!("{other:?}"),
        }
    }
    for id in 0..20u64 {
        let body: serde_json::Value = serde_json::from_slice(&bodies[&id]).unwrap();
        assert_eq!(body["echo"], format!("/openai/v1/r/{id}"), "reply {id} matches its request");
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_told_why() {
    let broker = Broker::start(BrokerSpec { config: json!({"limits": {"max_connections": 1}}), ..Default::default() });
    let mut first = broker.client().await;
    assert!(matches!(
        first.call(BrokerRequest::CredentialStatus { id: 1 }).await.unwrap(),
        BrokerReply::CredentialStatus { .. }
    ));
    let mut second = broker.client().await;
    let reply = second.next().await.unwrap();
    assert!(
        matches!(&reply, BrokerReply::Error { code: ErrorCode::Busy, message, .. } if message.contains("limits.max_connections")),
        "{reply:?}"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = broker.client().await;
    assert!(matches!(
        third.call(BrokerRequest::CredentialStatus { id: 2 }).await.unwrap(),
        BrokerReply::CredentialStatus { .. }
    ));
}

#[tokio::test]
async fn a_large_upstream_body_is_split_into_frames_that_fit_the_limit() {
    let big = Bytes::from(vec![b'a'; 300_000]);
    let body = big.clone();
    let server = LocalServer::start(move |_| Reply::Full {
        status: 200,
        headers: vec![("content-type", "application/octet-stream".into())],
        body: body.clone(),
    })
    .await;
    let mut config = all_providers(&server);
    config["limits"] = json!({"max_request_body_bytes": 1024, "max_frame_bytes": 20000});
    let broker = openai_broker(config);
    let mut client = broker.client().await;
    let got = call(&mut client, provider_request(1, "openai", "/files/x/content", json!({}))).await;
    assert!(got.ended, "{:?}", got.error);
    assert_eq!(got.body.len(), big.len());
}

#[tokio::test]
async fn a_client_that_goes_away_aborts_its_upstream_request() {
    let (server, mut upstreams) = endless_stream_server().await;
    let broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    let upstream = open_stream(&mut client, 1, &mut upstreams).await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), upstream.closed())
        .await
        .expect("the broker closes the upstream connection when its client leaves");
}

#[tokio::test]
async fn cancel_aborts_one_request_and_the_connection_goes_on() {
    let (server, mut upstreams) = endless_stream_server().await;
    let broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    let upstream = open_stream(&mut client, 1, &mut upstreams).await;
    client.send(BrokerRequest::Cancel { id: 1 }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), upstream.closed()).await.expect("upstream aborted");
    assert_eq!(error_of(&mut client, 1).await, ErrorCode::Cancelled);
    open_stream(&mut client, 2, &mut upstreams).await;
}

#[tokio::test]
async fn duplicate_ids_in_flight_are_refused() {
    let (server, mut upstreams) = endless_stream_server().await;
    let broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    let _upstream = open_stream(&mut client, 1, &mut upstreams).await;
    client.send(provider_request(1, "openai", "/responses", json!({}))).await.unwrap();
    assert_eq!(error_of(&mut client, 1).await, ErrorCode::DuplicateRequestId);
}

#[tokio::test]
async fn the_upstream_concurrency_cap_makes_extra_requests_wait_then_refuses_them_as_busy() {
    let (server, mut upstreams) = endless_stream_server().await;
    let mut config = all_providers(&server);
    config["limits"] = json!({"max_concurrent_upstream": 1, "queue_timeout_ms": 300});
    let broker = openai_broker(config);
    let mut holder = broker.client().await;
    let upstream = open_stream(&mut holder, 1, &mut upstreams).await;

    let mut other = broker.client().await;
    other.send(provider_request(2, "openai", "/responses", json!({}))).await.unwrap();
    assert_eq!(error_of(&mut other, 2).await, ErrorCode::Busy);
    assert_eq!(server.seen().len(), 1, "the refused request never reached the upstream");

    drop(upstream); // the first stream ends, its slot frees
    assert!(collect(&mut holder, 1).await.ended);
    open_stream(&mut other, 3, &mut upstreams).await;
}

#[tokio::test]
async fn an_upstream_that_goes_silent_mid_stream_times_out() {
    let (server, mut upstreams) = endless_stream_server().await;
    let mut config = all_providers(&server);
    config["limits"] = json!({"idle_read_timeout_ms": 300});
    let broker = openai_broker(config);
    let mut client = broker.client().await;
    let _upstream = open_stream(&mut client, 1, &mut upstreams).await; // kept open, silent
    let got = collect(&mut client, 1).await;
    assert_eq!(got.body_text(), "data: {}\n\n", "what arrived was forwarded");
    let (code, _) = got.error.expect("the silence ends in an error, not a hang");
    assert_eq!(code, ErrorCode::UpstreamTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_client_runs_many_requests_on_one_connection_and_a_dropped_response_cancels() {
    use spiderweb_client::shared::{Outgoing, ProviderError, SharedClient};
    let (stream_server, mut upstreams) = endless_stream_server().await;
    let echo = LocalServer::start(|seen| Reply::json(200, json!({"echo": seen.path_and_query}))).await;
    let broker = openai_broker(json!({"providers": {
        "openai": {"base_url": echo.url("/v1")},
        "local": {"kind": "openai-compatible", "base_url": stream_server.url("/v1")},
    }}));
    let client = std::sync::Arc::new(SharedClient::connect(&broker.socket).await.unwrap());
    let outgoing = |provider: &str, path: String| Outgoing {
        provider: provider.into(),
        method: "POST".into(),
        path,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(b"{}"),
    };

    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let client = client.clone();
            let request = outgoing("openai", format!("/r/{i}"));
            tokio::spawn(async move {
                let mut response = client.provider_request(request).await.unwrap();
                assert_eq!(response.status, 200);
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.unwrap() {
                    body.extend_from_slice(&chunk);
                }
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["echo"], format!("/v1/r/{i}"));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    // A refused request is an error value, and the connection goes on.
    let refused = client.provider_request(outgoing("nope", "/x".into())).await.err().unwrap();
    assert!(matches!(refused, ProviderError::Broker { code: ErrorCode::UnknownProvider, .. }), "{refused:?}");

    // Dropping a response mid-stream cancels the upstream request.
    let mut streaming = client.provider_request(outgoing("local", "/chat/completions".into())).await.unwrap();
    assert_eq!(streaming.chunk().await.unwrap().unwrap(), Bytes::from("data: {}\n\n"));
    let upstream = upstreams.recv().await.unwrap();
    drop(streaming);
    tokio::time::timeout(Duration::from_secs(10), upstream.closed())
        .await
        .expect("dropping the response aborted the upstream");
    let again = client.provider_request(outgoing("openai", "/after".into())).await.unwrap();
    assert_eq!(again.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stream_in_flight_aborts_it_and_exits_cleanly() {
    let (server, mut upstreams) = endless_stream_server().await;
    let mut broker = openai_broker(all_providers(&server));
    let mut client = broker.client().await;
    let upstream = open_stream(&mut client, 1, &mut upstreams).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(broker.pid() as i32), nix::sys::signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(10), upstream.closed()).await.expect("upstream aborted at shutdown");
    let status = tokio::task::block_in_place(|| broker.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0));
    drop(client);
}
