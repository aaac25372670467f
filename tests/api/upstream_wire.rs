//! The upstream connection at the byte level, against a raw-socket upstream that misbehaves:
//! resends (never a POST that may have been served), answers that could desync a pooled
//! connection, bodies delimited by the connection's end or cut short, idle connections the
//! upstream writes to or closes, and the cap on open upstream connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"raw"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;

fn ok_answer() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    )
    .into_bytes()
}

/// What the raw upstream does with one request.
enum Act {
    /// Writes these bytes and waits for the next request on the connection.
    Answer(Vec<u8>),
    /// Writes the first bytes, then the second ones after a pause (a late, unasked answer).
    AnswerThenLate(Vec<u8>, Duration, Vec<u8>),
    /// Writes these bytes and closes the connection.
    AnswerAndClose(Vec<u8>),
    /// Closes the connection without answering (having read the whole request).
    Close,
    /// Waits this long, then answers.
    Delay(Duration, Vec<u8>),
}

/// `script(connection number, request number on that connection, request bytes)`.
type Script = dyn Fn(usize, usize, &str) -> Act + Send + Sync;

struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Requests read whole, over all connections.
    requests: Arc<AtomicUsize>,
    /// Connections keygate closed on its side (EOF seen by the upstream).
    closed_by_keygate: Arc<AtomicUsize>,
}

async fn raw_upstream(
    script: impl Fn(usize, usize, &str) -> Act + Send + Sync + 'static,
) -> RawUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = RawUpstream {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        requests: Arc::default(),
        closed_by_keygate: Arc::default(),
    };
    let script: Arc<Script> = Arc::new(script);
    let (connections, requests, closed) = (
        upstream.connections.clone(),
        upstream.requests.clone(),
        upstream.closed_by_keygate.clone(),
    );
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let n = connections.fetch_add(1, Ordering::SeqCst);
            let (script, requests, closed) = (script.clone(), requests.clone(), closed.clone());
            tokio::spawn(async move {
                if !serve_raw(socket, n, &*script, &requests).await {
                    closed.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    upstream
}

/// Serves one connection; true when the upstream closed it, false when keygate did.
async fn serve_raw(
    mut socket: TcpStream,
    conn: usize,
    script: &Script,
    requests: &AtomicUsize,
) -> bool {
    let mut buf = Vec::new();
    for n in 0.. {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return false;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        match script(conn, n, &request) {
            Act::Answer(bytes) => socket.write_all(&bytes).await.unwrap(),
            Act::AnswerThenLate(bytes, pause, late) => {
                socket.write_all(&bytes).await.unwrap();
                tokio::time::sleep(pause).await;
                if socket.write_all(&late).await.is_err() {
                    return false;
                }
            }
            Act::AnswerAndClose(bytes) => {
                let _ = socket.write_all(&bytes).await;
                return true;
            }
            Act::Close => return true,
            Act::Delay(pause, bytes) => {
                tokio::time::sleep(pause).await;
                socket.write_all(&bytes).await.unwrap();
            }
        }
    }
    unreachable!()
}

/// Reads one request (head and Content-Length body) off the socket; None at its end.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let request = String::from_utf8_lossy(&buf[..end + 4 + length]).into_owned();
                buf.drain(..end + 4 + length);
                return Some(request);
            }
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn app_against(raw: &RawUpstream, extra: &[&str]) -> TestApp {
    let mut upstream = spawn_mock_upstream().await;
    upstream.addr = raw.addr;
    spawn_app_against(upstream, extra).await
}

async fn get_models(app: &TestApp, key: &str) -> (StatusCode, String) {
    let response = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_post_the_upstream_read_but_never_answered_is_not_sent_again() {
    // Each connection answers its first request, then reads the next one whole and closes
    // without a word: the upstream may have started (and billed) that work.
    let raw = raw_upstream(|_, n, _| {
        if n == 0 {
            Act::Answer(ok_answer())
        } else {
            Act::Close
        }
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    let (status, _) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(status, 200);
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "Bad Gateway");
    assert_eq!(
        raw.requests.load(Ordering::SeqCst),
        2,
        "the POST went upstream once"
    );
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 2);
    let message = logs[0]["error_message"].as_str().unwrap();
    assert!(message.contains("without answering"), "{message}");
}

#[tokio::test]
async fn an_idempotent_request_is_sent_once_more_on_a_new_connection_and_never_more() {
    let raw = raw_upstream(|conn, n, _| {
        if conn == 0 && n == 0 {
            Act::Answer(ok_answer())
        } else if conn <= 1 {
            Act::Close
        } else {
            Act::Answer(ok_answer())
        }
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (_, key) = app.new_key().await;
    assert_eq!(get_models(&app, &key).await.0, 200);
    // Closed unanswered on the pooled connection: once more, on a new connection (conn 1),
    // which closes too: 502, after exactly two sends.
    let (status, _) = get_models(&app, &key).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(raw.requests.load(Ordering::SeqCst), 3);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
    // A new connection that answers.
    assert_eq!(get_models(&app, &key).await.0, 200);
}

#[tokio::test]
async fn a_late_answer_after_a_bodiless_one_never_reaches_the_next_client() {
    // The upstream answers 204 (or 304, or a body past its Content-Length) and 100 ms later
    // writes a whole answer nobody asked for on the same connection.
    let late: Vec<u8> = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"late\": true }".to_vec();
    let late_for_script = late.clone();
    let raw = raw_upstream(move |_, _, request| {
        let pause = Duration::from_millis(100);
        if request.contains("gpt-204") {
            Act::AnswerThenLate(
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                pause,
                late_for_script.clone(),
            )
        } else if request.contains("gpt-304") {
            Act::AnswerThenLate(
                b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec(),
                pause,
                late_for_script.clone(),
            )
        } else if request.contains("gpt-long") {
            // A body longer than its Content-Length: the rest is in the same write.
            let mut long = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
            long.extend_from_slice(&late_for_script);
            Act::Answer(long)
        } else {
            Act::Answer(ok_answer())
        }
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (_, key) = app.new_key().await;
    for model in ["gpt-204", "gpt-304", "gpt-long", "gpt-204", "gpt-304"] {
        let (status, _) = app.chat_model(&key, model).await;
        assert!(
            matches!(status.as_u16(), 204 | 304 | 200),
            "{model}: {status}"
        );
        // At once: the late bytes arrive while this request waits for its answer.
        let (status, body) = app.chat_model(&key, "gpt-test").await;
        assert_eq!(status, 200, "{model}");
        assert_eq!(
            body["choices"][0]["message"]["content"], "raw",
            "after {model}: {body}"
        );
    }
}

#[tokio::test]
async fn both_content_length_and_chunked_relays_the_whole_body_and_drops_the_length() {
    let chunked = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{ANSWER}\r\n0\r\n\r\n",
        ANSWER.len()
    );
    let raw = raw_upstream(move |_, _, _| Act::Answer(chunked.clone().into_bytes())).await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    for _ in 0..2 {
        let (status, body) = app.chat_model(&key, "gpt-test").await;
        assert_eq!(status, 200);
        assert_eq!(body["usage"]["total_tokens"], 7, "the whole body: {body}");
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2, "never reused");
    let logs = app.logs_of(id).await;
    assert!(logs
        .iter()
        .all(|l| l["status"] == "success" && l["response_size"] == ANSWER.len()));
}

#[tokio::test]
async fn idle_connections_the_upstream_writes_to_or_closes_are_closed() {
    let raw = raw_upstream(|conn, _, _| {
        let pause = Duration::from_millis(50);
        if conn == 0 {
            Act::AnswerThenLate(ok_answer(), pause, b"garbage".to_vec())
        } else {
            Act::Answer(ok_answer())
        }
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (_, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    // The idle watch closes the connection that spoke out of turn without waiting for a
    // request to find it.
    let mut waited = Duration::ZERO;
    while raw.closed_by_keygate.load(Ordering::SeqCst) == 0 && waited < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(
        raw.closed_by_keygate.load(Ordering::SeqCst),
        1,
        "closed while idle"
    );
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn requests_queue_for_a_connection_when_the_cap_is_reached() {
    let raw = raw_upstream(|_, _, _| Act::Delay(Duration::from_millis(300), ok_answer())).await;
    let app = app_against(&raw, &["--upstream-max-connections", "1"]).await;
    let (_, key) = app.new_key().await;
    let started = std::time::Instant::now();
    let calls = (0..3).map(|_| app.chat_model(&key, "gpt-test"));
    let answers = futures_util::future::join_all(calls).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    // One connection at a time: the three 300 ms answers came one after another.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_ended_by_closing_the_connection_is_relayed_whole() {
    let raw = raw_upstream(|_, _, _| {
        Act::AnswerAndClose(
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{ANSWER}")
                .into_bytes(),
        )
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    for _ in 0..2 {
        let (status, body) = app.chat_model(&key, "gpt-test").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["total_tokens"], 7);
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2, "never reused");
    let logs = app.logs_of(id).await;
    assert!(logs
        .iter()
        .all(|l| l["status"] == "success" && l["response_size"] == ANSWER.len()));
}

#[tokio::test]
async fn a_body_cut_short_fails_the_client_and_is_logged() {
    let raw = raw_upstream(|_, _, _| {
        Act::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"c1\"".to_vec(),
        )
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await;
    // The cut may reach the client before or after the head: either way it must fail.
    let whole = match response {
        Ok(response) => response.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!whole, "the client must see the cut");
    let logs = app.logs_of(id).await;
    assert_eq!(logs[0]["status"], "error");
    let message = logs[0]["error_message"].as_str().unwrap();
    assert!(message.contains("mid-response"), "{message}");
    assert_eq!(logs[0]["response_size"], 10);
}

/// An SSE answer in `Content-Length` framing, with the usage chunk `include_usage` brings.
fn sse_with_length() -> Vec<u8> {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"raw\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_stream_keygate_shortens_loses_the_upstream_length_and_the_connection_is_reused() {
    let raw = raw_upstream(|_, _, request| {
        assert!(
            request.contains(r#""stream_options":{"include_usage":true}"#),
            "{request}"
        );
        Act::Answer(sse_with_length())
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    for _ in 0..2 {
        let response = app
            .chat(
                &key,
                json!({"model": "gpt-test", "stream": true, "messages": []}),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-length").is_none());
        assert_eq!(
            response.text().await.unwrap(),
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"raw\"}}]}\n\ndata: [DONE]\n\n"
        );
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    let logs = app.logs_of(id).await;
    assert!(logs.iter().all(|row| row["total_tokens"] == 7), "{logs:?}");
}

#[tokio::test]
async fn a_chunked_refusal_of_stream_options_is_read_whole_and_the_resend_reuses_the_connection() {
    let raw = raw_upstream(|_, _, request| {
        if request.contains("stream_options") {
            let refusal = r#"{"error":{"message":"unknown field `stream_options`"}}"#;
            let (a, b) = refusal.split_at(20);
            Act::Answer(
                format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
                .into_bytes(),
            )
        } else {
            Act::Answer(sse_with_length())
        }
    })
    .await;
    let app = app_against(&raw, &[]).await;
    let (id, key) = app.new_key().await;
    let response = app
        .chat(
            &key,
            json!({"model": "gpt-test", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(response.status(), 200);
    // Not injected in the end: the stream is the upstream's, untouched.
    let text = response.text().await.unwrap();
    assert!(
        text.contains("\"usage\":null") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(raw.requests.load(Ordering::SeqCst), 2);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["status"], "success");
}
