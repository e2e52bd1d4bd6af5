//! Providers: building model requests and parsing their streamed replies, without ever
//! touching the network or a credential.
//!
//! Why it exists: the gateway turns a normalized chat ([`ChatRequest`]) into a
//! [`ProviderRequest`] (method, path relative to the provider's base URL, non-secret
//! headers, body) that the broker sends with the credential added, and parses the bytes
//! the broker streams back into one event vocabulary ([`StreamEvent`]). What it must never
//! do: hold or add a credential, pick an upstream URL, or perform I/O. Plugin providers
//! (local binaries) are run by the broker too: [`plugin`] builds their request and parses
//! the stdout the broker sends back.
//!
//! The turn loop drives it like this:
//!
//! ```
//! # use spiderweb_gateway::providers::*;
//! # use spiderweb_gateway::providers::chat::{ChatRequest, Message};
//! # use spiderweb_gateway::providers::event::StreamEvent;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chat = ChatRequest {
//!     model: "claude-sonnet-4-5".into(),
//!     system: None,
//!     messages: vec![Message::User { text: "Say hi".into() }],
//!     tools: vec![],
//!     max_output_tokens: 256,
//!     temperature: None,
//! };
//! let provider = Provider::new(ProviderKind::Anthropic);
//! let request = provider.build(&chat)?; // the broker sends this and streams the reply back
//! assert_eq!(request.path, "/v1/messages");
//! let reply: &[&[u8]] = &[
//!     b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
//!     b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
//!     b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
//! ];
//! let mut parser = provider.parser();
//! parser.head(200, &[("content-type", "text/event-stream")])?;
//! let mut events = Vec::new();
//! for chunk in reply {
//!     events.extend(parser.feed(chunk)?); // forward text deltas to the client as they come
//! }
//! events.extend(parser.finish()?); // fails if the stream ended before its terminal event
//! assert_eq!(events.first(), Some(&StreamEvent::TextDelta("Hi".into())));
//! assert!(matches!(events.last(), Some(StreamEvent::Done { .. })));
//! # Ok(()) }
//! ```
//!
//! Codemap: [`chat`] the normalized request; [`request`] what the broker sends;
//! [`event`] what the parsers yield; [`error`] typed failures; [`stream`] the parser
//! driver; `sse` the SSE framing adapter; `tool_calls` the call assembler; one module per
//! wire format (`openai_chat`, `openai_responses`, `anthropic`, `gemini`); [`plugin`]
//! the JSON-RPC plugin protocol (request line, answer parsing); [`catalog`] models, limits and prices; [`retry`] the retry
//! policy.

mod anthropic;
pub mod catalog;
pub mod chat;
pub mod error;
pub mod event;
mod gemini;
mod openai_chat;
mod openai_responses;
pub mod plugin;
pub mod request;
pub mod retry;
mod sse;
pub mod stream;
mod tool_calls;

pub use chat::{ChatRequest, Message, ToolCall, ToolSchema};
pub use error::{ErrorKind, ProviderError};
pub use event::{StopReason, StreamEvent, Usage};
pub use request::{BuildError, ProviderRequest};
pub use stream::{Limits, StreamParser};

use stream::WireDecoder;

/// Azure OpenAI API version used unless configured otherwise (the current GA version).
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

/// Every provider this version can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// OpenAI Chat Completions.
    OpenAi,
    /// OpenAI Responses API.
    OpenAiResponses,
    /// The ChatGPT Codex backend (Responses API with Codex OAuth).
    Codex,
    /// Anthropic Messages.
    Anthropic,
    /// Kimi Coding (Anthropic-compatible Messages).
    KimiCoding,
    /// Google Gemini.
    Gemini,
    /// Azure OpenAI (Chat Completions on a deployment).
    AzureOpenAi,
    /// Any OpenAI-compatible server (Ollama, vLLM, llama.cpp) by base URL.
    OpenAiCompatible,
    /// A local binary speaking JSON-RPC on stdin/stdout, run by the broker (see [`plugin`]).
    Plugin,
}

impl ProviderKind {
    /// Parses the config's `provider.name` (legacy names of `spec/legacy-v1.md` §7 and the
    /// seeds included).
    pub fn from_config_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "openai" => Self::OpenAi,
            "openai-responses" => Self::OpenAiResponses,
            "openai-codex" | "openai-codex-spark" | "codex" => Self::Codex,
            "anthropic" | "claude" => Self::Anthropic,
            "kimi-coding" | "kimi" => Self::KimiCoding,
            "google" | "gemini" => Self::Gemini,
            "azure-openai" | "azure" => Self::AzureOpenAi,
            "openai-compatible" | "ollama" | "vllm" | "llamacpp" | "llama.cpp" => Self::OpenAiCompatible,
            "plugin" => Self::Plugin,
            _ => return None,
        })
    }

    /// The base URL the paths of [`Provider::build`] are relative to, following each
    /// provider SDK's own convention (the broker's allowlist is the authority; this is
    /// the default it should carry). `None` where it is per-deployment.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::OpenAi | Self::OpenAiResponses => Some("https://api.openai.com/v1"),
            Self::Codex => Some("https://chatgpt.com/backend-api/codex"),
            Self::Anthropic => Some("https://api.anthropic.com"),
            Self::KimiCoding => Some("https://api.kimi.com/coding"),
            Self::Gemini => Some("https://generativelanguage.googleapis.com"),
            Self::OpenAiCompatible => Some("http://127.0.0.1:11434/v1"),
            Self::AzureOpenAi | Self::Plugin => None,
        }
    }

    /// Where the broker looks for this provider's key, in order (`spec/legacy-v1.md` §7
    /// and the seeds), for error messages such as a 401's.
    pub fn credential_env_vars(self) -> &'static [&'static str] {
        match self {
            Self::OpenAi | Self::OpenAiResponses => &["OPENAI_API_KEY"],
            Self::Codex => &["OPENAI_CODEX_API_KEY", "OPENAI_API_KEY"],
            Self::Anthropic => &["ANTHROPIC_API_KEY"],
            Self::KimiCoding => &["KIMICODE_API_KEY", "KIMI_API_KEY", "ANTHROPIC_API_KEY"],
            Self::Gemini => &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
            Self::AzureOpenAi => &["AZURE_OPENAI_API_KEY"],
            Self::OpenAiCompatible | Self::Plugin => &[],
        }
    }

    /// How to give the broker a key for this provider, for the message of an
    /// [`ErrorKind::Auth`] failure (the broker adds which source it actually tried).
    pub fn set_key_hint(self) -> String {
        let store = format!("`spiderweb-config config set-key <api-key> {}`", self.config_name());
        let vars = self.credential_env_vars();
        match self {
            Self::Codex => format!(
                "run `codex auth login` (the broker reads ~/.codex/auth.json), or {store}, or set {}",
                vars.join(" or ")
            ),
            _ if vars.is_empty() => format!("if this server needs a key, store it with {store}"),
            _ => format!("run {store}, or set {} for the broker", vars.join(" or ")),
        }
    }

    /// The name used in config files and the catalog.
    pub fn config_name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::OpenAiResponses => "openai-responses",
            Self::Codex => "openai-codex",
            Self::Anthropic => "anthropic",
            Self::KimiCoding => "kimi-coding",
            Self::Gemini => "gemini",
            Self::AzureOpenAi => "azure-openai",
            Self::OpenAiCompatible => "openai-compatible",
            Self::Plugin => "plugin",
        }
    }
}

/// One configured provider: its kind and the few non-secret settings its wire format
/// needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    kind: ProviderKind,
    azure_api_version: String,
    limits: Limits,
}

impl Provider {
    pub fn new(kind: ProviderKind) -> Self {
        Self { kind, azure_api_version: DEFAULT_AZURE_API_VERSION.to_owned(), limits: Limits::default() }
    }

    /// Sets the Azure `api-version` query parameter.
    pub fn with_azure_api_version(mut self, version: impl Into<String>) -> Self {
        self.azure_api_version = version.into();
        self
    }

    /// Overrides the parser's size bounds.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Builds the streaming request for `chat`.
    pub fn build(&self, chat: &ChatRequest) -> Result<ProviderRequest, BuildError> {
        if chat.model.is_empty() {
            return Err(BuildError::EmptyModel);
        }
        match self.kind {
            ProviderKind::OpenAi => openai_chat::build(&openai_chat::Flavour::OpenAi, chat),
            ProviderKind::OpenAiCompatible => openai_chat::build(&openai_chat::Flavour::Compatible, chat),
            ProviderKind::AzureOpenAi => {
                check_path_segment(&chat.model)?;
                check_path_segment(&self.azure_api_version)?;
                let flavour = openai_chat::Flavour::Azure { api_version: self.azure_api_version.clone() };
                openai_chat::build(&flavour, chat)
            }
            ProviderKind::OpenAiResponses => openai_responses::build(openai_responses::Flavour::OpenAi, chat),
            ProviderKind::Codex => openai_responses::build(openai_responses::Flavour::Codex, chat),
            ProviderKind::Anthropic | ProviderKind::KimiCoding => anthropic::build(chat),
            ProviderKind::Gemini => {
                check_path_segment(&chat.model)?;
                gemini::build(chat)
            }
            ProviderKind::Plugin => Err(BuildError::NotHttp("plugin")),
        }
    }

    /// A fresh parser for one reply to a request built by [`Provider::build`]. Plugin
    /// requests are built by [`plugin::request`] and their replies (not SSE) collected by
    /// [`plugin::PluginReply`]; asking for a plugin parser gives one that rejects any body.
    pub fn parser(&self) -> StreamParser {
        let decoder: Box<dyn WireDecoder> = match self.kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible | ProviderKind::AzureOpenAi => {
                Box::<openai_chat::Decoder>::default()
            }
            ProviderKind::OpenAiResponses | ProviderKind::Codex => Box::<openai_responses::Decoder>::default(),
            ProviderKind::Anthropic | ProviderKind::KimiCoding => Box::<anthropic::Decoder>::default(),
            ProviderKind::Gemini => Box::<gemini::Decoder>::default(),
            ProviderKind::Plugin => Box::new(stream::NotStreamed),
        };
        StreamParser::new(decoder, self.limits)
    }
}

/// Model and deployment names and API versions that go into a URL path must not be able
/// to change it.
fn check_path_segment(value: &str) -> Result<(), BuildError> {
    let safe = !value.is_empty()
        && value != "."
        && value != ".."
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if safe { Ok(()) } else { Err(BuildError::UnsafePathSegment(value.to_owned())) }
}
