//! `spiderweb-config` edits of the gateway's config file (spec `legacy-v1.md` §8).

mod common;

use common::*;
use serde_json::{Value, json};

fn run(broker: &Broker, args: &[&str]) -> std::process::Output {
    let out = broker.config_cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn settings_are_written_with_every_other_key_kept() {
    let broker = Broker::start(BrokerSpec::default());
    let path = broker.dir.path().join("gateway.json");
    std::fs::write(
        &path,
        json!({"runtime": {"max_run_steps": 77}, "server": {"port": 1}}).to_string(),
    )
    .unwrap();

    let out = run(&broker, &["config", "path"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path.display().to_string()
    );
    run(&broker, &["config", "set-provider", "kimi-coding"]);
    run(
        &broker,
        &[
            "config",
            "set-server",
            "--bind",
            "0.0.0.0",
            "--port",
            "9000",
        ],
    );
    run(&broker, &["config", "set-log", "debug"]);

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        doc["provider"],
        json!({"name": "kimi-coding", "model": "kimi-k2.5"})
    );
    assert_eq!(doc["server"], json!({"port": 9000, "bind": "0.0.0.0"}));
    assert_eq!(doc["log"]["level"], "debug");
    assert_eq!(
        doc["runtime"]["max_run_steps"], 77,
        "unrelated keys survive"
    );

    let shown = String::from_utf8(run(&broker, &["config"]).stdout).unwrap();
    for needle in [
        "kimi-k2.5",
        "0.0.0.0",
        "9000",
        "debug",
        "kimi-coding",
        "missing",
    ] {
        assert!(shown.contains(needle), "{needle} in {shown}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let broker = Broker::start(BrokerSpec::default());
    let out = broker
        .config_cli()
        .args(["config", "set-log", "loud"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loud"));
    let out = broker
        .config_cli()
        .args(["config", "set-server", "--port", "70000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let path = broker.dir.path().join("gateway.json");
    std::fs::write(&path, "{not json").unwrap();
    let out = broker
        .config_cli()
        .args(["config", "set-log", "info"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.json"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{not json",
        "a broken file is not overwritten"
    );
}
