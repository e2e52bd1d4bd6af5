//! Key administration against a real Secret Service: gnome-keyring inside `dbus-run-session`,
//! checked with `secret-tool` on the same bus.

mod common;

use common::*;
use serde_json::json;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, CredentialSource};

const STORED_KEY: &str = "sk-from-keyring-8e1f";
const ENV_KEY: &str = "sk-from-env-0b7c";

fn lookup(broker: &Broker, provider: &str) -> Option<String> {
    let out = broker.secret_tool(
        &["lookup", "service", "spiderweb", "provider", provider],
        None,
    );
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

async fn source(broker: &Broker, provider: &str) -> Option<CredentialSource> {
    let mut client = broker.client().await;
    let BrokerReply::CredentialStatus { providers, .. } = client
        .call(BrokerRequest::CredentialStatus { id: 1 })
        .await
        .unwrap()
    else {
        panic!("no status")
    };
    providers
        .into_iter()
        .find(|p| p.provider == provider)
        .unwrap()
        .source
}

#[tokio::test]
async fn set_key_and_clear_key_reach_the_secret_service_and_the_keyring_wins_over_env() {
    let server = LocalServer::start(|_| Reply::json(200, json!({"object":"list","data":[]}))).await;
    let broker = Broker::start(BrokerSpec {
        keyring: true,
        config: json!({"providers": {"openai": {"base_url": server.url("/v1")}}}),
        env: vec![("OPENAI_API_KEY".into(), ENV_KEY.into())],
        ..Default::default()
    });
    assert_eq!(lookup(&broker, "openai"), None);
    assert_eq!(
        source(&broker, "openai").await,
        Some(CredentialSource::Environment {
            variable: "OPENAI_API_KEY".into()
        })
    );

    // Key on stdin, so it stays out of argv and shell history.
    let mut cmd = broker.config_cli();
    cmd.args(["config", "set-key", "openai"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{STORED_KEY}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "set-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lookup(&broker, "openai").as_deref(),
        Some(STORED_KEY),
        "secret-tool finds what set-key stored"
    );
    assert_eq!(
        source(&broker, "openai").await,
        Some(CredentialSource::SecretService)
    );

    let mut client = broker.client().await;
    let got = call(
        &mut client,
        provider_request(1, "openai", "/models", json!({})),
    )
    .await;
    assert_eq!(got.status, Some(200));
    assert_eq!(
        server.seen()[0].header("authorization"),
        Some(format!("Bearer {STORED_KEY}").as_str()),
        "keyring beats env"
    );

    // `config` shows the source, never the key.
    let out = broker.config_cli().arg("config").output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("openai") && shown.contains("present (secret-service)"),
        "{shown}"
    );
    assert!(
        !shown.contains(STORED_KEY) && !shown.contains(ENV_KEY),
        "{shown}"
    );

    // An item stored by the desktop's own tool is used as well (same attributes).
    let stored = broker.secret_tool(
        &[
            "store",
            "--label=by hand",
            "service",
            "spiderweb",
            "provider",
            "anthropic",
        ],
        Some("sk-ant-by-hand"),
    );
    assert!(
        stored.status.success(),
        "{}",
        String::from_utf8_lossy(&stored.stderr)
    );
    assert_eq!(
        source(&broker, "anthropic").await,
        Some(CredentialSource::SecretService)
    );

    let out = broker
        .config_cli()
        .args(["config", "clear-key", "openai"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "clear-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lookup(&broker, "openai"),
        None,
        "clear-key removed the item"
    );
    assert_eq!(
        source(&broker, "openai").await,
        Some(CredentialSource::Environment {
            variable: "OPENAI_API_KEY".into()
        })
    );
    let got = call(
        &mut client,
        provider_request(2, "openai", "/models", json!({})),
    )
    .await;
    assert_eq!(got.status, Some(200));
    assert_eq!(
        server.seen()[1].header("authorization"),
        Some(format!("Bearer {ENV_KEY}").as_str()),
        "cache dropped on clear"
    );

    // The positional form `set-key KEY PROVIDER` (spec legacy-v1 §8).
    let out = broker
        .config_cli()
        .args(["config", "set-key", "sk-positional-1", "gemini"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lookup(&broker, "gemini").as_deref(),
        Some("sk-positional-1")
    );

    let log = broker.stderr();
    for key in [STORED_KEY, ENV_KEY, "sk-positional-1", "sk-ant-by-hand"] {
        assert!(!log.contains(key), "key in the broker's log");
    }
}

#[tokio::test]
async fn set_key_without_a_secret_service_explains_the_alternatives() {
    let broker = Broker::start(BrokerSpec::default());
    let out = broker
        .config_cli()
        .args(["config", "set-key", "sk-nowhere-to-go", "openai"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Secret Service"), "{err}");
    assert!(
        err.contains("CREDENTIALS_DIRECTORY") && err.contains("OPENAI_API_KEY"),
        "{err}"
    );
    assert!(!err.contains("sk-nowhere-to-go") && !broker.stderr().contains("sk-nowhere-to-go"));
}

#[tokio::test]
async fn keys_for_unknown_or_keyless_providers_are_refused() {
    let broker = Broker::start(BrokerSpec {
        config: json!({"providers": {"ollama": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:11434/v1"}}}),
        ..Default::default()
    });
    for (provider, needle) in [("nope", "no provider"), ("ollama", "takes no key")] {
        let out = broker
            .config_cli()
            .args(["config", "clear-key", provider])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{provider}: {err}");
    }
}

#[tokio::test]
async fn malformed_keys_are_refused_without_being_quoted() {
    let broker = Broker::start(BrokerSpec::default());
    let mut client = broker.client().await;
    for (key, needle) in [
        ("  ", "empty"),
        ("sk-has\nnewline", "control"),
        (&*"k".repeat(20_000), "longer"),
    ] {
        let reply = client
            .call(BrokerRequest::SetKey {
                id: 1,
                provider: "openai".into(),
                key: key.to_owned().into(),
            })
            .await
            .unwrap();
        let BrokerReply::Error { message, .. } = &reply else {
            panic!("{reply:?}")
        };
        assert!(message.contains(needle), "{message}");
        assert!(!message.contains("sk-has"), "{message}");
    }
}
