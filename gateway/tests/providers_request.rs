//! Request building per provider: paths, non-secret headers, and bodies in each
//! provider's documented shape.

use serde_json::{Value, json};
use spiderweb_gateway::providers::{
    BuildError, ChatRequest, Message, Provider, ProviderKind, ProviderRequest, ToolCall, ToolSchema,
};

const ALL_HTTP_KINDS: [ProviderKind; 8] = [
    ProviderKind::OpenAi,
    ProviderKind::OpenAiResponses,
    ProviderKind::Codex,
    ProviderKind::Anthropic,
    ProviderKind::KimiCoding,
    ProviderKind::Gemini,
    ProviderKind::AzureOpenAi,
    ProviderKind::OpenAiCompatible,
];

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: arguments.into(), signature: None }
}

/// A turn with text, a tool call, its result, two parallel calls (one failing) and a
/// follow-up question.
fn transcript(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        system: Some("You are spiderweb.".into()),
        messages: vec![
            Message::User { text: "What is in src?".into() },
            Message::Assistant {
                text: "Looking.".into(),
                tool_calls: vec![call("call_1", "file_list", r#"{"path":"src"}"#)],
            },
            Message::ToolResult {
                call_id: "call_1".into(),
                name: "file_list".into(),
                content: r#"{"entries":[{"name":"main.rs","type":"file"}]}"#.into(),
                is_error: false,
            },
            Message::Assistant {
                text: String::new(),
                tool_calls: vec![
                    call("call_2", "file_read", r#"{"path":"src/main.rs"}"#),
                    call("call_3", "file_read", r#"{"path":"src/lib.rs"}"#),
                ],
            },
            Message::ToolResult {
                call_id: "call_2".into(),
                name: "file_read".into(),
                content: "fn main() {}".into(),
                is_error: false,
            },
            Message::ToolResult {
                call_id: "call_3".into(),
                name: "file_read".into(),
                content: "FileNotFound".into(),
                is_error: true,
            },
            Message::User { text: "Summarise.".into() },
        ],
        tools: vec![ToolSchema {
            name: "file_read".into(),
            description: "Read a file".into(),
            parameters: json!({"type":"object","properties":{"path":{"type":"string","description":"file"}},"required":["path"]}),
        }],
        max_output_tokens: 1024,
        temperature: Some(0.25),
    }
}

fn build(kind: ProviderKind, model: &str) -> (ProviderRequest, Value) {
    let request = Provider::new(kind).build(&transcript(model)).unwrap();
    let body = serde_json::from_slice(&request.body).unwrap();
    (request, body)
}

fn header<'a>(request: &'a ProviderRequest, name: &str) -> Option<&'a str> {
    request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

#[test]
fn no_request_carries_a_credential_header() {
    for kind in ALL_HTTP_KINDS {
        let (request, body) = build(kind, "gpt-4o");
        assert_eq!(request.method, "POST");
        assert!(request.path.starts_with('/'), "{kind:?}: {}", request.path);
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(header(&request, "accept"), Some("text/event-stream"));
        for (name, _) in &request.headers {
            let name = name.to_ascii_lowercase();
            assert!(
                !["authorization", "x-api-key", "api-key", "x-goog-api-key", "chatgpt-account-id"]
                    .contains(&name.as_str()),
                "{kind:?} sets {name}"
            );
        }
        assert!(body.is_object(), "{kind:?}");
    }
}

#[test]
fn openai_chat_body_follows_the_chat_completions_shape() {
    let (request, body) = build(ProviderKind::OpenAi, "gpt-4o-mini");
    assert_eq!(request.path, "/chat/completions");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["max_completion_tokens"], 1024);
    assert_eq!(body["temperature"], 0.25);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0], json!({"role":"system","content":"You are spiderweb."}));
    assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], r#"{"path":"src"}"#);
    assert_eq!(messages[2]["tool_calls"][0]["type"], "function");
    assert_eq!(messages[4]["content"], Value::Null, "no text beside calls is null");
    assert_eq!(messages[4]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(messages[6], json!({"role":"tool","tool_call_id":"call_3","content":"FileNotFound"}));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "file_read");
}

#[test]
fn azure_puts_the_deployment_and_api_version_in_the_path() {
    let provider = Provider::new(ProviderKind::AzureOpenAi).with_azure_api_version("2025-04-01-preview");
    let request = provider.build(&transcript("prod-gpt4o")).unwrap();
    assert_eq!(request.path, "/openai/deployments/prod-gpt4o/chat/completions?api-version=2025-04-01-preview");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert!(body.get("model").is_none());
    for hostile in ["../../admin", "a/b", "x?y=1", ""] {
        let error = provider.build(&transcript(hostile)).unwrap_err();
        assert!(matches!(error, BuildError::UnsafePathSegment(_) | BuildError::EmptyModel), "{hostile}: {error}");
    }
}

#[test]
fn compatible_servers_get_max_tokens() {
    let (request, body) = build(ProviderKind::OpenAiCompatible, "llama3.1:8b");
    assert_eq!(request.path, "/chat/completions");
    assert_eq!(body["max_tokens"], 1024);
    assert!(body.get("max_completion_tokens").is_none());
}

#[test]
fn responses_body_is_stateless_with_instructions() {
    let (request, body) = build(ProviderKind::OpenAiResponses, "gpt-5.1");
    assert_eq!(request.path, "/responses");
    assert_eq!(body["instructions"], "You are spiderweb.");
    assert_eq!(body["store"], false);
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_output_tokens"], 1024);
    let input = body["input"].as_array().unwrap();
    assert_eq!(input[0]["content"][0], json!({"type":"input_text","text":"What is in src?"}));
    assert_eq!(input[1]["content"][0]["type"], "output_text");
    assert_eq!(
        input[2],
        json!({"type":"function_call","call_id":"call_1","name":"file_list","arguments":"{\"path\":\"src\"}"})
    );
    assert_eq!(input[4]["type"], "function_call");
    assert_eq!(input[5]["call_id"], "call_3");
    assert_eq!(input[7], json!({"type":"function_call_output","call_id":"call_3","output":"FileNotFound"}));
    assert_eq!(body["tools"][0]["name"], "file_read");
    assert_eq!(body["tools"][0]["type"], "function");
}

#[test]
fn codex_leaves_out_the_fields_its_backend_rejects() {
    let (request, body) = build(ProviderKind::Codex, "gpt-5.3-codex");
    assert_eq!(request.path, "/responses");
    assert_eq!(body["store"], false);
    assert!(body.get("instructions").is_some());
    assert!(body.get("max_output_tokens").is_none());
    assert!(body.get("temperature").is_none());
    assert_eq!(header(&request, "openai-beta"), Some("responses=experimental"));
    assert_eq!(ProviderKind::Codex.default_base_url(), Some("https://chatgpt.com/backend-api/codex"));
}

#[test]
fn anthropic_turns_alternate_with_tool_results_first() {
    for kind in [ProviderKind::Anthropic, ProviderKind::KimiCoding] {
        let (request, body) = build(kind, "claude-sonnet-4-5");
        assert_eq!(request.path, "/messages");
        assert_eq!(header(&request, "anthropic-version"), Some("2023-06-01"));
        assert_eq!(body["system"], "You are spiderweb.");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
        let messages = body["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
        assert_eq!(
            messages[1]["content"][1],
            json!({"type":"tool_use","id":"call_1","name":"file_list","input":{"path":"src"}})
        );
        assert_eq!(messages[3]["content"].as_array().unwrap().len(), 2, "no empty text block");
        let last = messages[4]["content"].as_array().unwrap();
        assert_eq!(last[0]["type"], "tool_result");
        assert_eq!(last[0]["tool_use_id"], "call_2");
        assert!(last[0].get("is_error").is_none());
        assert_eq!(last[1]["is_error"], true);
        assert_eq!(last[2], json!({"type":"text","text":"Summarise."}));
    }
}

#[test]
fn gemini_uses_model_turns_function_responses_and_signatures() {
    let mut chat = transcript("gemini-2.5-flash");
    if let Message::Assistant { tool_calls, .. } = &mut chat.messages[1] {
        tool_calls[0].signature = Some("c2ln".into());
    }
    let request = Provider::new(ProviderKind::Gemini).build(&chat).unwrap();
    assert_eq!(request.path, "/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "You are spiderweb.");
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 1024);
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents.iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user", "model", "user"]);
    assert_eq!(
        contents[1]["parts"][1],
        json!({"functionCall":{"name":"file_list","args":{"path":"src"}},"thoughtSignature":"c2ln"})
    );
    assert_eq!(
        contents[4]["parts"][1],
        json!({"functionResponse":{"name":"file_read","response":{"error":"FileNotFound"}}})
    );
    assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "file_read");
    let error = Provider::new(ProviderKind::Gemini).build(&transcript("../v1/files")).unwrap_err();
    assert!(matches!(error, BuildError::UnsafePathSegment(_)));
}

#[test]
fn invalid_stored_arguments_are_refused_for_object_providers() {
    let mut chat = transcript("claude-sonnet-4-5");
    chat.messages[1] =
        Message::Assistant { text: String::new(), tool_calls: vec![call("call_1", "file_list", "{not json")] };
    for kind in [ProviderKind::Anthropic, ProviderKind::Gemini] {
        let error = Provider::new(kind).build(&chat).unwrap_err();
        assert!(matches!(error, BuildError::InvalidToolArguments { .. }), "{kind:?}: {error}");
    }
    // OpenAI formats pass the text through as the provider produced it.
    assert!(Provider::new(ProviderKind::OpenAi).build(&chat).is_ok());
}

#[test]
fn config_names_map_to_kinds_and_key_sources() {
    assert_eq!(ProviderKind::from_config_name("kimi-coding"), Some(ProviderKind::KimiCoding));
    assert_eq!(ProviderKind::from_config_name("openai-codex-spark"), Some(ProviderKind::Codex));
    assert_eq!(ProviderKind::from_config_name("google"), Some(ProviderKind::Gemini));
    assert_eq!(ProviderKind::from_config_name("nope"), None);
    assert_eq!(
        ProviderKind::KimiCoding.credential_env_vars(),
        ["KIMICODE_API_KEY", "KIMI_API_KEY", "ANTHROPIC_API_KEY"]
    );
    let hint = ProviderKind::Anthropic.set_key_hint();
    assert!(hint.contains("set-key <api-key> anthropic") && hint.contains("ANTHROPIC_API_KEY"));
    assert!(ProviderKind::Codex.set_key_hint().contains("codex auth login"));
    assert!(matches!(Provider::new(ProviderKind::Plugin).build(&transcript("m")), Err(BuildError::NotHttp(_))));
}
