//! The transport-agnostic HTTP request a builder produces for the broker.
//!
//! Why it exists: the gateway never talks to a provider; it hands the broker a method, a
//! path relative to the provider's base URL, non-secret headers and the body. It must
//! never carry a credential: `Authorization`, `x-api-key`, `api-key` and
//! `x-goog-api-key` are the broker's to add.

/// One request to a provider, ready to be sent by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRequest {
    /// Always `POST` today; kept explicit so the broker does not guess.
    pub method: &'static str,
    /// Path and query relative to the provider's base URL, starting with `/`
    /// (for example `/chat/completions` under `https://api.openai.com/v1`).
    pub path: String,
    /// Non-secret headers only (content-type, accept, API version headers).
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// Why a request could not be built from a [`super::ChatRequest`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the chat request names no model")]
    EmptyModel,
    #[error("arguments of tool call {call_id} are not valid JSON: {source}")]
    InvalidToolArguments {
        call_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("arguments of tool call {call_id} are not a JSON object")]
    ToolArgumentsNotObject { call_id: String },
    #[error("{0:?} cannot be used in a URL path (letters, digits, '-', '_', '.' only)")]
    UnsafePathSegment(String),
    #[error("{0} providers are not reached over HTTP; build their request with providers::plugin::request")]
    NotHttp(&'static str),
}

impl ProviderRequest {
    pub(crate) fn post_json(path: String, mut headers: Vec<(&'static str, String)>, body: &serde_json::Value) -> Self {
        headers.insert(0, ("content-type", "application/json".to_owned()));
        headers.insert(1, ("accept", "text/event-stream".to_owned()));
        Self {
            method: "POST",
            path,
            headers,
            body: serde_json::to_vec(body).expect("a serde_json::Value always serializes"),
        }
    }
}

/// Parses a tool call's stored arguments into the JSON object that Anthropic and Gemini
/// want (OpenAI formats take the text as is).
pub(crate) fn arguments_object(
    call: &super::ToolCall,
) -> Result<serde_json::Map<String, serde_json::Value>, BuildError> {
    let text = if call.arguments.trim().is_empty() { "{}" } else { &call.arguments };
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(BuildError::ToolArgumentsNotObject { call_id: call.id.clone() }),
        Err(source) => Err(BuildError::InvalidToolArguments { call_id: call.id.clone(), source }),
    }
}
