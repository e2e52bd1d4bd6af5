//! `spiderweb chat` against `spiderweb up`: token discovery, sessions, exit codes, and the whole
//! loop with the demo provider: message → streamed text → approval → real tools → done.

mod up_stack;

use std::process::Output;

use serde_json::Value;
use up_stack::{UpStack, free_port, run_chat};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The session key `chat` printed.
fn session_key(output: &Output) -> String {
    let text = stderr(output);
    let key = text
        .split("resume with: spiderweb chat --session ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("chat printed no session key to resume: {text}"));
    key.to_owned()
}

fn assert_exit(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "exit code {code} expected: {output:?}");
    assert!(err.contains(needle), "stderr should mention {needle:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr: {err}");
}

#[test]
fn chat_usage_and_connection_errors_exit_2_with_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let closed = format!("ws://127.0.0.1:{}/", free_port());
    let cases: [(&[&str], &str); 4] = [
        (&["chat", "--url", &closed, "--token", "t", "hi"], "cannot connect to ws://127.0.0.1:"),
        (&["chat", "--url", "http://127.0.0.1:1/", "--token", "t", "hi"], "only ws:// URLs"),
        (&["chat", "--url", &closed, "--token", "t", "--session", "not a key", "hi"], "--session"),
        (&["chat", "--url", &closed, "hi"], "no token: pass --token or set SPIDERWEB_TOKEN"),
    ];
    for (args, needle) in cases {
        let output = run_chat(args, home.path(), "");
        assert_exit(&output, 2, needle);
        assert!(output.stdout.is_empty(), "{args:?} prints nothing on stdout: {output:?}");
    }
    let output = run_chat(&["chat", "--approve", "perhaps", "hi"], home.path(), "");
    assert_eq!(output.status.code(), Some(2), "a bad flag value is a usage error: {output:?}");
}

#[test]
fn chat_finds_the_token_of_up_attaches_a_new_session_and_resumes_it() {
    let stack = UpStack::start(&["--demo"]);
    // No message and nothing on stdin: connect, attach, say how to resume, end.
    let first = stack.chat(&[], "");
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let key = session_key(&first);
    assert!(key.starts_with("chat-") && key.len() > 8, "{key}");
    assert!(stderr(&first).contains("mother@system"), "it says whom it talks to: {}", stderr(&first));

    let again = stack.chat(&[], "");
    assert_ne!(session_key(&again), key, "every new chat gets a new session");

    let resumed = stack.chat(&["--session", &key], "");
    assert_eq!(resumed.status.code(), Some(0), "{resumed:?}");
    assert!(stderr(&resumed).contains(&format!("resuming session {key}")), "{}", stderr(&resumed));

    let wrong = stack.chat(&["--token", "not-the-token", "hi"], "");
    assert_exit(&wrong, 2, "refused this token");

    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(stack.state_dir().join("auth_tokens.json")).unwrap()).unwrap();
    let admin = tokens["admin_token"].as_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let output = run_chat(&["chat", "--url", &stack.url, "--token", admin], elsewhere.path(), "");
    assert_eq!(output.status.code(), Some(0), "an explicit token works without a token file: {output:?}");
}

#[test]
fn chat_streams_a_demo_turn_asks_for_approval_and_resumes_with_history() {
    let stack = UpStack::start(&["--demo"]);

    // Scripted: --json prints the raw events, --approve answers.
    let output = stack.chat(&["--json", "--approve", "yes", "What is in my workspace?"], "");
    assert_eq!(output.status.code(), Some(0), "the job ends done: {output:?}");
    let events: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("--json prints JSON lines ({e}): {l}")))
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().expect("every event has seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq increases: {seqs:?}");
    let of_type = |t: &str| events.iter().filter(|e| e["type"] == t).cloned().collect::<Vec<_>>();
    let text: String = of_type("text").iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert!(text.starts_with("[demo provider]"), "the demo is labelled: {text}");
    let tools: Vec<&str> =
        events.iter().filter(|e| e["type"] == "tool_call").map(|e| e["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["file_list", "file_read", "shell_exec"], "the demo script's calls");
    let request = of_type("approval_request").pop().expect("the command needs approval");
    assert!(request["argv"].as_array().is_some_and(|a| !a.is_empty()), "{request}");
    assert!(request["justification"].is_string(), "{request}");
    let approval = of_type("approval").pop().expect("the answer is recorded");
    assert_eq!(approval["decision"], "YES");
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "done is the last line: {done}");
    assert!(done["result"].as_str().unwrap().contains("Summary"), "{done}");
    assert!(text.contains("Welcome to spiderweb"), "the summary quotes the seeded WELCOME.md: {text}");

    // Interactive-style: the answer comes from stdin; "c" (continue without) declines the
    // command and the demo summarises gracefully.
    let output = stack.chat(&["What is in my workspace?"], "c\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let shown = stdout(&output);
    assert!(shown.contains("approval needed: shell_exec wants to run"), "{shown}");
    assert!(shown.contains("did not run"), "the demo accepts the denial: {shown}");
    let key = session_key(&output);

    // No answer at all (stdin closed) is a NO, with a note.
    let output = stack.chat(&["What is in my workspace?"], "");
    assert!(stderr(&output).contains("no answer (stdin closed); answering NO"), "{}", stderr(&output));

    let resumed = stack.chat(&["--session", &key], "");
    assert_eq!(resumed.status.code(), Some(0), "{resumed:?}");
    assert!(stdout(&resumed).contains("you> What is in my workspace?"), "history is printed: {}", stdout(&resumed));
}
