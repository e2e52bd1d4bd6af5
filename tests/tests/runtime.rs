//! The agent runtime end to end: a real broker, worker supervisor and gateway, and a local
//! provider server speaking each provider's real wire format.
//!
//! What a user relies on: a prompt written to the chat input becomes a job whose events
//! stream live; the model's tool calls run confined in the project's workspace (after a
//! human's approval when policy asks for it); the answer lands in `result.txt`; the
//! conversation is durable and continues after a restart.

use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::fake_provider::{FakeProvider, Format, Reply};
use spiderweb_tests::stack::{ProviderSetup, Stack, TEST_KEY, follow_job, of_type, send_prompt, streamed_text};

const LIMIT: Duration = Duration::from_secs(60);

fn never_asked(event: &Value) -> Option<&'static str> {
    panic!("no approval was expected, got {event}");
}

/// One tool-call cycle through `format`: file_read of a seeded file, then an answer.
async fn tool_call_cycle(format: Format) {
    let fake = FakeProvider::start(format);
    fake.script(vec![
        Reply::tool_calls([("file_read", r#"{"path":"notes.txt"}"#)]).with_usage(120, 15),
        Reply::text("The notes say: hello from the workspace.").with_usage(180, 12),
    ]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({}));
    stack.seed_file("notes.txt", "hello from the workspace\n");
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "What do my notes say?").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;

    let calls = of_type(&events, "tool_call");
    assert_eq!(calls.len(), 1, "{format:?}: {events:#?}");
    assert_eq!(calls[0]["tool"], "file_read");
    let results = of_type(&events, "tool_result");
    assert_eq!(results[0]["ok"], json!(true), "{format:?}: the confined worker read the file: {events:#?}");
    assert!(results[0]["content"].as_str().unwrap().contains("hello from the workspace"), "{results:?}");
    assert_eq!(streamed_text(&events), "The notes say: hello from the workspace.", "{format:?}: deltas stream");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "done", "{format:?}: {events:#?}");
    assert_eq!(last["result"], "The notes say: hello from the workspace.");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "events are numbered 1, 2, 3…: {seqs:?}");
    let usage = of_type(&events, "usage");
    assert_eq!(usage.len(), 2, "one usage record per model call");
    assert!(usage[0]["cost_usd"].as_f64().unwrap() > 0.0, "known model, priced from the catalog: {usage:?}");

    assert_eq!(client.walk_read(&format!("/agents/self/jobs/{job}/result.txt")).await, last["result"]);
    let status = client.walk_read_json(&format!("/agents/self/jobs/{job}/status.json")).await;
    assert_eq!(status["state"], "done");

    // What the provider received: the broker's key, and the tool result paired with its call.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{format:?}");
    for r in &requests {
        let auth = [r.header("authorization"), r.header("x-api-key"), r.header("x-goog-api-key")];
        assert!(
            auth.iter().flatten().any(|v| v.contains(TEST_KEY)),
            "{format:?}: the broker adds the key: {:?}",
            r.headers
        );
    }
    let second = requests[1].body.to_string();
    assert!(
        second.contains("hello from the workspace"),
        "{format:?}: the tool result goes back to the model: {second}"
    );
    assert!(second.contains("What do my notes say?"), "{format:?}: the conversation goes back too");

    // The transcript is durable and readable.
    let history = client.walk_read("/agents/self/chat/history.ndjson").await;
    let roles: Vec<String> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{history}");
}

#[tokio::test]
async fn openai_chat_tool_call_cycle() {
    tool_call_cycle(Format::OpenAiChat).await;
}

#[tokio::test]
async fn openai_responses_tool_call_cycle() {
    tool_call_cycle(Format::OpenAiResponses).await;
}

#[tokio::test]
async fn anthropic_tool_call_cycle() {
    tool_call_cycle(Format::Anthropic).await;
}

#[tokio::test]
async fn gemini_tool_call_cycle() {
    tool_call_cycle(Format::Gemini).await;
}

/// A stack in `untrusted` mode whose model asks to run `command`, then answers "finished".
async fn approval_stack(command: &str, extra_replies: Vec<Reply>) -> (FakeProvider, Stack) {
    let fake = FakeProvider::start(Format::OpenAiChat);
    let call = json!({"command": command}).to_string();
    let mut script = vec![Reply::tool_calls([("shell_exec", call.as_str())]), Reply::text("finished")];
    script.extend(extra_replies);
    fake.script(script);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"approval_mode": "untrusted"}}));
    (fake, stack)
}

#[tokio::test]
async fn yes_runs_the_approved_command_in_the_workspace() {
    let (_fake, stack) = approval_stack("echo approved > made.txt", vec![]).await;
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "make a file").await;
    let mut asked = Vec::new();
    let events = follow_job(
        &mut client,
        &job,
        &mut |e| {
            asked.push(e.clone());
            Some("YES")
        },
        LIMIT,
    )
    .await;
    assert_eq!(asked.len(), 1, "{events:#?}");
    assert_eq!(asked[0]["tool"], "shell_exec");
    assert_eq!(asked[0]["argv"], json!(["bash", "-lc", "echo approved > made.txt"]), "shell syntax: the whole line");
    assert_eq!(of_type(&events, "approval")[0]["decision"], "YES");
    assert_eq!(events.last().unwrap()["type"], "done", "{events:#?}");
    let made = std::fs::read_to_string(stack.workspace().join("made.txt")).unwrap();
    assert_eq!(made, "approved\n");
}

#[tokio::test]
async fn no_denies_and_stops_the_turn() {
    let (fake, stack) = approval_stack("touch never.txt", vec![]).await;
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "make a file").await;
    let events = follow_job(&mut client, &job, &mut |_| Some("NO"), LIMIT).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "failed", "{events:#?}");
    assert_eq!(last["error"]["code"], "approval_denied");
    assert!(!stack.workspace().join("never.txt").exists(), "a denied command never runs");
    assert_eq!(fake.requests().len(), 1, "the turn stopped: the model was not called again");
    let status = client.walk_read_json(&format!("/agents/self/jobs/{job}/status.json")).await;
    assert_eq!(status["state"], "failed");
}

#[tokio::test]
async fn no_continue_denies_and_lets_the_model_go_on() {
    let (fake, stack) = approval_stack("touch never.txt", vec![]).await;
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "make a file").await;
    let events = follow_job(&mut client, &job, &mut |_| Some("NO_CONTINUE"), LIMIT).await;
    assert_eq!(events.last().unwrap()["result"], "finished", "{events:#?}");
    assert!(!stack.workspace().join("never.txt").exists());
    let second = fake.requests()[1].body.to_string();
    assert!(second.contains("The user denied this tool call"), "the model is told: {second}");
}

#[tokio::test]
async fn explain_asks_the_model_then_asks_again() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![
        Reply::tool_calls([("shell_exec", r#"{"command":"touch explained.txt"}"#)]),
        Reply::text("It creates an empty file named explained.txt."),
        Reply::text("finished"),
    ]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"approval_mode": "untrusted"}}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "make a file").await;
    let mut answers = vec!["EXPLAIN", "YES"].into_iter();
    let events = follow_job(&mut client, &job, &mut |_| answers.next(), LIMIT).await;
    let requests = of_type(&events, "approval_request");
    assert_eq!(requests.len(), 2, "asked again after the explanation: {events:#?}");
    assert_ne!(requests[0]["approval_id"], requests[1]["approval_id"]);
    let explanation = of_type(&events, "explanation");
    assert_eq!(explanation[0]["text"], "It creates an empty file named explained.txt.");
    assert!(streamed_text(&events) == "finished", "the explanation is not part of the answer");
    assert!(stack.workspace().join("explained.txt").exists());
    let explain_request = fake.requests()[1].body.to_string();
    assert!(
        explain_request.contains("touch explained.txt") && !explain_request.contains("\"tools\""),
        "{explain_request}"
    );
}

#[tokio::test]
async fn always_is_remembered_for_the_exact_command_and_session_only() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    let exact = r#"{"command":"touch once.txt"}"#;
    let wrapped = r#"{"command":"sh -c 'touch once.txt'"}"#;
    fake.script(vec![
        Reply::tool_calls([("shell_exec", exact)]),
        Reply::text("one"),
        Reply::tool_calls([("shell_exec", exact)]),
        Reply::text("two"),
        Reply::tool_calls([("shell_exec", wrapped)]),
        Reply::text("three"),
    ]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"approval_mode": "untrusted"}}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "first").await;
    let events = follow_job(&mut client, &job, &mut |_| Some("ALWAYS"), LIMIT).await;
    assert_eq!(of_type(&events, "approval_request").len(), 1);
    let job = send_prompt(&mut client, "again").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    assert_eq!(events.last().unwrap()["result"], "two", "the same argv, cwd and session ran without asking");
    let job = send_prompt(&mut client, "wrapped").await;
    let mut asked = 0;
    let events = follow_job(
        &mut client,
        &job,
        &mut |_| {
            asked += 1;
            Some("NO_CONTINUE")
        },
        LIMIT,
    )
    .await;
    assert_eq!(asked, 1, "a wrapper does not inherit the approval: {events:#?}");
}

#[tokio::test]
async fn the_conversation_survives_a_gateway_restart() {
    let fake = FakeProvider::start(Format::Anthropic);
    fake.script(vec![Reply::text("Noted: your name is Ada."), Reply::text("Your name is Ada.")]);
    let mut stack = Stack::start(&ProviderSetup::fake(&fake), json!({}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "My name is Ada.").await;
    follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    drop(client);
    stack.gateway.restart();
    let mut client = stack.gateway.admin().await;
    let history = client.walk_read("/agents/self/chat/history.ndjson").await;
    assert!(history.contains("My name is Ada.") && history.contains("Noted: your name is Ada."), "{history}");
    // The old job is still there after the restart (spec §7.7), and the conversation goes on.
    assert_eq!(client.walk_read(&format!("/agents/self/jobs/{job}/result.txt")).await, "Noted: your name is Ada.");
    let next = send_prompt(&mut client, "What is my name?").await;
    assert_ne!(next, job, "job ids are never reused");
    follow_job(&mut client, &next, &mut never_asked, LIMIT).await;
    let second = fake.requests()[1].body.to_string();
    assert!(second.contains("My name is Ada.") && second.contains("Noted: your name is Ada."), "{second}");
}

#[tokio::test]
async fn prompts_to_one_conversation_run_one_after_another() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.set_chunk_delay(Duration::from_millis(100));
    fake.script(vec![Reply::text("First answer, slowly."), Reply::text("Second answer.")]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({}));
    let mut client = stack.gateway.admin().await;
    let first = send_prompt(&mut client, "one").await;
    let second = send_prompt(&mut client, "two").await;
    let status = client.walk_read_json(&format!("/agents/self/jobs/{second}/status.json")).await;
    assert_eq!(status["state"], "queued", "the second prompt waits for the first turn: {status}");
    follow_job(&mut client, &first, &mut never_asked, LIMIT).await;
    let events = follow_job(&mut client, &second, &mut never_asked, LIMIT).await;
    assert_eq!(streamed_text(&events), "Second answer.");
    // The second turn saw the whole first one: its request carries the first answer after
    // the first prompt and before the second (interleaved turns would break tool-call order).
    let body = fake.requests()[1].body.to_string();
    let at = |needle: &str| body.find(needle).unwrap_or_else(|| panic!("{needle:?} missing from {body}"));
    assert!(at("\"one\"") < at("First answer, slowly.") && at("First answer, slowly.") < at("\"two\""), "{body}");
}

#[tokio::test]
async fn session_history_counts_the_messages_of_a_project_session() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::text("hello in the project")]);
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({}));
    let mut client = stack.gateway.admin().await;
    let project = client.control_ok("project_create", json!({"name": "Alpha", "vision": "the alpha thing"})).await;
    let project_id = project["project_id"].as_str().unwrap().to_owned();
    client
        .control_ok("session_attach", json!({"session_key": "work", "agent_id": "helper", "project_id": project_id}))
        .await;
    let job = send_prompt(&mut client, "hi").await;
    follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    let history = client.control_ok("session_history", json!({})).await;
    let entry = history["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_key"] == "work")
        .unwrap_or_else(|| panic!("no entry for session work: {history}"));
    assert_eq!(entry["project_id"], json!(project_id));
    assert_eq!(entry["message_count"], json!(2), "the prompt and the answer: {entry}");
}

#[tokio::test]
async fn session_store_path_keeps_a_jsonl_transcript_in_the_codex_server_format() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::tool_calls([("file_list", "{}")]), Reply::text("listed")]);
    let logs = tempfile::tempdir().unwrap();
    let stack = Stack::start(&ProviderSetup::fake(&fake), json!({"runtime": {"session_store_path": logs.path()}}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "list it").await;
    follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    let file = logs.path().join("mother.system.main.jsonl");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for line in &lines {
        for key in ["timestamp", "event_type", "direction", "message_data"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "ISO 8601 UTC: {line}");
    }
    let kinds: Vec<(&str, &str)> =
        lines.iter().map(|l| (l["direction"].as_str().unwrap(), l["message_data"]["type"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("incoming", "user_input"),
            ("outgoing", "response_item"),
            ("outgoing", "response_item"),
            ("outgoing", "response_item"),
            ("outgoing", "agent_finished"),
        ],
        "{text}"
    );
    assert_eq!(lines[1]["message_data"]["payload"]["type"], "function_call");
    assert_eq!(lines[2]["message_data"]["payload"]["type"], "function_call_output");
    assert_eq!(lines[3]["message_data"]["payload"]["content"][0]["text"], "listed");
}

#[tokio::test]
async fn a_plugin_provider_runs_in_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("plugin.sh");
    // Reads the request line, checks it got its key, answers in the plugin protocol.
    std::fs::write(
        &script,
        r#"read -r line
case "$line" in *'"method":"chat"'*) ;; *) echo "bad request" >&2; exit 3;; esac
[ "$PLUGIN_KEY" = "sk-plugin" ] || { echo "no key" >&2; exit 4; }
echo '{"jsonrpc":"2.0","id":1,"result":{"content":"hello from the plugin","tool_calls":[],"usage":{"input_tokens":3,"output_tokens":4}}}'
"#,
    )
    .unwrap();
    let setup = ProviderSetup {
        id: "my-plugin".into(),
        broker_entry: json!({"kind": "plugin", "command": "/bin/sh", "args": [script], "key_env": "PLUGIN_KEY"}),
        gateway_name: "plugin".into(),
        model: "plugin-model".into(),
        key_env: Some(("PLUGIN_KEY".into(), "sk-plugin".into())),
    };
    let stack = Stack::start(&setup, json!({}));
    let mut client = stack.gateway.admin().await;
    let job = send_prompt(&mut client, "hi").await;
    let events = follow_job(&mut client, &job, &mut never_asked, LIMIT).await;
    assert_eq!(events.last().unwrap()["result"], "hello from the plugin", "{events:#?}\n{}", stack.broker_log());
}
