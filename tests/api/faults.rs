//! Faults an operator meets: log output that cannot be written, a database locked by another
//! process. keygate keeps serving (or answers 503) and never dies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Where the real binary's stdout and stderr go.
enum Output {
    DevFull,
    /// A pipe whose reading end is closed before keygate writes anything.
    ClosedPipe,
}

fn spawn_binary(
    output: Output,
    upstream: &MockUpstream,
    dir: &std::path::Path,
    port: u16,
) -> Child {
    let (stdout, stderr) = match output {
        Output::DevFull => {
            let full = || {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/full")
                        .unwrap(),
                )
            };
            (full(), full())
        }
        Output::ClosedPipe => (Stdio::piped(), Stdio::piped()),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    let mut child = serve_env(command.arg("serve"), upstream, dir, port)
        // Every request logs a line: each one would be a failed write.
        .env("RUST_LOG", "debug")
        .current_dir(dir)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    child
}

#[tokio::test]
async fn unwritable_log_output_is_never_fatal() {
    for output in [Output::DevFull, Output::ClosedPipe] {
        let upstream = spawn_mock_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = spawn_binary(output, &upstream, dir.path(), port);
        wait_until_serving(&base, &mut child).await;
        let client = reqwest::Client::new();
        let (status, key) = read(
            client
                .post(format!("{base}/api/api-keys"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"name": "faults"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_string();
        for round in 0..20 {
            // A relayed call, an upstream error and a wrong admin token: each logs a line.
            let model = if round % 2 == 0 {
                "gpt-test"
            } else {
                "gpt-fail"
            };
            let response = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": model, "messages": []}))
                .send()
                .await
                .expect("keygate answered");
            assert!(matches!(response.status().as_u16(), 200 | 500));
            response.bytes().await.expect("a whole answer");
            let refused = client
                .get(format!("{base}/api/api-keys"))
                .bearer_auth("wrong-token-0123456789")
                .send()
                .await
                .expect("keygate answered");
            // 429 once the failures are throttled.
            assert!(matches!(refused.status().as_u16(), 401 | 429));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "keygate is still running"
        );
        // The lines it could not write were counted, and it says so.
        let (status, health) =
            read(client.get(format!("{base}/healthz")).send().await.unwrap()).await;
        assert_eq!(status, 200, "{health}");
        assert!(
            health["log_lines_dropped"].as_u64().unwrap() > 0,
            "{health}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Runs the real binary with its data directory on a 2 MiB tmpfs of its own (a private mount
/// namespace made by `unshare`, so no privilege is needed beyond user namespaces); the test
/// reaches that filesystem through `/proc/<pid>/root`.
fn spawn_on_small_disk(upstream: &MockUpstream, dir: &std::path::Path, port: u16) -> Child {
    let mut command = Command::new("unshare");
    command
        .args(["-rm", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=2m tmpfs "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(dir)
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve");
    serve_env(&mut command, upstream, dir, port)
        .env("KEYGATE_LOG_QUEUE_ROWS", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) runs keygate in its own mount namespace")
}

/// Fills the filesystem holding `path` until a write fails for lack of space.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xA5u8; 64 * 1024];
    loop {
        match file.write_all(&block).and_then(|()| file.sync_all()) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling the disk: {err}"),
        }
    }
    // The last partial block may have landed: the disk is full to the byte.
    let _ = file.write_all(&block);
}

#[tokio::test]
async fn a_full_disk_refuses_requests_it_cannot_record_and_recovers_with_every_row() {
    let upstream = spawn_mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_on_small_disk(&upstream, dir.path(), port);
    wait_until_serving(&base, &mut child).await;
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    let (status, created) = read(
        admin(reqwest::Method::POST, "/api/api-keys")
            .json(&json!({"name": "full disk"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (key_id, key) = (
        created["id"].as_i64().unwrap(),
        created["key"].as_str().unwrap().to_string(),
    );
    let chat = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-test", "messages": []}))
            .send()
    };
    assert_eq!(chat().await.unwrap().status(), 200);

    let filler = std::path::PathBuf::from(format!("/proc/{}/root", child.id()))
        .join(dir.path().strip_prefix("/").unwrap())
        .join("filler");
    fill(&filler);

    // Served while the rows fit in the queue, then refused at once: never left hanging.
    let mut served = 1;
    let mut refused = None;
    for _ in 0..200 {
        let response = tokio::time::timeout(Duration::from_secs(5), chat())
            .await
            .expect("answered at once, not left hanging")
            .unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            503 => {
                refused = Some(response);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused = refused.expect("requests are refused once the queue is full");
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("call log"),
        "{body}"
    );
    let (status, health) = read(client.get(format!("{base}/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{health}");
    assert!(
        health["cause"].as_str().unwrap().contains("full"),
        "{health}"
    );
    // Admin reads work; admin writes say what is wrong.
    let (status, _) = read(
        admin(reqwest::Method::GET, "/api/api-keys")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // An admin write may still fit in space the database's files already have (SQLite
    // reuses its WAL); one that does not is a 503 saying why, never a 500.
    for _ in 0..20 {
        let (status, body) = read(
            admin(reqwest::Method::POST, "/api/api-keys")
                .json(&json!({"name": "while full"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        match status.as_u16() {
            201 => {}
            503 => assert!(body["message"].as_str().unwrap().contains("full"), "{body}"),
            other => panic!("admin write on a full disk: {other} {body}"),
        }
    }

    // Space comes back: keygate resumes by itself and every served request has its row.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    loop {
        let (status, _) = read(client.get(format!("{base}/healthz")).send().await.unwrap()).await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "keygate did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chat().await.unwrap().status(), 200);
    served += 1;
    let started = Instant::now();
    loop {
        let (_, key) = read(
            admin(reqwest::Method::GET, &format!("/api/api-keys/{key_id}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if key["usage_count"] == served {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "usage_count {} of {served}",
            key["usage_count"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, logs) = read(
        admin(
            reqwest::Method::GET,
            &format!("/api/api-keys/{key_id}/logs?page_size=200"),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        logs["total"], served,
        "one row per served request, none for refused ones"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_database_that_cannot_grow_answers_admin_writes_with_503_saying_why() {
    let app = spawn_app().await;
    // SQLite's own SQLITE_FULL, as a full disk gives it: the file may not grow past its size.
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    // Every pooled connection gets the cap (a per-connection setting): all eight are held at
    // once, then handed back.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut conn = app.state.pool.acquire().await.unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        held.push(conn);
    }
    drop(held);
    let mut answers = Vec::new();
    for n in 0..1000 {
        let body = json!({"name": format!("key {n}"), "description": "d".repeat(1000)});
        let (status, body) = app.post("/api/api-keys", body).await;
        if status != 201 {
            answers.push((status, body));
            break;
        }
    }
    let (status, body) = answers.pop().expect("a write the file has no room for");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["message"],
        "The disk holding the database is full; free space, then try again"
    );
}

#[tokio::test]
async fn a_database_locked_by_another_process_gives_admin_writes_503_then_success() {
    let app = spawn_app_with(&["--db-busy-timeout", "1s"]).await;
    let (key_id, key) = app.new_key().await;
    // Another process (a sqlite3 shell, a backup tool) holds the write lock.
    let other = rusqlite::Connection::open(&app.db_path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let started = Instant::now();
    let response = app
        .client
        .post(app.url("/api/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "while locked"}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(waited < Duration::from_secs(3), "answered in {waited:?}");
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("locked by another process"),
        "{body}"
    );
    // The relay keeps serving from its key cache meanwhile; its rows wait in the queue.
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    // Reads work (WAL).
    assert_eq!(app.get("/api/api-keys").await.0, 200);

    other.execute_batch("COMMIT").unwrap();
    let (status, _) = app
        .post("/api/api-keys", json!({"name": "after the lock"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        app.logs_of(key_id).await.len(),
        1,
        "the row written once the lock went"
    );
}
