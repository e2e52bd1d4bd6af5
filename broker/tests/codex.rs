//! Codex OAuth through the real broker: a local token endpoint that rotates refresh tokens
//! like OpenAI's, and a local Codex backend that checks the bearer token.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use spiderweb_proto::broker::ErrorCode;

const ACCOUNT: &str = "acc-1234";

/// A JWT-shaped token whose `exp` is `exp_from_now` seconds away (negative: expired).
fn jwt(name: &str, exp_from_now: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sig-{name}",
        enc(json!({"alg":"RS256"})),
        enc(json!({"exp": now + exp_from_now, "sub": name}))
    )
}

fn rfc3339_days_ago(days: u64) -> String {
    humantime::format_rfc3339_micros(SystemTime::now() - Duration::from_secs(days * 86_400))
        .to_string()
}

fn auth_json(access: &str, refresh: &str, last_refresh: &str) -> Value {
    json!({
        "OPENAI_API_KEY": null,
        "tokens": {"id_token": jwt("id", 3600), "access_token": access, "refresh_token": refresh, "account_id": ACCOUNT},
        "last_refresh": last_refresh,
        "codex_cli_field": {"kept": true}
    })
}

/// The token endpoint: rotates refresh tokens, refuses a reused one like OpenAI does.
struct TokenServer {
    server: LocalServer,
    exchanges: Arc<AtomicUsize>,
    /// When the first successful exchange was answered.
    first_answer: Arc<Mutex<Option<std::time::Instant>>>,
}

#[derive(Clone, Copy)]
enum TokenBehaviour {
    Rotate { delay_ms: u64 },
    Permanent,
    FailOnceThenRotate,
}

async fn token_server(behaviour: TokenBehaviour, new_access: String) -> TokenServer {
    let exchanges = Arc::new(AtomicUsize::new(0));
    let counter = exchanges.clone();
    let used = Arc::new(Mutex::new(Vec::<String>::new()));
    let first_answer = Arc::new(Mutex::new(None));
    let answered = first_answer.clone();
    let server = LocalServer::start(move |seen| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let refresh = body["refresh_token"].as_str().unwrap_or("").to_owned();
        let well_formed = body["grant_type"] == "refresh_token"
            && body["scope"] == "openid profile email"
            && body["client_id"].as_str().is_some_and(|c| !c.is_empty())
            && seen.header("content-type") == Some("application/json");
        if !well_formed {
            return Reply::json(400, json!({"error":"invalid_request","error_description":"malformed refresh grant"}));
        }
        if used.lock().unwrap().contains(&refresh) {
            return Reply::json(401, json!({"error":{"code":"refresh_token_reused","message":"Your refresh token has already been used to generate a new access token. Please try signing in again."}}));
        }
        match behaviour {
            TokenBehaviour::Permanent => {
                return Reply::json(401, json!({"error":{"code":"refresh_token_expired","message":"Your refresh token has expired. Please try signing in again."}}));
            }
            TokenBehaviour::FailOnceThenRotate if n == 1 => {
                return Reply::json(503, json!({"error":{"message":"upstream connect error","type":"server_error"}}));
            }
            TokenBehaviour::Rotate { delay_ms } => std::thread::sleep(Duration::from_millis(delay_ms)),
            TokenBehaviour::FailOnceThenRotate => {}
        }
        used.lock().unwrap().push(refresh);
        answered.lock().unwrap().get_or_insert_with(std::time::Instant::now);
        Reply::json(200, json!({"id_token": jwt("id2", 3600), "access_token": new_access, "refresh_token": format!("rt-rotated-{n}"), "token_type":"Bearer","expires_in":864000}))
    })
    .await;
    TokenServer {
        server,
        exchanges,
        first_answer,
    }
}

/// The Codex backend: 200 only for `accepted`, 401 in OpenAI's shape otherwise.
async fn codex_backend(accepted: Arc<Mutex<String>>) -> LocalServer {
    LocalServer::start(move |seen| {
        let ok = seen.header("authorization") == Some(format!("Bearer {}", accepted.lock().unwrap()).as_str())
            && seen.header("chatgpt-account-id") == Some(ACCOUNT);
        if ok {
            Reply::Full { status: 200, headers: vec![("content-type", "text/event-stream".into())], body: "event: response.completed\ndata: {}\n\n".into() }
        } else {
            Reply::json(401, json!({"error":{"message":"Provided authentication token is expired. Please try signing in again.","type":null,"code":"token_expired","param":null}}))
        }
    })
    .await
}

fn spec(backend: &LocalServer, tokens: &TokenServer, auth: Value) -> BrokerSpec {
    BrokerSpec {
        config: json!({
            "providers": {"openai-codex": {"base_url": backend.url("/backend-api/codex")}},
            "codex": {"token_url": tokens.server.url("/oauth/token")}
        }),
        codex_auth: Some(auth),
        ..Default::default()
    }
}

/// One request to the Codex backend through the broker, on a connection of its own.
async fn codex_call(broker: &Broker, id: u64) -> Collected {
    let mut client = broker.client().await;
    call(
        &mut client,
        provider_request(id, "openai-codex", "/responses", json!({})),
    )
    .await
}

fn read_auth(broker: &Broker) -> Value {
    serde_json::from_slice(&std::fs::read(broker.codex_auth_path()).unwrap()).unwrap()
}

#[tokio::test]
async fn a_stale_login_is_refreshed_before_use_and_rewritten_atomically_with_mode_0600() {
    let new_access = jwt("fresh", 3600);
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 0 }, new_access.clone()).await;
    let backend = codex_backend(Arc::new(Mutex::new(new_access.clone()))).await;
    let old_access = jwt("old", 3600);
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&old_access, "rt-original", &rfc3339_days_ago(9)),
    ));
    let mut client = broker.client().await;
    let got = call(
        &mut client,
        provider_request(
            1,
            "openai-codex",
            "/responses",
            json!({"model":"gpt-5.3-codex"}),
        ),
    )
    .await;
    assert_eq!(got.status, Some(200), "{got:?} {}", broker.stderr());
    assert_eq!(tokens.exchanges.load(Ordering::SeqCst), 1);
    let grant: Value = serde_json::from_slice(&tokens.server.seen()[0].body).unwrap();
    assert_eq!(grant["refresh_token"], "rt-original");

    let auth = read_auth(&broker);
    assert_eq!(auth["tokens"]["access_token"], new_access.as_str());
    assert_eq!(
        auth["tokens"]["refresh_token"], "rt-rotated-1",
        "the rotated refresh token is kept"
    );
    assert_eq!(auth["tokens"]["account_id"], ACCOUNT);
    assert_eq!(
        auth["codex_cli_field"]["kept"], true,
        "unknown fields survive"
    );
    let last = humantime::parse_rfc3339_weak(auth["last_refresh"].as_str().unwrap()).unwrap();
    assert!(SystemTime::now().duration_since(last).unwrap() < Duration::from_secs(60));
    let mode = std::fs::metadata(broker.codex_auth_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let strays: Vec<_> = std::fs::read_dir(broker.codex_auth_path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".auth.json.") && n != ".auth.json.lock")
        .collect();
    assert!(
        strays.is_empty(),
        "no temporary file left behind: {strays:?}"
    );

    let again = codex_call(&broker, 2).await;
    assert_eq!(again.status, Some(200));
    assert_eq!(
        tokens.exchanges.load(Ordering::SeqCst),
        1,
        "a fresh login is not refreshed again"
    );
    let log = broker.stderr();
    for secret in [
        new_access.as_str(),
        old_access.as_str(),
        "rt-original",
        "rt-rotated-1",
    ] {
        assert!(
            !log.contains(secret) && !got.wire.contains(secret),
            "token leaked"
        );
    }
}

#[tokio::test]
async fn an_expired_jwt_is_refreshed_even_when_last_refresh_is_recent() {
    let new_access = jwt("fresh", 3600);
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 0 }, new_access.clone()).await;
    let backend = codex_backend(Arc::new(Mutex::new(new_access))).await;
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&jwt("old", -60), "rt-original", &rfc3339_days_ago(0)),
    ));
    let got = codex_call(&broker, 1).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(tokens.exchanges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_and_a_second_401_is_forwarded() {
    let new_access = jwt("fresh", 3600);
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 0 }, new_access.clone()).await;
    let accepted = Arc::new(Mutex::new(new_access.clone()));
    let backend = codex_backend(accepted.clone()).await;
    // Looks fresh locally, but the backend has revoked it.
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&jwt("revoked", 3600), "rt-original", &rfc3339_days_ago(0)),
    ));
    let got = codex_call(&broker, 1).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(tokens.exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(backend.seen().len(), 2, "one refused attempt, one retry");

    *accepted.lock().unwrap() = "nothing-is-accepted".into();
    let got = codex_call(&broker, 2).await;
    assert_eq!(
        got.status,
        Some(401),
        "after one refresh the upstream's 401 is passed on"
    );
    assert!(got.body_text().contains("token_expired"));
    assert_eq!(
        tokens.exchanges.load(Ordering::SeqCst),
        2,
        "only one refresh per request"
    );
}

#[tokio::test]
async fn after_a_401_a_token_refreshed_by_another_process_is_used_without_a_new_exchange() {
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 0 }, jwt("unused", 3600)).await;
    let by_codex_cli = jwt("codex-cli", 3600);
    let accepted = Arc::new(Mutex::new(by_codex_cli.clone()));
    let auth_path = Arc::new(Mutex::new(None::<std::path::PathBuf>));
    let (path_in, cli_token) = (auth_path.clone(), by_codex_cli.clone());
    // The backend refuses the old token and, at that moment, the Codex CLI refreshes the file.
    let backend = LocalServer::start(move |seen| {
        if seen.header("authorization")
            == Some(format!("Bearer {}", accepted.lock().unwrap()).as_str())
        {
            return Reply::json(200, json!({"ok":true}));
        }
        if let Some(path) = path_in.lock().unwrap().as_ref() {
            let doc = auth_json(&cli_token, "rt-from-cli", &rfc3339_days_ago(0));
            std::fs::write(path, doc.to_string()).unwrap();
        }
        Reply::json(
            401,
            json!({"error":{"message":"expired","code":"token_expired"}}),
        )
    })
    .await;
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&jwt("old", 3600), "rt-original", &rfc3339_days_ago(0)),
    ));
    *auth_path.lock().unwrap() = Some(broker.codex_auth_path());
    let got = codex_call(&broker, 1).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(
        tokens.exchanges.load(Ordering::SeqCst),
        0,
        "the file was re-read before refreshing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_on_a_stale_login_cause_one_refresh() {
    let new_access = jwt("fresh", 3600);
    // A slow token endpoint widens the window in which the 50 requests overlap.
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 300 }, new_access.clone()).await;
    let backend = codex_backend(Arc::new(Mutex::new(new_access))).await;
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&jwt("old", 3600), "rt-original", &rfc3339_days_ago(30)),
    ));
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(broker.client().await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(provider_request(
                i as u64,
                "openai-codex",
                "/responses",
                json!({}),
            ))
            .await
            .unwrap();
    }
    let all_sent = std::time::Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| tokio::spawn(async move { collect(&mut c, i as u64).await }))
        .collect();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.status, Some(200), "{got:?}");
    }
    let answered = tokens
        .first_answer
        .lock()
        .unwrap()
        .expect("one exchange answered");
    assert!(
        all_sent < answered,
        "all 50 requests were in the broker while the refresh was in flight"
    );
    assert_eq!(
        tokens.exchanges.load(Ordering::SeqCst),
        1,
        "single-flight: one exchange for 50 requests"
    );
    assert_eq!(
        read_auth(&broker)["tokens"]["refresh_token"],
        "rt-rotated-1"
    );
}

#[tokio::test]
async fn a_permanently_refused_refresh_says_to_log_in_again_and_leaves_the_file_alone() {
    let tokens = token_server(TokenBehaviour::Permanent, String::new()).await;
    let backend = codex_backend(Arc::new(Mutex::new(String::new()))).await;
    let auth = auth_json(&jwt("old", 3600), "rt-original", &rfc3339_days_ago(20));
    let broker = Broker::start(spec(&backend, &tokens, auth.clone()));
    let before = std::fs::read(broker.codex_auth_path()).unwrap();
    let got = codex_call(&broker, 1).await;
    let (code, message) = got.error.expect("refused");
    assert_eq!(code, ErrorCode::ReauthRequired);
    assert!(
        message.contains("codex login") && message.contains("refresh_token_expired"),
        "{message}"
    );
    assert_eq!(
        tokens.exchanges.load(Ordering::SeqCst),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(std::fs::read(broker.codex_auth_path()).unwrap(), before);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_transient_token_endpoint_failure_is_retried_with_backoff() {
    let new_access = jwt("fresh", 3600);
    let tokens = token_server(TokenBehaviour::FailOnceThenRotate, new_access.clone()).await;
    let backend = codex_backend(Arc::new(Mutex::new(new_access))).await;
    let broker = Broker::start(spec(
        &backend,
        &tokens,
        auth_json(&jwt("old", 3600), "rt-original", &rfc3339_days_ago(20)),
    ));
    let got = codex_call(&broker, 1).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    assert_eq!(tokens.exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_a_retryable_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = codex_backend(Arc::new(Mutex::new(String::new()))).await;
    let broker = Broker::start(BrokerSpec {
        config: json!({
            "providers": {"openai-codex": {"base_url": backend.url("/backend-api/codex")}},
            "codex": {"token_url": format!("http://127.0.0.1:{closed}/oauth/token")}
        }),
        codex_auth: Some(auth_json(
            &jwt("old", 3600),
            "rt-original",
            &rfc3339_days_ago(20),
        )),
        ..Default::default()
    });
    let got = codex_call(&broker, 1).await;
    let (code, message) = got.error.unwrap();
    assert_eq!(code, ErrorCode::RefreshFailed);
    assert!(message.contains("retry later"), "{message}");
}

#[tokio::test]
async fn a_codex_api_key_goes_to_the_openai_api_not_the_chatgpt_backend() {
    let tokens = token_server(TokenBehaviour::Rotate { delay_ms: 0 }, jwt("unused", 3600)).await;
    let backend = codex_backend(Arc::new(Mutex::new(String::new()))).await;
    let api = LocalServer::start(|_| Reply::json(200, json!({"object": "response"}))).await;
    let mut spec = spec(
        &backend,
        &tokens,
        auth_json(&jwt("login", 3600), "rt-original", &rfc3339_days_ago(0)),
    );
    spec.config["providers"]["openai-codex"]["api_key_base_url"] = json!(api.url("/v1"));
    spec.env = vec![("OPENAI_CODEX_API_KEY".into(), "sk-codex-key-42".into())];
    let broker = Broker::start(spec);
    let got = codex_call(&broker, 1).await;
    assert_eq!(got.status, Some(200), "{got:?}");
    let seen = api.seen();
    assert_eq!(seen[0].path_and_query, "/v1/responses");
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer sk-codex-key-42"),
        "the env key wins over the login"
    );
    assert_eq!(seen[0].header("chatgpt-account-id"), None);
    assert!(
        backend.seen().is_empty(),
        "the ChatGPT backend only takes the Codex login"
    );
    assert_eq!(tokens.exchanges.load(Ordering::SeqCst), 0);
}
