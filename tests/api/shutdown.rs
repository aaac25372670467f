//! Graceful shutdown: on SIGTERM the real binary flushes pending call-log rows before exit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::helpers::*;

async fn count_rows(db_path: &std::path::Path) -> i64 {
    let pool = keygate::store::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs")
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sigterm_flushes_the_call_log_of_the_real_binary() {
    sigterm_flushes_the_call_log(2).await;
}

/// One request thread: the single-threaded scheduler (what one core gets by default).
#[tokio::test]
async fn sigterm_flushes_the_call_log_of_the_real_binary_on_one_thread() {
    sigterm_flushes_the_call_log(1).await;
}

async fn sigterm_flushes_the_call_log(workers: usize) {
    let upstream = spawn_mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let db_path = dir.path().join("keygate.db");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    let mut child = serve_env(command.arg("serve"), &upstream, dir.path(), port)
        .env("KEYGATE_WORKERS", workers.to_string())
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(&base, &mut child).await;
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{base}/api/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "sigterm"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    // Streams and plain answers, 10 at a time.
    let requests = (0..30).map(|i| {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-test", "stream": i % 2 == 0, "messages": []}))
            .send();
        async move {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.text().await.unwrap().contains("Hel"));
        }
    });
    futures_util::stream::iter(requests)
        .buffer_unordered(10)
        .collect::<Vec<()>>()
        .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit: {:?}\n{}", status.0, status.1);
    assert!(
        status.1.contains(&format!("workers={workers}")),
        "{}",
        status.1
    );
    assert!(!status.1.contains(key) && !status.1.contains(ADMIN_TOKEN));
    assert_eq!(count_rows(&db_path).await, 30);
}

#[tokio::test]
async fn rows_of_requests_still_open_when_the_grace_ends_are_written() {
    let app = spawn_app_with(&["--shutdown-grace", "1s"]).await;
    let (key_id, key) = app.new_key().await;
    // A stream paused after its first chunk, and a request the upstream answers after 5 s.
    let mut stream = app
        .chat(
            &key,
            json!({"model": "gpt-gated", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    let slow = {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            key.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "gpt-slow", "messages": []}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let (db_path, _dir) = app.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(slow.await.unwrap().is_err(), "the connection was closed");
    drop(stream);

    let pool = keygate::store::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT model, error_message, stream FROM api_call_logs WHERE api_key_id = ? ORDER BY model",
    )
    .bind(key_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "gpt-gated".to_string(),
                Some("client disconnected before the response was complete".to_string()),
                1
            ),
            (
                "gpt-slow".to_string(),
                Some("client disconnected before the upstream answered".to_string()),
                0
            ),
        ]
    );
}

#[tokio::test]
async fn a_second_signal_ends_a_shutdown_that_is_still_waiting() {
    let upstream = spawn_mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    let mut child = serve_env(command.arg("serve"), &upstream, dir.path(), port)
        .env("KEYGATE_SHUTDOWN_GRACE", "60s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_serving(&base, &mut child).await;
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{base}/api/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "two signals"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A stream the upstream never finishes keeps the graceful shutdown waiting.
    let mut stream = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(created["key"].as_str().unwrap())
        .json(&json!({"model": "gpt-gated", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert!(stream.chunk().await.unwrap().is_some());
    let pid = child.id().to_string();
    let term = || {
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
    };
    term();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the stream"
    );
    term();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the second signal exits at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_once_on_shutdown() {
    // The connection task looks at the shutdown signal only when it fires (server::Gated): it
    // must still fire. With nothing open, the drain does not wait for the grace.
    let app = spawn_app_with(&["--shutdown-grace", "10s"]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        one_request(&mut socket).await;
        idle.push(socket);
    }
    let started = Instant::now();
    app.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    for mut socket in idle {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buf))
            .await
            .expect("closed, not left open")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", &buf[..n]);
    }
}
