//! What the demo provider says: a fixed script chosen from the request's messages alone.
//!
//! Why it exists: a newcomer without an account should see the whole loop — a tool call, a
//! file read, an approval, a summary — from real tools in real workers. The script is a pure
//! function of the request, so the server keeps no state between requests and a resumed or
//! restarted session picks up at the right step.
//!
//! The step is the number of tool results since the last user message: 0 → list the
//! workspace, 1 → read a file it saw (`WELCOME.md` when present), 2 → ask to run a command
//! (with `require_approval`), 3+ → a summary quoting what the tools returned (or a graceful
//! stop when the command was denied). A request without tools whose last user message starts
//! with "Explain" is an explanation request for a pending approval.
//!
//! What it must never do: claim to be a real model. Every text starts with [`LABEL`].

use serde_json::{Value, json};

/// The prefix of every text the demo provider sends.
pub const LABEL: &str = "[demo provider]";

/// The file `spiderweb up` seeds in the default project's workspace, and the one read first.
pub const WELCOME_FILE: &str = "WELCOME.md";

/// The command the script asks to run.
pub const DEMO_COMMAND: &str = "ls -la";

/// Longest quote taken from a tool result.
const QUOTE_CHARS: usize = 160;

/// One reply: text, then at most one tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The assistant's text (always labelled).
    pub text: String,
    /// `(tool name, arguments)` when the step calls a tool.
    pub tool_call: Option<(String, Value)>,
}

/// The reply to an OpenAI Chat Completions request body.
pub fn reply_for(request: &Value) -> Reply {
    let messages = request.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let offers_tools = request.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let last_user = messages.iter().rposition(|m| role(m) == "user");
    let user_text = last_user.map(|i| text_of(&messages[i])).unwrap_or_default();
    if !offers_tools {
        return text_only(&user_text);
    }
    let results: Vec<String> =
        messages[last_user.map_or(0, |i| i + 1)..].iter().filter(|m| role(m) == "tool").map(text_of).collect();
    match results.as_slice() {
        [] => Reply {
            text: format!(
                "{LABEL} Hello! I am spiderweb's built-in demo provider, not a real model: I play a fixed \
                 script so you can see the whole loop. First I list your workspace."
            ),
            tool_call: Some(("file_list".into(), json!({"path": "."}))),
        },
        [listing] => {
            let names = entry_names(listing);
            let file = file_to_read(listing);
            let seen = if names.is_empty() { "nothing I could name".to_owned() } else { names.join(", ") };
            Reply {
                text: format!("{LABEL} The workspace holds: {seen}. Next I read {file}."),
                tool_call: Some(("file_read".into(), json!({"path": file}))),
            }
        }
        [listing, content] => Reply {
            text: format!(
                "{LABEL} {} begins with: \"{}\". Now I would like to run `{DEMO_COMMAND}`; spiderweb asks \
                 you first.",
                file_to_read(listing),
                quote(&file_text(content))
            ),
            tool_call: Some((
                "shell_exec".into(),
                json!({
                    "command": DEMO_COMMAND,
                    "require_approval": true,
                    "justification": "The demo shows how spiderweb asks before running a command: this one only lists the workspace."
                }),
            )),
        },
        [listing, content, command, ..] => Reply { text: summary(listing, content, command), tool_call: None },
    }
}

fn text_only(user_text: &str) -> Reply {
    let text = if user_text.trim_start().starts_with("Explain") {
        format!(
            "{LABEL} `{DEMO_COMMAND}` lists every file of the workspace with its size, owner and permissions. \
             It only reads, changes nothing, and runs in a confined worker that sees nothing but your workspace."
        )
    } else {
        format!("{LABEL} I only play a fixed script; with a real provider configured you get real answers.")
    };
    Reply { text, tool_call: None }
}

fn summary(listing: &str, content: &str, command: &str) -> String {
    let file = file_to_read(listing);
    let names = entries_phrase(entry_names(listing).len());
    let read = quote(&file_text(content));
    if is_denied(command) {
        return format!(
            "{LABEL} Understood, I did not run `{DEMO_COMMAND}`. Summary: I listed {names} in your \
             workspace and read {file} (\"{read}\"). That is the whole demo: configure a real provider to do \
             real work."
        );
    }
    format!(
        "{LABEL} Summary: I listed {names} in your workspace, read {file} (\"{read}\") and ran \
         `{DEMO_COMMAND}` after you approved it, which printed: \"{}\". That is the whole loop: tools ran in \
         confined workers and you stayed in control. Configure a real provider to do real work.",
        quote(&command_output(command))
    )
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or_default()
}

/// A message's text: a string `content`, or the text parts of an array `content`.
fn text_of(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// A tool result as JSON when it is JSON (the worker's result structs), else `Null`.
fn parsed(result: &str) -> Value {
    serde_json::from_str(result).unwrap_or(Value::Null)
}

/// The first value under `key` anywhere in `value` (results may come wrapped).
fn find<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|v| find(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find(v, key)),
        _ => None,
    }
}

/// Names of a `file_list` result's entries, with the kind of each.
fn entries(listing: &str) -> Vec<(String, String)> {
    let value = parsed(listing);
    let Some(Value::Array(items)) = find(&value, "entries") else { return Vec::new() };
    items
        .iter()
        .filter_map(|e| {
            let name = e.get("name")?.as_str()?.to_owned();
            let kind = e.get("type").or_else(|| e.get("kind")).and_then(Value::as_str).unwrap_or("file").to_owned();
            Some((name, kind))
        })
        .collect()
}

fn entry_names(listing: &str) -> Vec<String> {
    entries(listing).into_iter().map(|(name, _)| name).collect()
}

/// `WELCOME.md` when listed (or when nothing is), else the first plain file.
fn file_to_read(listing: &str) -> String {
    let entries = entries(listing);
    if entries.iter().any(|(name, _)| name == WELCOME_FILE) {
        return WELCOME_FILE.to_owned();
    }
    entries.into_iter().find(|(_, kind)| kind == "file").map_or_else(|| WELCOME_FILE.to_owned(), |(name, _)| name)
}

fn file_text(result: &str) -> String {
    match find(&parsed(result), "content") {
        Some(Value::String(text)) => text.clone(),
        _ => result.to_owned(),
    }
}

/// The command's stdout: the `stdout` field of a JSON result, else the text after the
/// runtime's "exit code N" line.
fn command_output(result: &str) -> String {
    match find(&parsed(result), "stdout") {
        Some(Value::String(text)) => text.clone(),
        _ => result.lines().filter(|l| !l.trim_start().starts_with("exit code")).collect::<Vec<_>>().join("\n"),
    }
}

fn entries_phrase(count: usize) -> String {
    if count == 1 { "1 entry".to_owned() } else { format!("{count} entries") }
}

/// Whether the runtime told the model the user declined the call.
fn is_denied(result: &str) -> bool {
    let lower = result.to_ascii_lowercase();
    ["denied", "declined", "not approved", "rejected"].iter().any(|w| lower.contains(w))
}

/// The first non-empty line, shortened on a character boundary, quotes made single.
fn quote(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let mut out: String = line.chars().take(QUOTE_CHARS).collect();
    if line.chars().count() > QUOTE_CHARS {
        out.push('…');
    }
    out.replace('"', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Value) -> Value {
        json!({"model": "spiderweb-demo", "messages": messages, "tools": [{"type": "function"}]})
    }

    #[test]
    fn tool_results_after_the_last_user_message_choose_the_step() {
        let listing = json!({"path": ".", "entries": [{"name": "src", "type": "dir"}, {"name": "notes.txt", "type": "file"}], "truncated": false}).to_string();
        let r = reply_for(&request(json!([{"role": "user", "content": "hi"}])));
        assert_eq!(r.tool_call.unwrap().0, "file_list");
        let r = reply_for(&request(json!([
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "c1", "content": listing},
        ])));
        assert_eq!(r.tool_call, Some(("file_read".into(), json!({"path": "notes.txt"}))), "first plain file");
        assert!(r.text.starts_with(LABEL) && r.text.contains("src, notes.txt"), "{}", r.text);
        let denied = reply_for(&request(json!([
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": listing},
            {"role": "tool", "content": "{\"content\":\"hello\\nworld\"}"},
            {"role": "tool", "content": "the user denied this command"},
        ])));
        assert!(denied.tool_call.is_none() && denied.text.contains("did not run") && denied.text.contains("hello"));
        let next_turn = reply_for(&request(json!([
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": listing},
            {"role": "user", "content": "again"},
        ])));
        assert_eq!(next_turn.tool_call.unwrap().0, "file_list", "a new user message restarts the script");
    }

    #[test]
    fn the_summary_quotes_stdout_of_a_plain_text_result() {
        let listing = json!({"entries": [{"name": "WELCOME.md", "type": "file"}]}).to_string();
        let r = reply_for(&request(json!([
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": listing},
            {"role": "tool", "content": "{\"content\":\"# Welcome\"}"},
            {"role": "tool", "content": "exit code 0\ntotal 8 marker-line"},
        ])));
        assert!(r.text.contains("\"total 8 marker-line\"") && r.text.contains("1 entry "), "{}", r.text);
    }

    #[test]
    fn explain_without_tools_gets_the_canned_explanation() {
        let r = reply_for(&json!({"messages": [{"role": "user", "content": "Explain this command"}]}));
        assert!(r.tool_call.is_none() && r.text.starts_with(LABEL) && r.text.contains(DEMO_COMMAND));
    }
}
