//! A call-log row for every request: clients that leave early, a store that fails for a
//! while, a full queue (back-pressure), and a large import while traffic runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

/// Waits (bounded) until `key_id` has `rows` call-log rows; returns them.
async fn wait_for_rows(app: &TestApp, key_id: i64, rows: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let logs = app.logs_of(key_id).await;
        if logs.len() >= rows || started.elapsed() > Duration::from_secs(3) {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds SQLite's write lock on the database (as a long admin write or import would).
fn lock_database(app: &TestApp) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

fn unlock_database(conn: rusqlite::Connection) {
    conn.execute_batch("ROLLBACK").unwrap();
}

#[tokio::test]
async fn a_client_that_leaves_before_the_upstream_answers_gets_its_row() {
    let app = spawn_app().await;
    let (key_id, key) = app.new_key().await;
    let body = r#"{"model":"gpt-slow-1s","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);

    let logs = wait_for_rows(&app, key_id, 1).await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    let row = &logs[0];
    assert_eq!(
        row["error_message"],
        "client disconnected before the upstream answered"
    );
    assert_eq!(row["status"], "error");
    assert_eq!(row["http_status"], 499);
    assert_eq!(row["model"], "gpt-slow-1s");
    assert_eq!(app.key_json(key_id).await["usage_count"], 1);
    // The upstream did answer later: still the one row.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(app.logs_of(key_id).await.len(), 1);
    assert_eq!(app.upstream.seen().len(), 1);
}

#[tokio::test]
async fn the_writer_keeps_its_rows_through_a_store_failure() {
    let app = spawn_app_with(&["--log-busy-timeout", "100ms"]).await;
    let (key_id, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    app.flush().await;
    assert_eq!(app.state.logs.failing(), None);

    let lock = lock_database(&app);
    for _ in 0..10 {
        assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    }
    // Several batches fail (each after the 100 ms busy timeout) while the lock is held.
    let started = Instant::now();
    while app.state.logs.failing().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no failure seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let failure = app.state.logs.failing().expect("still failing");
    assert!(failure.contains("locked"), "{failure}");
    assert_eq!(app.state.logs.queued(), 10);
    unlock_database(lock);

    let logs = app.logs_of(key_id).await;
    assert_eq!(logs.len(), 11, "every row arrives once the store is back");
    assert_eq!(app.key_json(key_id).await["usage_count"], 11);
    assert_eq!(app.state.logs.failing(), None);
    assert_eq!(app.state.logs.queued(), 0);
    assert!(captured_logs().contains("call-log writer recovered; no row was lost"));
}

#[tokio::test]
async fn new_requests_wait_while_the_call_log_queue_is_full() {
    let app = spawn_app_with(&["--log-queue-rows", "4"]).await;
    let (key_id, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    app.flush().await;

    let lock = lock_database(&app);
    let answered = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (client, url, key, answered) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            key.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..10 {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"model": "gpt-test", "messages": []}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                response.bytes().await.unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer is stuck behind the lock: four rows fill the queue, the fifth request waits.
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    assert_eq!(app.state.logs.queued(), 4);
    unlock_database(lock);

    tokio::time::timeout(Duration::from_secs(3), traffic)
        .await
        .expect("requests resume once the queue drains")
        .unwrap();
    let logs = app.logs_of(key_id).await;
    assert_eq!(logs.len(), 11);
    assert_eq!(app.key_json(key_id).await["usage_count"], 11);
}
