//! The agent runtime when things go wrong or run out: provider failures, budgets, a context
//! that outgrows the window, a client that leaves mid-turn, a full queue.
//!
//! What a user relies on: every job ends — with a clear code and message — and nothing
//! hangs or keeps running (no upstream request, no tool) after the job is over.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderweb_tests::fake_provider::{ErrorCase, FakeProvider, Format, Reply};
use spiderweb_tests::stack::{ProviderSetup, Stack, TENANT_UID, follow_job, of_type, send_prompt};

const LIMIT: Duration = Duration::from_secs(60);

fn never_asked(event: &Value) -> Option<&'static str> {
    panic!("no approval was expected, got {event}");
}

async fn run_one(format: Format, script: Vec<Reply>, overlay: Value) -> (FakeProvider, Stack, Vec<Value>) {
    let fake = FakeProvider::start(format);
    fake.script(script);
    let stack = Stack::start(&ProviderSetup::fake(&fake), overlay);
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "hello").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    (fake, stack, events)
}

fn failure(events: &[Value]) -> (&str, &str) {
    let last = events.last().expect("events");
    assert_eq!(last["type"], "failed", "{events:#?}");
    (last["error"]["code"].as_str().unwrap(), last["error"]["message"].as_str().unwrap())
}

#[tokio::test]
async fn a_401_fails_at_once_and_says_how_to_set_a_key() {
    let (fake, _stack, events) =
        run_one(Format::Anthropic, vec![Reply::error(Format::Anthropic, ErrorCase::Unauthorized)], json!({})).await;
    let (code, message) = failure(&events);
    assert_eq!(code, "provider_auth");
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(message.contains("the broker sent the key from environment (ANTHROPIC_API_KEY)"), "{message}");
    assert!(message.contains("spiderweb-config config set-key") && message.contains("ANTHROPIC_API_KEY"), "{message}");
    assert_eq!(fake.requests().len(), 1, "an auth failure is not retried");
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_then_succeeds() {
    let script =
        vec![Reply::error(Format::OpenAiChat, ErrorCase::RateLimited { retry_after_secs: 1 }), Reply::text("made it")];
    let started = Instant::now();
    let (fake, _stack, events) = run_one(Format::OpenAiChat, script, json!({})).await;
    assert_eq!(events.last().unwrap()["result"], "made it", "{events:#?}");
    let retry = of_type(&events, "retry");
    assert_eq!(retry.len(), 1, "{events:#?}");
    assert_eq!(retry[0]["wait_ms"], json!(1000), "Retry-After is honoured");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn persistent_500s_give_up_after_the_attempts_with_a_clear_error() {
    let script = (0..4).map(|_| Reply::error(Format::Gemini, ErrorCase::ServerError)).collect();
    let (fake, _stack, events) = run_one(Format::Gemini, script, json!({})).await;
    let (code, message) = failure(&events);
    assert_eq!(code, "provider_server_error");
    assert!(message.contains("gave up after 4 attempts"), "{message}");
    assert_eq!(fake.requests().len(), 4);
    assert_eq!(of_type(&events, "retry").len(), 3);
}

#[tokio::test]
async fn a_malformed_stream_fails_the_job() {
    let (_fake, _stack, events) = run_one(Format::OpenAiResponses, vec![Reply::Malformed], json!({})).await;
    let (code, _) = failure(&events);
    assert_eq!(code, "provider_malformed_stream");
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_fails_the_job_without_a_retry() {
    // OpenAI's first chunks carry text, so the user has seen part of the answer.
    let (fake, _stack, events) = run_one(Format::OpenAiChat, vec![Reply::DropMidStream], json!({})).await;
    let (code, message) = failure(&events);
    assert!(matches!(code, "provider_incomplete_stream" | "provider_unreachable"), "{code}: {message}");
    assert!(!of_type(&events, "text").is_empty(), "part of the reply had streamed");
    assert_eq!(fake.requests().len(), 1, "a reply that started is never retried");
}

#[tokio::test]
async fn a_drop_before_any_visible_text_is_retried() {
    // Anthropic's first events are bookkeeping (message_start, content_block_start): nothing
    // was shown yet, so another attempt is invisible to the user.
    let (fake, _stack, events) =
        run_one(Format::Anthropic, vec![Reply::DropMidStream, Reply::text("second try")], json!({})).await;
    assert_eq!(events.last().unwrap()["result"], "second try", "{events:#?}");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_budget_stops_the_next_turn_with_the_reason() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::text("first").with_usage(900, 200)]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"budget": {"session_max_tokens": 1000}}}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "one").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    assert_eq!(events.last().unwrap()["result"], "first");
    let job = send_prompt(&mut client, "two").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    let (code, message) = failure(&events);
    assert_eq!(code, "budget_exceeded");
    assert!(message.contains("session token budget of 1000") && message.contains("1100"), "{message}");
    assert_eq!(fake.requests().len(), 1, "no model call once the budget is spent");
}

#[tokio::test]
async fn max_run_steps_stops_a_model_that_never_stops_calling_tools() {
    let call = || Reply::tool_calls([("file_list", "{}")]);
    let (fake, _stack, events) =
        run_one(Format::OpenAiChat, vec![call(), call(), call()], json!({"runtime": {"max_run_steps": 2}})).await;
    let (code, message) = failure(&events);
    assert_eq!(code, "max_run_steps");
    assert!(message.contains("max_run_steps"), "{message}");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_conversation_that_outgrows_the_window_is_compacted_not_failed() {
    // An unknown self-hosted model gets the catalog's conservative 32k-token window.
    let fake = FakeProvider::start(Format::OpenAiChat);
    let long = "x".repeat(40_000);
    fake.script(vec![
        Reply::text("ok one"),
        Reply::text("ok two"),
        Reply::text("SUMMARY: the user sent two long messages."),
        Reply::text("ok three"),
    ]);
    let mut setup = ProviderSetup::fake(&fake);
    setup.model = "my-local-model".into();
    setup.gateway_name = "openai-compatible".into();
    setup.id = "local".into();
    setup.broker_entry = json!({"kind": "openai-compatible", "base_url": fake.base_url()});
    let stack = Stack::start(&setup, json!({}));
    let mut client = stack.gateway.admin().await;
    for prompt in [format!("first {long}"), format!("second {long}")] {
        let job = send_prompt(&mut client, &prompt).await;
        follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    }
    let job = send_prompt(&mut client, &format!("third {long}")).await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    assert_eq!(events.last().unwrap()["result"], "ok three", "{events:#?}");
    assert_eq!(of_type(&events, "compaction").len(), 1, "{events:#?}");
    let requests = fake.requests();
    let last = requests.last().unwrap().body.to_string();
    assert!(last.contains("SUMMARY: the user sent two long messages."), "the summary replaces the old turns");
    assert!(!last.contains("first xxx"), "the summarised turns are no longer sent");
    assert!(last.contains("third xxx"));
    // The durable history still has everything.
    let history = client.walk_read("/agents/self/chat/history.ndjson").await;
    assert!(history.contains("first xxx") && history.contains("\"summary\""), "history keeps the originals");
}

/// Processes of `uid` whose command line contains `needle`.
fn processes_of(uid: u32, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(status) = std::fs::read_to_string(path.join("status")) else { continue };
        let owner = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
        if owner != Some(&uid.to_string()) {
            continue;
        }
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[tokio::test]
async fn a_client_leaving_mid_turn_stops_the_tool_and_the_job() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::tool_calls([("shell_exec", r#"{"command":"sleep 37; touch late.txt"}"#)])]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"approval_mode": "never"}}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "wait a while").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_of(TENANT_UID, "sleep 37").is_empty() {
        assert!(Instant::now() < deadline, "the tool never started:\n{}", stack.worker_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(TENANT_UID, "sleep 37").is_empty() {
        assert!(Instant::now() < deadline, "the tool outlived the client that started it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut other = stack.gateway.admin().await;
    let status = other.walk_read_json(&format!("/agents/self/jobs/{job}/status.json")).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["error"].as_str().unwrap().contains("disconnected"), "{status}");
    assert!(!stack.workspace().join("late.txt").exists());
    assert_eq!(fake.requests().len(), 1, "the model was not asked again");
}

#[tokio::test]
async fn a_client_leaving_while_the_model_streams_aborts_the_upstream_request() {
    let fake = FakeProvider::start(Format::Anthropic);
    fake.script(vec![Reply::Stall]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "think hard").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.requests().is_empty() {
        assert!(Instant::now() < deadline, "the provider was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let mut other = stack.gateway.admin().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = other.walk_read_json(&format!("/agents/self/jobs/{job}/status.json")).await;
        if status["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not end when its client left: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.open_connections() > 0 {
        assert!(Instant::now() < deadline, "the upstream request was not aborted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_full_queue_refuses_with_queue_saturated() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.always(Reply::Stall);
    let stack = Stack::start(
        &ProviderSetup::fake(&fake),
        json!({"runtime": {"runtime_worker_threads": 1, "runtime_request_queue_max": 1}}),
    );
    let mut client = stack.gateway.admin().await;
    send_prompt(&mut client, "one").await;
    send_prompt(&mut client, "two").await;
    let refused = client.walk_write("/agents/self/chat/control/input", b"three").await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert_eq!(refused["error"]["code"], "queue_saturated", "{refused}");
    assert_eq!(refused["error"]["message"], "runtime request queue saturated");
    let metrics = stack.gateway.metrics().await;
    assert_eq!(metrics.get("spiderweb_turns_running", &[]), Some(1.0), "operators see the load");
    assert_eq!(metrics.get("spiderweb_turns_queued", &[]), Some(1.0));
}
