//! Plugin providers: real plugin scripts (bash, written at test time) speaking the
//! JSON-RPC protocol of `seeds/003_*`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use spiderweb_gateway::providers::plugin::{PluginError, PluginProvider};
use spiderweb_gateway::providers::{
    ChatRequest, Message, StopReason, StreamEvent, ToolCall, ToolSchema, Usage,
};

/// Writes `body` as a bash script in a fresh temp dir. The plugin is started as
/// `/bin/bash <script> <dir>` so no test execs a file it has just written (which can
/// fail with ETXTBSY while other test threads fork).
fn plugin(body: &str) -> (tempfile::TempDir, PluginProvider) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("plugin.sh");
    std::fs::write(&script, format!("set -u\n{body}\n")).unwrap();
    let provider = PluginProvider::new(
        "test-plugin",
        "/bin/bash",
        vec![
            script.display().to_string(),
            dir.path().display().to_string(),
        ],
    );
    (dir, provider)
}

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

#[tokio::test]
async fn the_request_line_is_byte_for_byte_the_seed_protocol() {
    let (dir, provider) = plugin(
        r#"cat > "$1/request"
echo 'a log line the plugin printed first'
echo '{"jsonrpc":"2.0","id":1,"result":{"content":"hello from plugin","tool_calls":[]}}'"#,
    );
    let events = provider.chat(&chat()).await.unwrap();
    let expected = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"chat","params":{"messages":["#,
        r#"{"role":"system","content":"sys"},"#,
        r#"{"role":"user","content":"hi"},"#,
        r#"{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"file_read","arguments":"{\"path\":\"a\"}"}]},"#,
        r#"{"role":"tool","content":"data","tool_call_id":"c1"}],"#,
        r#""tools":[{"name":"file_read","description":"Read","parameters":{"type":"object"}}],"#,
        r#""model":"m1","options":{"max_tokens":256,"temperature":0.5}}}"#,
        "\n"
    );
    let sent = std::fs::read_to_string(dir.path().join("request")).unwrap();
    assert_eq!(sent, expected);
    assert_eq!(
        events,
        [
            StreamEvent::TextDelta("hello from plugin".into()),
            StreamEvent::Done {
                stop_reason: StopReason::EndTurn
            },
        ]
    );
}

#[tokio::test]
async fn tool_calls_and_usage_become_events() {
    let (_dir, provider) = plugin(
        r#"cat > /dev/null
echo '{"jsonrpc":"2.0","id":1,"result":{"content":"","tool_calls":[{"id":"c9","name":"search","arguments":{"q":"rust"}},{"name":"shell","arguments":"{\"cmd\":\"ls\"}"},{"id":"broken"}],"usage":{"input_tokens":10,"output_tokens":5}}}'"#,
    );
    let events = provider.chat(&chat()).await.unwrap();
    let calls: Vec<&ToolCall> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallEnd(call) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 2, "the entry without a name is skipped");
    assert_eq!(
        (calls[0].id.as_str(), calls[0].name.as_str()),
        ("c9", "search")
    );
    assert_eq!(calls[0].arguments, r#"{"q":"rust"}"#);
    assert_eq!(calls[1].id, "call_1");
    assert_eq!(calls[1].arguments, r#"{"cmd":"ls"}"#);
    assert!(events.contains(&StreamEvent::Usage(Usage {
        input_tokens: 10,
        output_tokens: 5,
        ..Usage::default()
    })));
    assert_eq!(
        events.last(),
        Some(&StreamEvent::Done {
            stop_reason: StopReason::ToolUse
        })
    );
}

#[tokio::test]
async fn an_error_response_is_reported_with_code_and_message() {
    let (_dir, provider) = plugin(
        r#"cat > /dev/null
echo '{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"model unavailable"}}'"#,
    );
    let error = provider.chat(&chat()).await.unwrap_err();
    assert!(
        matches!(&error, PluginError::Rpc { code: -32000, message, .. } if message == "model unavailable"),
        "{error:?}"
    );
    assert!(error.to_string().contains("test-plugin"));
}

/// Whether `pid` is gone or a zombie nobody will schedule again.
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hanging_plugin_times_out_and_its_children_are_killed() {
    let (dir, provider) = plugin(
        r#"sleep 300 &
echo $! > "$1/child.pid"
wait"#,
    );
    let provider = provider.with_timeout(Duration::from_millis(1500));
    let error = provider.chat(&chat()).await.unwrap_err();
    assert!(matches!(error, PluginError::Timeout { .. }), "{error:?}");
    assert!(error.to_string().contains("timed out"));
    let pid = read_when_written(&dir.path().join("child.pid"));
    let mut waited = 0;
    while !dead(&pid) && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(dead(&pid), "the plugin's child {pid} survived the timeout");
}

#[tokio::test]
async fn a_cancelled_chat_kills_the_plugin_and_its_children() {
    let (dir, provider) = plugin(
        r#"sleep 300 &
echo $! > "$1/child.pid"
echo $$ > "$1/plugin.pid"
wait"#,
    );
    let child_pid = dir.path().join("child.pid");
    let chat = chat();
    let mut turn = Box::pin(provider.chat(&chat));
    // Let the plugin start and write its pids, then drop the turn as a disconnecting
    // client's task would.
    let mut polls = 0;
    while !child_pid.exists() && polls < 200 {
        tokio::select! {
            _ = &mut turn => panic!("the plugin answered"),
            _ = tokio::time::sleep(Duration::from_millis(25)) => polls += 1,
        }
    }
    drop(turn);
    for name in ["child.pid", "plugin.pid"] {
        let pid = read_when_written(&dir.path().join(name));
        let mut waited = 0;
        while !dead(&pid) && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(dead(&pid), "{name} {pid} survived the cancelled turn");
    }
}

fn read_when_written(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        !text.trim().is_empty(),
        "{} was not written",
        path.display()
    );
    text.trim().to_owned()
}

#[tokio::test]
async fn a_non_zero_exit_reports_status_and_stderr() {
    let (_dir, provider) = plugin(
        r#"cat > /dev/null
echo '{"jsonrpc":"2.0","id":1,"result":{"content":"ignored"}}'
echo 'model exploded' >&2
exit 3"#,
    );
    let error = provider.chat(&chat()).await.unwrap_err();
    let PluginError::Exit { status, detail, .. } = &error else {
        panic!("expected an exit error, got {error:?}");
    };
    assert_eq!(status.code(), Some(3));
    assert_eq!(detail, "model exploded");
    assert!(error.to_string().contains("exit status: 3"), "{error}");
}

#[tokio::test]
async fn garbage_output_is_refused_with_a_quote() {
    let (_dir, provider) = plugin("cat > /dev/null\necho 'this is not json-rpc'");
    let error = provider.chat(&chat()).await.unwrap_err();
    assert!(
        matches!(&error, PluginError::Garbage { line, .. } if line == "this is not json-rpc"),
        "{error:?}"
    );
    let (_dir, provider) = plugin("cat > /dev/null\necho '{\"jsonrpc\":\"2.0\",\"id\":1}'");
    assert!(matches!(
        provider.chat(&chat()).await.unwrap_err(),
        PluginError::Empty { .. }
    ));
    let (_dir, provider) = plugin("cat > /dev/null");
    assert!(matches!(
        provider.chat(&chat()).await.unwrap_err(),
        PluginError::NoOutput { .. }
    ));
}

#[tokio::test]
async fn oversized_output_is_cut_off() {
    let (_dir, provider) = plugin("cat > /dev/null\nhead -c 3000000 /dev/zero | tr '\\0' x\necho");
    let provider = provider.with_max_output_bytes(1 << 20);
    let error = provider.chat(&chat()).await.unwrap_err();
    assert!(
        matches!(error, PluginError::OutputTooLarge { limit, .. } if limit == 1 << 20),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_missing_binary_is_a_spawn_error() {
    let provider = PluginProvider::new("ghost", PathBuf::from("/nonexistent/provider"), vec![]);
    let error = provider.chat(&chat()).await.unwrap_err();
    assert!(matches!(error, PluginError::Spawn { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/provider"));
}
