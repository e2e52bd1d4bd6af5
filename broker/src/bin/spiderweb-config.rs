//! `spiderweb-config`: the operator's CLI (spec `legacy-v1.md` §8).
//!
//! Gateway settings (`set-provider`, `set-server`, `set-log`) are edits of the gateway's JSON
//! config file, written atomically with every other key kept. Key changes never touch a file:
//! they go to the broker over its socket, which stores them in the Secret Service. `config`
//! shows each provider's key as present/absent with its source, asked from the broker.
//!
//! A key given on the command line ends up in shell history; `set-key <provider>` without a
//! key reads it from stdin instead.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use serde_json::{Map, Value};
use spiderweb_broker::paths;
use spiderweb_client::broker::BrokerClient;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest};

#[derive(Parser)]
#[command(name = "spiderweb-config", version, about = "Configure spiderweb and its provider keys")]
struct Cli {
    /// Gateway config file (default `$SPIDERWEB_CONFIG`, else `~/.config/spiderweb/config.json`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Broker socket (default `$SPIDERWEB_BROKER_SOCKET`, else `$XDG_RUNTIME_DIR/spiderweb/broker.sock`).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Show or change the configuration.
    Config {
        #[command(subcommand)]
        action: Option<Action>,
    },
}

#[derive(Subcommand)]
enum Action {
    /// Print the config file path.
    Path,
    /// Set the provider (and model) the gateway uses.
    SetProvider { name: String, model: Option<String> },
    /// Store a provider key in the Secret Service via the broker: `set-key [KEY] <provider>`.
    /// Without KEY the key is read from stdin (keeps it out of shell history).
    SetKey {
        #[arg(num_args = 1..=2, value_names = ["KEY", "PROVIDER"])]
        args: Vec<String>,
    },
    /// Remove a provider key from the Secret Service via the broker.
    ClearKey { provider: String },
    /// Set the gateway's bind address and/or port.
    SetServer {
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        #[arg(long)]
        port: Option<u16>,
    },
    /// Set the log level.
    SetLog {
        #[arg(value_parser = ["trace", "debug", "info", "warn", "error"])]
        level: String,
    },
}

/// Model used when `set-provider` is given none.
fn default_model(provider: &str) -> &'static str {
    match provider {
        "openai-codex" => "gpt-5.3-codex",
        "openai-codex-spark" => "gpt-5.3-codex-spark",
        "kimi-coding" => "kimi-k2.5",
        "anthropic" => "claude-sonnet-4-5",
        "gemini" => "gemini-2.5-pro",
        _ => "gpt-4o-mini",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = gateway_config_path(cli.config.as_deref());
    let socket = cli.socket.clone().unwrap_or_else(paths::default_socket_path);
    let Top::Config { action } = cli.command;
    let result = match action {
        None => show(&config_path, &socket),
        Some(Action::Path) => {
            println!("{}", config_path.display());
            Ok(())
        }
        Some(Action::SetProvider { name, model }) => edit(&config_path, |doc| {
            let model = model.unwrap_or_else(|| default_model(&name).to_owned());
            let section = section(doc, "provider");
            section.insert("name".into(), Value::String(name));
            section.insert("model".into(), Value::String(model));
        }),
        Some(Action::SetServer { bind, port }) => {
            if bind.is_none() && port.is_none() {
                Err("set-server needs --bind and/or --port".into())
            } else {
                edit(&config_path, |doc| {
                    let section = section(doc, "server");
                    if let Some(bind) = bind {
                        section.insert("bind".into(), Value::String(bind.to_string()));
                    }
                    if let Some(port) = port {
                        section.insert("port".into(), Value::from(port));
                    }
                })
            }
        }
        Some(Action::SetLog { level }) => edit(&config_path, |doc| {
            section(doc, "log").insert("level".into(), Value::String(level));
        }),
        Some(Action::SetKey { mut args }) => {
            let provider = args.pop().expect("clap requires one argument");
            let key = match args.pop() {
                Some(k) => Ok(SecretString::from(k)),
                None => read_key_from_stdin(),
            };
            key.and_then(|key| key_change(&socket, BrokerRequest::SetKey { id: 1, provider: provider.clone(), key }))
                .map(|()| println!("stored the {provider} key in the Secret Service"))
        }
        Some(Action::ClearKey { provider }) => {
            key_change(&socket, BrokerRequest::ClearKey { id: 1, provider: provider.clone() })
                .map(|()| println!("removed the {provider} key from the Secret Service"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("spiderweb-config: {message}");
            ExitCode::FAILURE
        }
    }
}

fn gateway_config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("SPIDERWEB_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    paths::home_dir().join(".config/spiderweb/config.json")
}

fn read_key_from_stdin() -> Result<SecretString, String> {
    if std::io::stdin().is_terminal() {
        eprintln!("Paste the key, then press Enter and Ctrl-D:");
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the key from stdin: {e}"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err("no key on stdin".into());
    }
    Ok(SecretString::from(key.to_owned()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn key_change(socket: &Path, request: BrokerRequest) -> Result<(), String> {
    runtime().block_on(async {
        let mut client =
            BrokerClient::connect(socket).await.map_err(|e| format!("{e} (is spiderweb-broker running?)"))?;
        match client.call(request).await.map_err(|e| e.to_string())? {
            BrokerReply::Done { .. } => Ok(()),
            BrokerReply::Error { message, .. } => Err(message),
            other => Err(format!("unexpected reply from the broker: {other:?}")),
        }
    })
}

fn show(config_path: &Path, socket: &Path) -> Result<(), String> {
    let doc = read_doc(config_path)?;
    let get = |section: &str, key: &str| doc.get(section).and_then(|s| s.get(key)).cloned();
    let text = |v: Option<Value>, default: &str| match v {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => default.to_owned(),
    };
    let exists = if config_path.exists() { "" } else { " (not created yet; defaults)" };
    println!("config file:     {}{exists}", config_path.display());
    println!("bind:            {}", text(get("server", "bind"), "127.0.0.1"));
    println!("port:            {}", text(get("server", "port"), "18790"));
    println!("provider:        {}", text(get("provider", "name"), "openai"));
    println!("model:           {}", text(get("provider", "model"), "gpt-4o-mini"));
    println!("log level:       {}", text(get("log", "level"), "info"));
    println!("broker socket:   {}", socket.display());
    let status = runtime().block_on(async {
        let mut client = BrokerClient::connect(socket).await.map_err(|e| e.to_string())?;
        client.call(BrokerRequest::CredentialStatus { id: 1 }).await.map_err(|e| e.to_string())
    });
    match status {
        Ok(BrokerReply::CredentialStatus { providers, .. }) => {
            println!("provider keys:");
            for p in providers {
                let state = match (p.keyless, p.source) {
                    (true, _) => "not needed".to_owned(),
                    (false, Some(source)) => format!("present ({source})"),
                    (false, None) => "missing".to_owned(),
                };
                println!("  {:<20} {state}", p.provider);
            }
            Ok(())
        }
        Ok(BrokerReply::Error { message, .. }) => Err(format!("the broker refused the key status: {message}")),
        Ok(other) => Err(format!("unexpected reply from the broker: {other:?}")),
        Err(e) => {
            println!("provider keys:   unknown ({e}; start spiderweb-broker to see them)");
            Ok(())
        }
    }
}

fn read_doc(path: &Path) -> Result<Map<String, Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!("{}: not a JSON object", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn section<'a>(doc: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let entry = doc.entry(name).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("made an object above")
}

/// Applies `change` to the gateway config and replaces the file atomically, other keys kept.
fn edit(path: &Path, change: impl FnOnce(&mut Map<String, Value>)) -> Result<(), String> {
    let mut doc = read_doc(path)?;
    change(&mut doc);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(&Value::Object(doc)).expect("JSON serialises");
    text.push('\n');
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(tmp.path(), text).map_err(|e| format!("{}: {e}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| format!("{}: {}", path.display(), e.error))?;
    println!("updated {}", path.display());
    Ok(())
}
