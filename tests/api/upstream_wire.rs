//! The upstream connection at the byte level: pooled connections the server closed, bodies
//! delimited by the connection's end, and bodies cut short.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"raw"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;

/// What a raw upstream does with the n-th request (0-based) on one connection.
#[derive(Clone, Copy)]
enum Script {
    /// Answers the first request, then closes the connection when the second one arrives
    /// (a keep-alive connection the server gave up on just as it was reused).
    AnswerOnceThenDropNext,
    /// Answers without a length, ending the body by closing the connection.
    BodyUntilClose,
    /// Promises 100 bytes, sends 10 and closes.
    Truncated,
}

struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn raw_upstream(script: Script) -> RawUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_raw(socket, script));
        }
    });
    RawUpstream { addr, connections }
}

async fn serve_raw(mut socket: TcpStream, script: Script) {
    let mut seen = Vec::new();
    for n in 0.. {
        if !read_request(&mut socket, &mut seen).await {
            return;
        }
        let answer = match (script, n) {
            (Script::AnswerOnceThenDropNext, 0) => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                ANSWER.len()
            ),
            (Script::BodyUntilClose, 0) => {
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{ANSWER}")
            }
            (Script::Truncated, 0) => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"c1\"".to_string()
            }
            _ => return, // dropping the socket closes it
        };
        socket.write_all(answer.as_bytes()).await.unwrap();
        if !matches!(script, Script::AnswerOnceThenDropNext) {
            return;
        }
    }
}

/// Reads one request (head and Content-Length body) off the socket; false at its end.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return true;
            }
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn app_against(raw: &RawUpstream) -> TestApp {
    let mut upstream = spawn_mock_upstream().await;
    upstream.addr = raw.addr;
    spawn_app_against(upstream, &[]).await
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_dropped_is_retried_on_a_new_one() {
    let raw = raw_upstream(Script::AnswerOnceThenDropNext).await;
    let app = app_against(&raw).await;
    let (id, key) = app.new_key().await;
    for _ in 0..5 {
        let (status, body) = app.chat_model(&key, "gpt-test").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "raw");
    }
    // Each connection answered one request and dropped the next: the dropped ones went out
    // again, on a new connection each.
    assert_eq!(raw.connections.load(Ordering::SeqCst), 5);
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 5);
    assert!(logs
        .iter()
        .all(|l| l["status"] == "success" && l["total_tokens"] == 7));
}

#[tokio::test]
async fn a_body_ended_by_closing_the_connection_is_relayed_whole() {
    let raw = raw_upstream(Script::BodyUntilClose).await;
    let app = app_against(&raw).await;
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
    let raw = raw_upstream(Script::Truncated).await;
    let app = app_against(&raw).await;
    let (id, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "gpt-test", "messages": []}))
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
