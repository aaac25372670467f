//! Test harness: `spawn_app()` runs the real router on a random loopback port with its own
//! temp SQLite file, a manual clock and a mock OpenAI-compatible upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use clap::Parser;
use keygate::cli::Cli;
use keygate::{AppState, Clock, Config};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-for-tests";
pub const INVALID_KEY_BODY: &str =
    r#"{"error":"Unauthorized","message":"Invalid or inactive API key"}"#;

/// Everything keygate and its tests log, so tests can check no secret is ever written.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("keygate=debug,info")
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the mock upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Mock {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// `gpt-gated` streams wait on this between their first and second chunk.
    pub gate: Arc<Notify>,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub mock: Mock,
}

impl MockUpstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.mock.seen.lock().unwrap().clone()
    }

    /// Waits (at most 10 s, then fails) until the mock has received `requests` requests.
    pub async fn wait_until_seen(&self, requests: usize) {
        let started = std::time::Instant::now();
        while self.mock.seen.lock().unwrap().len() < requests {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the upstream got {} of {requests} requests",
                self.seen().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// A mock upstream that speaks like OpenAI. The request's `model` picks the behaviour:
/// `gpt-fail` → 500, `gpt-slow` → answers after 5 s (`gpt-slow-1s`: 1.5 s), `gpt-gated` → a stream that pauses after
/// its first chunk until the test opens the gate, `gpt-echo-auth` → a 401 whose message echoes
/// the Authorization header it got, `gpt-cookie` → a completion that sets a cookie,
/// `gpt-drip` → a stream with a chunk every 100 ms that never ends, `gpt-no-stream-options`
/// (`-422`) → refuses a request with `stream_options` with 400 like old Ollama/LM Studio (422 like
/// old vLLM), `gpt-bad-request` → a 400 that names nothing keygate knows, anything else → a
/// normal completion. Streams (`stream` true) are SSE like OpenAI's: only with
/// `stream_options.include_usage` true does every chunk carry `"usage":null` and a last
/// usage-only chunk (`"choices":[]`) come before `[DONE]`. `POST /v1/messages` (and
/// `/count_tokens`) answer like Anthropic's Messages API (`anthropic_answer`). Any other path
/// or method is answered (and seen) too.
pub async fn spawn_mock_upstream() -> MockUpstream {
    let mock = Mock::default();
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "gpt-test", "object": "model"}]}))
            }),
        )
        .route("/v1/messages", post(anthropic_answer))
        .route("/v1/messages/count_tokens", post(anthropic_answer))
        .route("/v1/{*path}", any(mock_answer))
        .fallback(mock_answer)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    MockUpstream { addr, mock }
}

/// Reads the request's body and notes what was received.
async fn note(mock: &Mock, request: Request) -> (axum::http::request::Parts, Bytes) {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    mock.seen.lock().unwrap().push(Seen {
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    (parts, body)
}

async fn mock_answer(State(mock): State<Mock>, request: Request) -> Response {
    let (parts, body) = note(&mock, request).await;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("gpt-test").to_string();
    match model.as_str() {
        "gpt-fail" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(
                    json!({"error": {"message": "mock upstream failure", "type": "server_error"}}),
                ),
            )
                .into_response()
        }
        "gpt-slow" => tokio::time::sleep(Duration::from_secs(5)).await,
        "gpt-echo-auth" => {
            let presented = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let message = format!(
                "Invalid credentials: got Authorization: {} (check it)",
                presented.unwrap_or("nothing")
            );
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
            )
                .into_response();
        }
        "gpt-drip" => return drip(),
        "gpt-no-stream-options" if request.get("stream_options").is_some() => {
            let message = "Unrecognized request argument supplied: stream_options";
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})),
            )
                .into_response();
        }
        "gpt-no-stream-options-422" if request.get("stream_options").is_some() => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted"}]})),
            )
                .into_response();
        }
        "gpt-bad-request" => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": "'messages' is a required property", "type": "invalid_request_error"}})),
            )
                .into_response();
        }
        "gpt-slow-1s" => tokio::time::sleep(Duration::from_millis(1500)).await,
        _ => {}
    }
    // A request may say which `usage` the mock answers with (keygate forwards it unchanged).
    let usage = request.get("mock_usage").cloned();
    if request["stream"] == json!(true) {
        let include_usage = request["stream_options"]["include_usage"] == json!(true);
        return sse(model, include_usage, usage, mock.gate.clone());
    }
    let cookie = if model == "gpt-cookie" {
        "upstream-session=abc; Path=/; HttpOnly"
    } else {
        ""
    };
    let mut answer = Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from mock"}, "finish_reason": "stop"}],
        "usage": usage.unwrap_or(json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}))
    }))
    .into_response();
    if !cookie.is_empty() {
        answer
            .headers_mut()
            .append("set-cookie", cookie.parse().unwrap());
    }
    answer
}

/// An SSE stream that sends a chunk every 100 ms until the reader goes away.
fn drip() -> Response {
    let ticks = futures_util::stream::unfold(0u64, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = chunk("gpt-drip", &n.to_string(), false);
        Some((Ok::<_, Infallible>(Bytes::from(text)), n + 1))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(ticks))
        .unwrap()
}

/// One chunk; with `include_usage`, `"usage":null` as its last member, as OpenAI sends it.
fn chunk(model: &str, content: &str, include_usage: bool) -> String {
    let mut event = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    if include_usage {
        event["usage"] = Value::Null;
    }
    format!("data: {event}\n\n")
}

/// The usage a mock stream reports (prompt, completion, total tokens) when asked for it.
pub const STREAMED_USAGE: (i64, i64, i64) = (4, 3, 7);

fn sse(model: String, include_usage: bool, usage: Option<Value>, gate: Arc<Notify>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let _ = tx.send(chunk(&model, "Hel", include_usage)).await;
        if model == "gpt-gated" {
            gate.notified().await;
        }
        let _ = tx.send(chunk(&model, "lo", include_usage)).await;
        let _ = tx.send(chunk(&model, "!", include_usage)).await;
        if include_usage {
            let (prompt, completion, total) = STREAMED_USAGE;
            let usage = usage.unwrap_or(
                json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}),
            );
            let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [], "usage": usage});
            let _ = tx.send(format!("data: {usage}\n\n")).await;
        }
        let _ = tx.send("data: [DONE]\n\n".to_string()).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|text| (Ok::<_, Infallible>(Bytes::from(text)), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Clock,
    pub state: AppState,
    pub upstream: MockUpstream,
    pub db_path: std::path::PathBuf,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like `spawn_app`, with extra `--flag value` arguments for the config (e.g. `--max-body-bytes`).
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let upstream = spawn_mock_upstream().await;
    spawn_app_against(upstream, extra).await
}

pub async fn spawn_app_against(upstream: MockUpstream, extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    start(upstream, db_path, Some(dir), extra).await
}

/// Serves an existing database file (e.g. one a test imported into); the file is not removed.
pub async fn spawn_app_on(db_path: &std::path::Path) -> TestApp {
    spawn_app_on_with(db_path, &[]).await
}

/// `spawn_app_on` with extra config arguments (as `spawn_app_with`).
pub async fn spawn_app_on_with(db_path: &std::path::Path, extra: &[&str]) -> TestApp {
    let upstream = spawn_mock_upstream().await;
    start(upstream, db_path.to_path_buf(), None, extra).await
}

async fn start(
    upstream: MockUpstream,
    db_path: std::path::PathBuf,
    dir: Option<tempfile::TempDir>,
    extra: &[&str],
) -> TestApp {
    log_buffer();
    let database_url = format!("sqlite://{}", db_path.display());
    let upstream_url = format!("http://{}/v1", upstream.addr);
    let mut args = vec![
        "keygate",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database_url,
        "--upstream-url",
        &upstream_url,
        "--upstream-api-key",
        UPSTREAM_KEY,
        "--admin-token",
        ADMIN_TOKEN,
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).expect("test config arguments");
    let config = Config::from_args(&cli.config).expect("valid test config");
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let state = AppState::build(config, clock.clone())
        .await
        .expect("app state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(keygate::serve(state.clone(), listener, shutdown.clone()));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        clock,
        state,
        upstream,
        db_path,
        shutdown,
        server,
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An admin API call with the admin token; returns the status and the JSON body (Null if none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.admin(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.admin(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.admin(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// Creates a key; returns its id and the full secret.
    pub async fn create_key(&self, body: Value) -> (i64, String) {
        let (status, key) = self.post("/api/api-keys", body).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["id"].as_i64().unwrap(),
            key["key"].as_str().unwrap().to_string(),
        )
    }

    pub async fn new_key(&self) -> (i64, String) {
        self.create_key(json!({"name": "test key"})).await
    }

    /// A chat completion through keygate with `key` as a bearer.
    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat_model(&self, key: &str, model: &str) -> (StatusCode, Value) {
        read(
            self.chat(
                key,
                json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await,
        )
        .await
    }

    /// Waits until every call record so far is in the database.
    pub async fn flush(&self) {
        self.state.logs.flush().await;
    }

    pub async fn logs_of(&self, key_id: i64) -> Vec<Value> {
        self.flush().await;
        let (status, page) = self
            .get(&format!("/api/api-keys/{key_id}/logs?page_size=200"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    pub async fn key_json(&self, key_id: i64) -> Value {
        let (status, key) = self.get(&format!("/api/api-keys/{key_id}")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        key
    }

    /// Stops the server the way a signal does and waits for it to finish; returns the
    /// database's path and the temp dir holding it (removed when dropped).
    pub async fn shutdown(self) -> (std::path::PathBuf, Option<tempfile::TempDir>) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        (self.db_path, self._dir)
    }
}

pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A free loopback port (for the real binary, which binds its own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sets what the real binary needs to `serve` on 127.0.0.1:`port`, its database in `dir`,
/// relaying to `upstream`.
pub fn serve_env<'c>(
    command: &'c mut std::process::Command,
    upstream: &MockUpstream,
    dir: &std::path::Path,
    port: u16,
) -> &'c mut std::process::Command {
    command
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("keygate.db").display()),
        )
        .env(
            "KEYGATE_UPSTREAM_URL",
            format!("http://{}/v1", upstream.addr),
        )
        .env("KEYGATE_UPSTREAM_API_KEY", UPSTREAM_KEY)
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
}

/// Waits until the real binary answers `/healthz` at `base` (it must not exit meanwhile).
pub async fn wait_until_serving(base: &str, child: &mut std::process::Child) {
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "keygate exited at start"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "keygate did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The usage the mock's Anthropic answers report unless the request's `mock_usage` gives one:
/// 25 plain input tokens, 1200 written to the cache, 3000 read from it, 15 output tokens.
pub fn claude_usage() -> Value {
    json!({"input_tokens": 25, "cache_creation_input_tokens": 1200,
           "cache_read_input_tokens": 3000, "output_tokens": 15})
}

/// Anthropic's Messages API: `count_tokens` answers `{"input_tokens": 42}`; a message answers
/// as JSON, or with `stream` true as Anthropic's event stream (`anthropic_events`), its usage
/// `mock_usage` or `claude_usage()`; model `claude-overloaded` gets a 529 in Anthropic's error
/// envelope.
async fn anthropic_answer(State(mock): State<Mock>, request: Request) -> Response {
    let (parts, body) = note(&mock, request).await;
    if parts.uri.path().ends_with("/count_tokens") {
        return Json(json!({"input_tokens": 42})).into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-test")
        .to_string();
    if model == "claude-overloaded" {
        return (
            StatusCode::from_u16(529).unwrap(),
            Json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        )
            .into_response();
    }
    let usage = request
        .get("mock_usage")
        .cloned()
        .unwrap_or_else(claude_usage);
    if request["stream"] == json!(true) {
        let pieces = anthropic_events(&model, &usage);
        let stream = futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|piece| Ok::<_, Infallible>(Bytes::from(piece))),
        );
        return Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    Json(json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello from mock"}],
        "stop_reason": "end_turn", "stop_sequence": null, "usage": usage
    }))
    .into_response()
}

/// An Anthropic message stream as the API sends it (`message_start` with the input and cache
/// counts and 1 output token, `content_block_start`, `ping`, two `content_block_delta`s,
/// `content_block_stop`, `message_delta` with the cumulative `output_tokens`, `message_stop`),
/// cut into pieces that split events and lines (the first mid-`usage`).
pub fn anthropic_events(model: &str, usage: &Value) -> Vec<String> {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "content": [], "model": model, "stop_reason": null,
            "stop_sequence": null, "usage": start_usage}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": " from mock"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": usage["output_tokens"]}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    let first_cut = text.find("\"usage\"").unwrap() + 10;
    let mut pieces = vec![text[..first_cut].to_string()];
    let mut rest = &text[first_cut..];
    while !rest.is_empty() {
        let at = rest.len().min(37);
        pieces.push(rest[..at].to_string());
        rest = &rest[at..];
    }
    pieces
}

/// Sends one keep-alive `GET /healthz` on a raw socket and reads its whole (small) response.
pub async fn one_request(socket: &mut tokio::net::TcpStream) {
    tokio::io::AsyncWriteExt::write_all(socket, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"}") {
        let n = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(socket, &mut buf),
        )
        .await
        .expect("an answer")
        .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
}
