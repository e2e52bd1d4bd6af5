//! Which model provider `spiderweb up` wires in, and why.
//!
//! Why it exists: `up` must work for someone with no account. In order: `--demo` forces the
//! demo provider; `--provider` (with `--model`) names a provider the broker knows; a
//! `provider` section in the user's own gateway config is kept; else an OpenAI-compatible
//! server answering `GET <ollama>/models` within [`PROBE_TIMEOUT`] is used (its first model,
//! or `--model`); else the built-in demo provider. The reason is printed, so nobody wonders
//! where the answers come from.
//!
//! What it must never do: wait long (the probe is bounded), read a credential, or send a
//! prompt anywhere while probing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The OpenAI-compatible base URL of a local Ollama.
pub const OLLAMA_BASE_URL: &str = "http://127.0.0.1:11434/v1";
/// The broker's provider id `up` registers a detected local server under.
pub const LOCAL_PROVIDER_ID: &str = "local";
/// The broker's provider id of the demo provider.
pub const DEMO_PROVIDER_ID: &str = "demo";
/// How long the local server may take to answer the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Largest `/models` answer read.
const MAX_MODELS_BYTES: usize = 1024 * 1024;

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// The gateway config's `provider` section as given (flag or user's config); the broker
    /// uses its built-in or configured entry.
    Configured { provider: Value, reason: String },
    /// A local OpenAI-compatible server at `base_url`, speaking model `model`.
    Local { base_url: String, model: String },
    /// The built-in demo provider.
    Demo { reason: String },
}

impl Choice {
    /// The gateway config's `provider` section for this choice.
    pub fn gateway_provider(&self) -> Value {
        match self {
            Choice::Configured { provider, .. } => provider.clone(),
            Choice::Local { model, .. } => {
                json!({"name": "openai-compatible", "model": model, "broker_provider": LOCAL_PROVIDER_ID})
            }
            Choice::Demo { .. } => json!({"name": "openai-compatible", "model": super::demo::MODEL,
                "broker_provider": DEMO_PROVIDER_ID}),
        }
    }

    /// The line `up` prints.
    pub fn describe(&self) -> String {
        match self {
            Choice::Configured { provider, reason } => {
                let name = provider.get("name").and_then(Value::as_str).unwrap_or("?");
                let model = provider.get("model").and_then(Value::as_str).unwrap_or("?");
                format!("{name} / {model} ({reason})")
            }
            Choice::Local { base_url, model } => {
                format!("openai-compatible / {model} (an OpenAI-compatible server answers at {base_url})")
            }
            Choice::Demo { reason } => format!("built-in demo provider, a fixed script, not a model ({reason})"),
        }
    }
}

/// What the user asked for.
pub struct Request<'a> {
    pub force_demo: bool,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    /// The `provider` section of the user's gateway config file, if it has one.
    pub configured: Option<&'a Value>,
    /// Where to probe for a local server (`…/v1`).
    pub local_base_url: &'a str,
}

/// Decides; probes the local server only when nothing else decided.
pub async fn choose(request: Request<'_>) -> Result<Choice, String> {
    if request.force_demo {
        return Ok(Choice::Demo { reason: "--demo".into() });
    }
    if let Some(name) = request.provider {
        let model = request.model.ok_or("--provider needs --model (the model id at that provider)")?;
        let provider = json!({"name": name, "model": model});
        return Ok(Choice::Configured { provider, reason: "--provider".into() });
    }
    if let Some(provider) = request.configured {
        let mut provider = provider.clone();
        if let Some(model) = request.model {
            provider["model"] = json!(model);
        }
        return Ok(Choice::Configured { provider, reason: "from your gateway config".into() });
    }
    match probe(request.local_base_url).await {
        Ok(first_model) => {
            let model = request.model.map(str::to_owned).or(first_model);
            match model {
                Some(model) => Ok(Choice::Local { base_url: request.local_base_url.to_owned(), model }),
                None => Ok(Choice::Demo {
                    reason: format!("{} answers but lists no model; pass --model", request.local_base_url),
                }),
            }
        }
        Err(why) => Ok(Choice::Demo {
            reason: format!(
                "no provider configured and no OpenAI-compatible server at {}: {why}",
                request.local_base_url
            ),
        }),
    }
}

/// `GET <base>/models`; the first model's id.
async fn probe(base_url: &str) -> Result<Option<String>, String> {
    let uri: hyper::Uri = format!("{}/models", base_url.trim_end_matches('/')).parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// is probed".into());
    }
    let host = uri.host().ok_or("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = hyper::Request::get(uri.path())
            .header("host", format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("GET /models answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_MODELS_BYTES).collect().await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<Value>(&body.to_bytes()).map_err(|e| format!("GET /models is not JSON: {e}"))
    };
    let models = tokio::time::timeout(PROBE_TIMEOUT, exchange).await.map_err(|_| "no answer in time".to_owned())??;
    Ok(models
        .get("data")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find_map(|m| m.get("id").and_then(Value::as_str)))
        .map(str::to_owned))
}
