//! Plugin providers run by the real broker: real sh scripts speaking the JSON-RPC protocol of
//! `seeds/003_*`, sent `provider_request`s over the broker socket as the gateway sends them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, ErrorCode, ProviderRequest};

const PLUGIN_KEY: &str = "plugin-test-key-8e1d";
const OPENAI_KEY: &str = "sk-test-openai-not-for-plugins";

/// What the gateway sends for one chat: the request line, without its newline.
const REQUEST_LINE: &str = concat!(
    r#"{"jsonrpc":"2.0","id":1,"method":"chat","params":{"messages":[{"role":"user","content":"hi"}],"#,
    r#""tools":[],"model":"m1","options":{"max_tokens":256}}}"#
);

const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":"hello from plugin","tool_calls":[]}}"#;

/// A plugin script in its own directory; the broker runs it as `/bin/sh <script> <dir>` (no test
/// execs a file it has just written, which can fail with ETXTBSY while other threads fork).
struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new(body: &str) -> Script {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plugin.sh"), format!("set -u\n{body}\n")).unwrap();
        Script { dir }
    }

    fn provider(&self, extra: Value) -> Value {
        let mut entry = json!({
            "kind": "plugin",
            "command": "/bin/sh",
            "args": [self.dir.path().join("plugin.sh"), self.dir.path()],
        });
        for (k, v) in extra.as_object().unwrap() {
            entry[k] = v.clone();
        }
        entry
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn broker_with(providers: Value, env: Vec<(String, String)>, credentials: Vec<(String, String)>) -> Broker {
    Broker::start(BrokerSpec { config: json!({ "providers": providers }), env, credentials, ..Default::default() })
}

fn plugin_request(id: u64, provider: &str, body: &str) -> BrokerRequest {
    BrokerRequest::ProviderRequest(ProviderRequest {
        id,
        provider: provider.into(),
        method: "POST".into(),
        path: "/".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_owned()).into(),
    })
}

/// The environment a script saved with `env -0`, as pairs.
fn saved_env(path: &Path) -> Vec<(String, String)> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
    raw.split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (k, v) = text.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_plugin_gets_the_request_line_byte_for_byte_and_only_its_own_key() {
    let script = Script::new(&format!(
        r#"cat > "$1/request"
env -0 > "$1/env"
echo 'a log line the plugin printed first'
echo '{ANSWER}'"#
    ));
    let broker = broker_with(
        json!({"my-llm": script.provider(json!({"key_env": "MY_PLUGIN_KEY", "timeout_ms": 20000}))}),
        vec![("MY_PLUGIN_KEY".into(), PLUGIN_KEY.into()), ("OPENAI_API_KEY".into(), OPENAI_KEY.into())],
        vec![],
    );
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "my-llm", REQUEST_LINE)).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert!(got.ended);
    assert_eq!(got.body_text(), format!("a log line the plugin printed first\n{ANSWER}\n"));
    let sent = std::fs::read_to_string(script.file("request")).unwrap();
    assert_eq!(sent, format!("{REQUEST_LINE}\n"), "the seed's request line: the body plus one newline");

    let env = saved_env(&script.file("env"));
    assert!(env.contains(&("MY_PLUGIN_KEY".into(), PLUGIN_KEY.into())), "{env:?}");
    // Everything else comes from the broker's environment (PATH, HOME) or from sh itself.
    let allowed = ["MY_PLUGIN_KEY", "PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"];
    let extra: Vec<_> = env.iter().filter(|(k, _)| !allowed.contains(&k.as_str())).collect();
    assert!(extra.is_empty(), "the plugin inherited more than PATH/HOME/LANG: {extra:?}");
    assert!(!env.iter().any(|(_, v)| v == OPENAI_KEY), "another provider's key reached the plugin");

    assert!(!got.wire.contains(PLUGIN_KEY), "the key came back over the socket: {}", got.wire);
    assert!(!broker.stderr().contains(PLUGIN_KEY), "the key is in the broker's log");
}

#[tokio::test]
async fn a_systemd_credential_reaches_the_plugin_and_a_missing_key_is_refused_before_running_it() {
    let script = Script::new(r#"cat > /dev/null; touch "$1/ran"; printf '%s' "$MY_PLUGIN_KEY" > "$1/key"; echo ok"#);
    let unkeyed = Script::new(r#"cat > /dev/null; touch "$1/ran"; echo ok"#);
    let broker = broker_with(
        json!({
            "with-cred": script.provider(json!({"key_env": "MY_PLUGIN_KEY"})),
            "no-cred": unkeyed.provider(json!({"key_env": "OTHER_PLUGIN_KEY"})),
        }),
        vec![],
        vec![("with-cred-api-key".into(), format!("{PLUGIN_KEY}\n"))],
    );
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "with-cred", REQUEST_LINE)).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(std::fs::read_to_string(script.file("key")).unwrap(), PLUGIN_KEY);

    let got = call(&mut client, plugin_request(2, "no-cred", REQUEST_LINE)).await;
    let (code, message) = got.error.expect("refused");
    assert_eq!(code, ErrorCode::NoCredential);
    assert!(message.contains("OTHER_PLUGIN_KEY") && message.contains("set-key no-cred"), "{message}");
    assert!(!unkeyed.file("ran").exists(), "a plugin that needs a key ran without one");
}

#[tokio::test]
async fn error_lines_and_garbage_pass_through_untouched_for_the_gateway_to_judge() {
    let error_line = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"model unavailable"}}"#;
    let errors = Script::new(&format!("cat > /dev/null\necho '{error_line}'"));
    let garbage = Script::new("cat > /dev/null\necho 'this is not json-rpc'");
    let broker = broker_with(
        json!({"errors": errors.provider(json!({})), "garbage": garbage.provider(json!({}))}),
        vec![],
        vec![],
    );
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "errors", REQUEST_LINE)).await;
    assert_eq!((got.status, got.body_text()), (Some(200), format!("{error_line}\n")));
    let got = call(&mut client, plugin_request(2, "garbage", REQUEST_LINE)).await;
    assert_eq!((got.status, got.body_text()), (Some(200), "this is not json-rpc\n".to_owned()));
}

#[tokio::test]
async fn a_non_zero_exit_is_an_error_quoting_stderr() {
    let script = Script::new(&format!("cat > /dev/null\necho '{ANSWER}'\necho 'model exploded' >&2\nexit 3"));
    let broker = broker_with(json!({"crashy": script.provider(json!({}))}), vec![], vec![]);
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "crashy", REQUEST_LINE)).await;
    assert_eq!(got.status, None, "no head for a failed plugin: {got:?}");
    let (code, message) = got.error.expect("an error");
    assert_eq!(code, ErrorCode::PluginFailed);
    assert!(message.contains("exit status: 3") && message.contains("model exploded"), "{message}");
    assert!(message.starts_with("crashy:"), "names the provider: {message}");
}

/// Whether `pid` is gone or a zombie nobody will schedule again.
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_dead(pid_file: &Path) {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default().trim().to_owned();
    assert!(!pid.is_empty(), "{} was not written", pid_file.display());
    for _ in 0..100 {
        if dead(&pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} ({}) survived", pid_file.display());
}

#[tokio::test]
async fn a_plugin_past_its_timeout_is_killed_with_its_children() {
    let script = Script::new(r#"sleep 300 & echo $! > "$1/child.pid"; wait"#);
    let broker = broker_with(json!({"slow": script.provider(json!({"timeout_ms": 1000}))}), vec![], vec![]);
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "slow", REQUEST_LINE)).await;
    let (code, message) = got.error.expect("an error");
    assert_eq!(code, ErrorCode::UpstreamTimeout);
    assert!(message.contains("timed out after 1s"), "{message}");
    wait_dead(&script.file("child.pid")).await;
}

#[tokio::test]
async fn a_cancelled_request_kills_the_plugin_and_its_children() {
    let script = Script::new(r#"sleep 300 & echo $! > "$1/child.pid"; echo $$ > "$1/plugin.pid"; wait"#);
    let broker = broker_with(json!({"slow": script.provider(json!({}))}), vec![], vec![]);
    let mut client = broker.client().await;
    client.send(plugin_request(5, "slow", REQUEST_LINE)).await.unwrap();
    for _ in 0..200 {
        if script.file("plugin.pid").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    client.send(BrokerRequest::Cancel { id: 5 }).await.unwrap();
    let got = collect(&mut client, 5).await;
    assert_eq!(got.error.map(|e| e.0), Some(ErrorCode::Cancelled));
    wait_dead(&script.file("plugin.pid")).await;
    wait_dead(&script.file("child.pid")).await;
}

#[tokio::test]
async fn a_missing_binary_is_reported_with_its_path() {
    let broker = broker_with(json!({"ghost": {"kind": "plugin", "command": "/nonexistent/provider"}}), vec![], vec![]);
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "ghost", REQUEST_LINE)).await;
    let (code, message) = got.error.expect("an error");
    assert_eq!(code, ErrorCode::UpstreamUnreachable);
    assert!(message.contains("/nonexistent/provider") && message.contains("could not be started"), "{message}");
}

#[tokio::test]
async fn requests_a_plugin_cannot_take_are_refused_without_running_it() {
    let script = Script::new(r#"cat > /dev/null; touch "$1/ran"; echo ok"#);
    let broker = broker_with(json!({"p": script.provider(json!({}))}), vec![], vec![]);
    let mut client = broker.client().await;
    let with = |f: &dyn Fn(&mut ProviderRequest)| {
        let BrokerRequest::ProviderRequest(mut req) = plugin_request(1, "p", REQUEST_LINE) else { unreachable!() };
        f(&mut req);
        BrokerRequest::ProviderRequest(req)
    };
    let cases: Vec<(BrokerRequest, ErrorCode)> = vec![
        (with(&|r| r.path = "/other".into()), ErrorCode::PathNotAllowed),
        (with(&|r| r.method = "GET".into()), ErrorCode::MethodNotAllowed),
        (with(&|r| r.headers.push(("authorization".into(), "Bearer x".into()))), ErrorCode::HeaderNotAllowed),
        (
            with(&|r| r.body = Bytes::from(format!("{REQUEST_LINE}\n{REQUEST_LINE}")).into()),
            ErrorCode::MalformedRequest,
        ),
        (with(&|r| r.body = Bytes::new().into()), ErrorCode::MalformedRequest),
    ];
    for (i, (request, expected)) in cases.into_iter().enumerate() {
        let BrokerRequest::ProviderRequest(mut req) = request else { unreachable!() };
        req.id = i as u64 + 1;
        let got = call(&mut client, BrokerRequest::ProviderRequest(req)).await;
        assert_eq!(got.error.as_ref().map(|e| e.0), Some(expected), "case {i}: {got:?}");
    }
    assert!(!script.file("ran").exists(), "a refused request ran the plugin");
    // The connection still serves.
    let got = call(&mut client, plugin_request(99, "p", REQUEST_LINE)).await;
    assert_eq!(got.status, Some(200));
    assert!(matches!(
        client.call(BrokerRequest::CredentialStatus { id: 100 }).await.unwrap(),
        BrokerReply::CredentialStatus { .. }
    ));
}

#[tokio::test]
async fn a_plugin_writing_more_than_16_mib_is_killed_and_reported() {
    let script = Script::new("cat > /dev/null\nhead -c 17000000 /dev/zero | tr '\\0' x\necho\nsleep 300");
    let broker = broker_with(json!({"chatty": script.provider(json!({}))}), vec![], vec![]);
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "chatty", REQUEST_LINE)).await;
    let (code, message) = got.error.expect("an error");
    assert_eq!(code, ErrorCode::PluginFailed);
    assert!(message.contains("more than 16777216 bytes"), "{message}");
}

#[tokio::test]
async fn a_plugin_that_echoes_its_key_has_it_redacted_from_stdout_and_stderr() {
    let leaky = Script::new(&format!("cat > /dev/null\necho \"debug: using $MY_PLUGIN_KEY\"\necho '{ANSWER}'"));
    let failing = Script::new("cat > /dev/null\necho \"401: key $MY_PLUGIN_KEY was refused\" >&2\nexit 1");
    let broker = broker_with(
        json!({
            "leaky": leaky.provider(json!({"key_env": "MY_PLUGIN_KEY"})),
            "failing": failing.provider(json!({"key_env": "MY_PLUGIN_KEY"})),
        }),
        vec![("MY_PLUGIN_KEY".into(), PLUGIN_KEY.into())],
        vec![],
    );
    let mut client = broker.client().await;
    let got = call(&mut client, plugin_request(1, "leaky", REQUEST_LINE)).await;
    assert_eq!(got.body_text(), format!("debug: using [redacted]\n{ANSWER}\n"));
    let failed = call(&mut client, plugin_request(2, "failing", REQUEST_LINE)).await;
    let (_, message) = failed.error.clone().expect("an error");
    assert!(message.contains("401: key [redacted] was refused"), "{message}");
    for text in [&got.wire, &failed.wire, &broker.stderr()] {
        assert!(!text.contains(PLUGIN_KEY), "the key leaked: {text}");
    }
}

#[tokio::test]
async fn a_key_stored_in_the_secret_service_reaches_the_plugin_but_not_the_bus_address() {
    require_tool("dbus-run-session", "dbus");
    require_tool("gnome-keyring-daemon", "gnome-keyring");
    let script = Script::new(r#"cat > /dev/null; env -0 > "$1/env"; echo ok"#);
    let broker = Broker::start(BrokerSpec {
        keyring: true,
        config: json!({"providers": {"kp": script.provider(json!({"key_env": "MY_PLUGIN_KEY"}))}}),
        ..Default::default()
    });
    let mut client = broker.client().await;
    let reply = client
        .call(BrokerRequest::SetKey { id: 1, provider: "kp".into(), key: PLUGIN_KEY.to_owned().into() })
        .await
        .unwrap();
    assert_eq!(reply, BrokerReply::Done { id: 1 }, "set-key for a plugin provider");
    let got = call(&mut client, plugin_request(2, "kp", REQUEST_LINE)).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    let env = saved_env(&script.file("env"));
    assert!(env.contains(&("MY_PLUGIN_KEY".into(), PLUGIN_KEY.into())), "{env:?}");
    assert!(!env.iter().any(|(k, _)| k == "DBUS_SESSION_BUS_ADDRESS"), "the plugin got the broker's bus: {env:?}");
}
