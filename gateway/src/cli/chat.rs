//! `spiderweb chat`: a terminal client for the gateway's agent.
//!
//! Why it exists: it is where the README's first command leads. It sends a message, streams
//! the job's `events.ndjson` (text as it arrives, tool calls and results compactly), asks the
//! user about approvals and writes the answers to `control/approve.json` — the extension
//! files documented in `docs/chat-protocol.md`, over the ordinary unified-v2 protocol.
//!
//! Exit codes: 0 every job done; 1 a job failed or the gateway refused a message; 2 a
//! connection or usage error. Each failure prints one line on stderr.
//!
//! What it must never do: put the token in the URL, read a key, or hang: a read of the events
//! file returns within the server's 60 s wait, and the status file tells a pause from the end.
//! Without an answer source (stdin at EOF) an approval is answered NO, with a note.

use std::collections::HashSet;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{Client, ClientError};
use crate::config;

/// The gateway `spiderweb up` starts by default.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:18790/";
/// The file a message is written to (spec acheron-worldfs §7).
const CHAT_INPUT: &str = "/agents/self/chat/control/input";
/// A blocking events read waits up to 60 s on the server; this bounds it on our side.
const EVENTS_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// An empty events read quicker than this is followed by a pause of this long.
const EMPTY_READ_PAUSE: Duration = Duration::from_millis(250);
/// Largest history printed on resume.
const MAX_HISTORY_BYTES: usize = 4 * 1024 * 1024;
/// Largest status file read.
const MAX_STATUS_BYTES: usize = 64 * 1024;
/// Largest partial events line kept while waiting for its end.
const MAX_EVENT_LINE_BYTES: usize = 8 * 1024 * 1024;
/// How much of a tool result is shown.
const RESULT_PREVIEW_CHARS: usize = 200;
/// Longest message accepted (one `t_write` frame must carry it).
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// An approval answer, as the flag names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Answer {
    /// Run it this once.
    Yes,
    /// Do not run it; the agent stops.
    No,
    /// Run it, and the same command in the same directory and session from now on.
    Always,
    /// Ask the agent to explain it first.
    Explain,
    /// Do not run it, but let the agent continue without it.
    Continue,
}

impl Answer {
    fn decision(self) -> &'static str {
        match self {
            Answer::Yes => "YES",
            Answer::No => "NO",
            Answer::Always => "ALWAYS",
            Answer::Explain => "EXPLAIN",
            Answer::Continue => "NO_CONTINUE",
        }
    }

    fn parse(text: &str) -> Option<Answer> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => Answer::Yes,
            "n" | "no" => Answer::No,
            "a" | "always" => Answer::Always,
            "e" | "explain" => Answer::Explain,
            "c" | "continue" => Answer::Continue,
            _ => return None,
        })
    }
}

/// `spiderweb chat` flags.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The message; without it, each line of stdin is one message.
    pub message: Vec<String>,
    /// The gateway's WebSocket URL.
    #[arg(long, env = "SPIDERWEB_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Bearer token (default: the admin token from the gateway's token file).
    #[arg(long, env = "SPIDERWEB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The gateway's state directory, where the token file is.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Resume this session (its history is printed); default: a new session.
    #[arg(long)]
    pub session: Option<String>,
    /// The agent to talk to (default: the connection's).
    #[arg(long)]
    pub agent: Option<String>,
    /// The project (default: the connection's).
    #[arg(long)]
    pub project: Option<String>,
    /// Print the raw event lines (one JSON object per line) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Answer every approval request this way instead of asking.
    #[arg(long, value_enum)]
    pub approve: Option<Answer>,
}

/// Why `chat` stopped early.
#[derive(Debug, thiserror::Error)]
enum ChatError {
    /// Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Exit code 2.
    #[error(transparent)]
    Connection(#[from] ClientError),
    /// Exit code 2: the gateway sent something the protocol does not allow.
    #[error("{0}")]
    Protocol(String),
}

/// Runs `chat`; the exit code is the contract above.
pub fn run(args: ChatArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spiderweb chat: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(chat(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("spiderweb chat: {e}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(true)` when every job ended done.
async fn chat(args: ChatArgs) -> Result<bool, ChatError> {
    let token = match &args.token {
        Some(token) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => token_from_file(args.state_dir.as_deref())?,
    };
    if let Some(key) = &args.session
        && !valid_session_key(key)
    {
        return Err(ChatError::Usage(format!("--session {key:?}: a session key is 1-128 of A-Z a-z 0-9 . _ : -")));
    }
    let mut client = Client::connect(&args.url, &token).await?;
    let connected = client.handshake().await?;
    let field = |name: &str| connected.get(name).and_then(Value::as_str).map(str::to_owned);
    let agent = args.agent.clone().or_else(|| field("agent_id")).unwrap_or_else(|| "mother".into());
    let project = match args.project.clone() {
        Some(project) => project,
        None if connected.get("connect_gate").is_some_and(|g| !g.is_null()) => {
            return Err(ChatError::Usage(format!(
                "the gateway needs a project for this token ({}): pass --project",
                connected["connect_gate"]
            )));
        }
        None => field("project_id").unwrap_or_else(|| "system".into()),
    };
    let session = args.session.clone().unwrap_or_else(new_session_key);
    client.control("session_attach", json!({"session_key": session, "agent_id": agent, "project_id": project})).await?;
    let style = Style::detect(args.json);
    if args.session.is_some() {
        eprintln!("spiderweb chat: resuming session {session} ({agent}@{project})");
        print_history(&mut client, &style).await?;
    } else {
        eprintln!(
            "spiderweb chat: session {session} ({agent}@{project}); resume with: spiderweb chat --session {session}"
        );
    }
    // Open for the whole session: a message is then one write, not walk + write + clunk.
    let input = client.walk(CHAT_INPUT).await?;
    let mut lines = StdinLines::start();
    let mut all_done = true;
    let mut answers = Answers { scripted: args.approve, explained: HashSet::new() };
    if !args.message.is_empty() {
        all_done &= turn(&mut client, input, &args.message.join(" "), &style, &mut answers, &mut lines).await?;
    } else {
        loop {
            if style.interactive {
                eprint!("you> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.next().await else { break };
            if line.trim().is_empty() {
                continue;
            }
            all_done &= turn(&mut client, input, &line, &style, &mut answers, &mut lines).await?;
        }
    }
    client.close().await;
    Ok(all_done)
}

/// One message and its job, to the end. `Ok(false)`: the job failed or was refused.
async fn turn(
    client: &mut Client,
    input: u32,
    message: &str,
    style: &Style,
    answers: &mut Answers,
    lines: &mut StdinLines,
) -> Result<bool, ChatError> {
    if message.len() > MAX_MESSAGE_BYTES {
        eprintln!("spiderweb chat: message is longer than {MAX_MESSAGE_BYTES} bytes; not sent");
        return Ok(false);
    }
    let reply = match client.write_at(input, message.as_bytes()).await {
        Ok(reply) => reply,
        Err(e @ ClientError::Refused { .. }) => {
            eprintln!("spiderweb chat: the gateway did not take the message: {e}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(job) = reply.get("job").and_then(Value::as_str).map(str::to_owned) else {
        eprintln!("spiderweb chat: the gateway started no job for the message (reply {reply})");
        return Ok(false);
    };
    let job_dir = format!("/agents/self/jobs/{job}");
    let events = client.walk(&format!("{job_dir}/events.ndjson")).await?;
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut usage = None;
    let outcome = 'read: loop {
        let asked = std::time::Instant::now();
        let (bytes, _) = client.read_at(events, offset, EVENTS_READ_TIMEOUT).await?;
        if bytes.is_empty() {
            if asked.elapsed() < EMPTY_READ_PAUSE {
                // The read should have blocked; never turn a server that does not into a busy loop.
                tokio::time::sleep(EMPTY_READ_PAUSE).await;
            }
            // EOF or the server's wait ran out: the status says which.
            let status = client.read_file(&format!("{job_dir}/status.json"), MAX_STATUS_BYTES).await?;
            let status: Value = serde_json::from_slice(&status).unwrap_or(Value::Null);
            match status.get("state").and_then(Value::as_str) {
                Some("done") => break 'read true,
                Some("failed") => {
                    eprintln!("spiderweb chat: job {job} failed: {}", status["error"]);
                    break 'read false;
                }
                _ => continue,
            }
        }
        offset += bytes.len() as u64;
        pending.extend_from_slice(&bytes);
        if pending.len() > MAX_EVENT_LINE_BYTES {
            let message = format!("an event line of job {job} is longer than {MAX_EVENT_LINE_BYTES} bytes");
            return Err(ChatError::Protocol(message));
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if style.json {
                println!("{line}");
            }
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            match event.get("type").and_then(Value::as_str).unwrap_or_default() {
                "approval_request" => {
                    let answer = answers.answer_for(&event, style, lines, client).await;
                    let approval = json!({"approval_id": event["approval_id"], "decision": answer.decision()});
                    match client
                        .write_file(&format!("{job_dir}/control/approve.json"), approval.to_string().as_bytes())
                        .await
                    {
                        Ok(_) => {}
                        Err(e @ ClientError::Refused { .. }) => {
                            eprintln!("spiderweb chat: the answer was not taken: {e}")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                "usage" => usage = Some(event.clone()),
                "done" => {
                    style.render(&event);
                    break 'read true;
                }
                "failed" => {
                    style.render(&event);
                    let error = &event["error"];
                    eprintln!(
                        "spiderweb chat: job {job} failed: {}: {}",
                        str_of(error, "code"),
                        str_of(error, "message")
                    );
                    break 'read false;
                }
                _ => style.render(&event),
            }
        }
    };
    let _ = client.clunk(events).await;
    if let (false, Some(usage)) = (style.json, usage) {
        let cost = usage.get("cost_usd").and_then(Value::as_f64).map_or_else(String::new, |c| format!(", ${c:.4}"));
        style.dim_line(&format!("[{} tokens in, {} out{cost}]", usage["input_tokens"], usage["output_tokens"]));
    }
    Ok(outcome)
}

/// Where approval answers come from.
struct Answers {
    scripted: Option<Answer>,
    /// Calls already explained for a scripted EXPLAIN (asking again would loop).
    explained: HashSet<String>,
}

impl Answers {
    /// Asks for (or scripts) an answer. While the user thinks, the connection is kept alive
    /// with pings, so a slow answer does not run into the gateway's idle timeout.
    async fn answer_for(
        &mut self,
        request: &Value,
        style: &Style,
        lines: &mut StdinLines,
        client: &mut Client,
    ) -> Answer {
        let call = str_of(request, "call_id").to_owned();
        if let Some(answer) = self.scripted {
            if answer == Answer::Explain && !self.explained.insert(call) {
                eprintln!("spiderweb chat: already explained; answering NO (--approve=explain answers each call once)");
                return Answer::No;
            }
            return answer;
        }
        if !style.json {
            let argv = request.get("argv").map_or_else(String::new, shell_words);
            println!();
            println!("approval needed: {} wants to run: {argv}", str_of(request, "tool"));
            println!("  in: {}", str_of(request, "cwd"));
            if let Some(why) = request.get("justification").and_then(Value::as_str) {
                println!("  why: {why}");
            }
        }
        loop {
            eprint!("[y]es / [n]o / [a]lways / [e]xplain / [c]ontinue without? ");
            let _ = std::io::stderr().flush();
            let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
            let line = loop {
                tokio::select! {
                    line = lines.next() => break line,
                    _ = keepalive.tick() => {
                        // A failed ping surfaces when the answer is written; nothing to do here.
                        let _ = client.control("ping", json!({})).await;
                    }
                }
            };
            let Some(line) = line else {
                eprintln!("\nspiderweb chat: no answer (stdin closed); answering NO");
                return Answer::No;
            };
            match Answer::parse(&line) {
                Some(answer) => return answer,
                None if style.interactive => eprintln!("please answer y, n, a, e or c"),
                None => {
                    eprintln!("spiderweb chat: {line:?} is not an answer; answering NO");
                    return Answer::No;
                }
            }
        }
    }
}

/// How events are shown.
struct Style {
    json: bool,
    /// Dim tool output (stdout is a terminal).
    dim: bool,
    /// Prompt for input (stdin is a terminal).
    interactive: bool,
}

impl Style {
    fn detect(json: bool) -> Style {
        Style { json, dim: !json && std::io::stdout().is_terminal(), interactive: std::io::stdin().is_terminal() }
    }

    fn render(&self, event: &Value) {
        if self.json {
            return;
        }
        let mut out = std::io::stdout().lock();
        match event.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => {
                let _ = write!(out, "{}", str_of(event, "text"));
                let _ = out.flush();
            }
            "tool_call" => {
                let _ = writeln!(out, "\n→ {} {}", str_of(event, "tool"), event["arguments"]);
            }
            "tool_output" => {
                drop(out);
                self.dim_text(str_of(event, "data"));
            }
            "tool_result" => {
                let mark = if event["ok"] == json!(true) { "✓" } else { "✗" };
                drop(out);
                self.dim_line(&format!("{mark} {}", preview(str_of(event, "content"))));
            }
            "explanation" => {
                let _ = writeln!(out, "\nexplanation: {}", str_of(event, "text"));
            }
            "approval" => {
                let _ = writeln!(out, "answered {}", str_of(event, "decision"));
            }
            "done" => {
                let _ = writeln!(out);
            }
            _ => {}
        }
    }

    fn dim_text(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = if self.dim { write!(out, "\x1b[2m{text}\x1b[0m") } else { write!(out, "{text}") };
        let _ = out.flush();
    }

    fn dim_line(&self, line: &str) {
        self.dim_text(&format!("{line}\n"));
    }
}

/// How often a connection waiting for the user's answer pings the gateway (its idle timeout
/// is 5 minutes by default).
const KEEPALIVE: Duration = Duration::from_secs(60);

/// Lines of stdin, read by a thread of their own so waiting for the user blocks nothing else.
struct StdinLines {
    lines: mpsc::Receiver<String>,
}

impl StdinLines {
    fn start() -> StdinLines {
        let (tx, lines) = mpsc::channel(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        StdinLines { lines }
    }

    async fn next(&mut self) -> Option<String> {
        self.lines.recv().await
    }
}

async fn print_history(client: &mut Client, style: &Style) -> Result<(), ClientError> {
    let history = match client.read_file("/agents/self/chat/history.ndjson", MAX_HISTORY_BYTES).await {
        Ok(history) => history,
        Err(e) if e.code().is_some() => {
            eprintln!("spiderweb chat: no history to show ({e})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for line in String::from_utf8_lossy(&history).lines().filter(|l| !l.trim().is_empty()) {
        if style.json {
            println!("{line}");
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(line) else { continue };
        let text = message.get("text").or_else(|| message.get("content")).and_then(Value::as_str).unwrap_or_default();
        match str_of(&message, "role") {
            "user" => println!("you> {text}"),
            "tool" => style.dim_line(&format!("  {}", preview(text))),
            role => println!("{role}: {text}"),
        }
    }
    Ok(())
}

/// The admin token from `<state dir>/auth_tokens.json`.
fn token_from_file(state_dir: Option<&std::path::Path>) -> Result<String, ChatError> {
    let state_dir = match state_dir {
        Some(dir) => dir.to_owned(),
        None => {
            let loaded = config::load(&config::config_path(None)).map_err(|e| ChatError::Usage(e.to_string()))?;
            config::state_dir(None, &loaded.config)
        }
    };
    let path = state_dir.join(crate::tokens::FILE_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ChatError::Usage(format!(
            "no token: pass --token or set SPIDERWEB_TOKEN, or start the gateway with `spiderweb up` first \
             (cannot read {}: {e})",
            path.display()
        ))
    })?;
    let file: Value = serde_json::from_str(&text)
        .map_err(|e| ChatError::Usage(format!("{} is not a token file: {e}", path.display())))?;
    match file.get("admin_token").and_then(Value::as_str) {
        Some(token) if !token.is_empty() => Ok(token.to_owned()),
        _ => Err(ChatError::Usage(format!("{} holds no admin_token", path.display()))),
    }
}

/// `chat-` and 12 random hex digits.
fn new_session_key() -> String {
    let mut bytes = [0u8; 6];
    // An unavailable random source leaves zeros; the key is an identifier, not a secret.
    let _ = getrandom::fill(&mut bytes);
    format!("chat-{}", crate::plane::hex(&bytes))
}

fn valid_session_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The first line of `text`, at most [`RESULT_PREVIEW_CHARS`] characters.
fn preview(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let mut out: String = first.chars().take(RESULT_PREVIEW_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// `["ls","-la"]` → `ls -la`, quoting words that need it.
fn shell_words(argv: &Value) -> String {
    let words: Vec<String> = argv
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(quote_word).collect())
        .unwrap_or_else(|| vec![argv.to_string()]);
    words.join(" ")
}

fn quote_word(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_from_letters_and_words() {
        for (text, answer) in [("y", Answer::Yes), ("No", Answer::No), (" a ", Answer::Always), ("e", Answer::Explain)]
        {
            assert_eq!(Answer::parse(text), Some(answer), "{text}");
        }
        assert_eq!(Answer::parse("c").map(Answer::decision), Some("NO_CONTINUE"));
        assert_eq!(Answer::parse("maybe"), None);
    }

    #[test]
    fn argv_is_shown_as_a_shell_would_read_it() {
        assert_eq!(shell_words(&json!(["ls", "-la", "my file", "it's"])), "ls -la 'my file' 'it'\\''s'");
    }

    #[test]
    fn session_keys_follow_the_spec_syntax() {
        assert!(valid_session_key(&new_session_key()));
        assert!(!valid_session_key("has space") && !valid_session_key("") && !valid_session_key(&"k".repeat(129)));
    }
}
