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

/// The call-log rows of `key_id` in the database now, without a flush.
async fn rows_in_database(app: &TestApp, key_id: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs WHERE api_key_id = ?")
        .bind(key_id)
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
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

/// Rows queued while the store is locked are written as one batch: in groups of several rows
/// per statement and then one by one, each row's fields its own, and the rows of a key deleted
/// meanwhile are dropped (the writer checks the reference itself).
#[tokio::test]
async fn a_batch_keeps_each_rows_fields_and_drops_the_rows_of_a_key_deleted_meanwhile() {
    let app = spawn_app_with(&["--log-busy-timeout", "100ms"]).await;
    let (kept, kept_key) = app.new_key().await;
    let (gone, gone_key) = app.new_key().await;
    let lock = lock_database(&app);
    // 37 rows of the kept key (two groups of 16 and 5 single rows), interleaved with the
    // deleted key's and with a refused request's row (no key).
    for n in 0..37 {
        let model = format!("model-{n}");
        assert_eq!(app.chat_model(&kept_key, &model).await.0, StatusCode::OK);
        if n % 3 == 0 {
            assert_eq!(app.chat_model(&gone_key, &model).await.0, StatusCode::OK);
        }
    }
    let (status, _) = app.chat_model("sk-not-a-key", "model-x").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Deleted on the connection holding the lock: the rows are still queued.
    lock.execute("DELETE FROM api_keys WHERE id = ?1", [gone])
        .unwrap();
    lock.execute_batch("COMMIT").unwrap();

    let rows = app.logs_of(kept).await;
    assert_eq!(rows.len(), 37);
    for row in &rows {
        let model = row["model"].as_str().unwrap();
        let n: usize = model["model-".len()..].parse().unwrap();
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(row["api_key_id"], kept, "{row}");
        assert_eq!(row["status"], "success", "{row}");
        assert_eq!(row["http_status"], 200, "{row}");
        assert_eq!(row["endpoint"], "/v1/chat/completions", "{row}");
        assert_eq!(
            row["request_size"],
            body.to_string().len(),
            "row {n}: {row}"
        );
        assert!(row["total_tokens"].as_i64().unwrap() > 0, "{row}");
    }
    let (_, page) = app.get("/api/api-logs?page_size=200").await;
    assert_eq!(page["total"], 38, "the kept key's rows and the refused one");
    let without_key: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["api_key_id"].is_null())
        .collect();
    assert_eq!(without_key.len(), 1);
    assert_eq!(without_key[0]["http_status"], 401);
    crate::scale::assert_day_counts_match_rows(&app, "after a batch with a deleted key").await;
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

/// The file's key: its id is taken by the second key an admin creates during the import.
const FILE_KEY: i64 = 3;
/// The file's call-log ids: the ones the server gives its own rows during the import are
/// among them.
const FILE_LOG_IDS_FROM: i64 = 3;

/// Writes an export of `rows` call logs of one key, made by `keygate data export` from a
/// database filled directly.
async fn export_file(rows: i64, dir: &std::path::Path) -> std::path::PathBuf {
    let db = dir.join("source.db");
    let pool = keygate::store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    pool.close().await;
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute(
        "INSERT INTO api_keys (id, key_hash, key_preview, name, created_at, updated_at) \
         VALUES (?1, ?2, 'sk-…imp', 'imported', 1, 1)",
        rusqlite::params![FILE_KEY, keygate::keys::hash_hex("imported")],
    )
    .unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO api_call_logs (id, api_key_id, timestamp, model, status, http_status, \
                 response_time, endpoint) VALUES (?1, ?2, ?3, 'gpt-old', 'success', 200, 5, \
                 '/v1/chat/completions')",
            )
            .unwrap();
        for i in 0..rows {
            insert
                .execute([FILE_LOG_IDS_FROM + i, FILE_KEY, 1_700_000_000_000 + i])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    let file = dir.join("export.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["data", "export", "--output", file.to_str().unwrap()])
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("RUST_LOG", "warn")
        .env_remove("KEYGATE_FERNET_KEY")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

fn staging_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".import-"))
        .count()
}

#[tokio::test]
async fn a_large_import_while_traffic_runs_loses_nothing_and_blocks_no_admin_write() {
    const ROWS: i64 = 30_000;
    let files = tempfile::tempdir().unwrap();
    let file = export_file(ROWS, files.path()).await;
    let app = spawn_app().await;
    let (key_id, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    app.flush().await;

    let db_dir = app.db_path.parent().unwrap().to_path_buf();
    let started = Instant::now();
    let import = {
        let (db, file, dir) = (app.db_path.clone(), file.clone(), db_dir.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["data", "import", "--input", file.to_str().unwrap()])
                .env("DATABASE_URL", format!("sqlite://{}", db.display()))
                .env("RUST_LOG", "warn")
                .env_remove("KEYGATE_FERNET_KEY")
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    // Traffic starts once the import has checked the file's key (its id is then free).
    while staging_files(&db_dir) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no staging file"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The staged rows carry key hashes and encrypted keys: the file is private.
    #[cfg(unix)]
    for entry in std::fs::read_dir(&db_dir).unwrap().filter_map(|e| e.ok()) {
        use std::os::unix::fs::PermissionsExt;
        if entry.file_name().to_string_lossy().contains(".import-") {
            if let Ok(meta) = entry.metadata() {
                assert_eq!(
                    meta.permissions().mode() & 0o777,
                    0o600,
                    "staging file mode"
                );
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Relayed requests and admin writes until the import is done.
    let (mut relayed, mut created) = (1i64, 0i64);
    let mut slowest_write = Duration::ZERO;
    while !import.is_finished() {
        assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
        relayed += 1;
        let write = Instant::now();
        let (status, body) = app
            .post("/api/api-keys", json!({"name": "during import"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        slowest_write = slowest_write.max(write.elapsed());
        created += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = import.await.unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("call logs: {ROWS} new, 0 overwritten, 0 skipped")),
        "{said}"
    );
    assert!(
        created >= 2,
        "only {created} admin writes during the import"
    );
    // The admins' second key took the file key's id, and the traffic the first log ids.
    assert!(
        said.contains("1 key(s) and ") && !said.contains("1 key(s) and 0 call log(s)"),
        "{said}"
    );
    eprintln!(
        "import of {ROWS} rows under traffic: {took:?}, {relayed} requests, {created} keys, \
         slowest admin write {slowest_write:?}"
    );
    // The database's write lock is taken only for the short move at the end (an import
    // holding it throughout made admin writes wait for the whole import, then fail).
    assert!(
        slowest_write * 3 < took,
        "an admin write waited {slowest_write:?} of the import's {took:?}"
    );

    app.flush().await;
    let pool = &app.state.pool;
    assert_eq!(rows_in_database(&app, key_id).await, relayed);
    assert_eq!(app.key_json(key_id).await["usage_count"], relayed);
    let (imported_key, imported): (i64, i64) = sqlx::query_as(
        "SELECT k.id, (SELECT COUNT(*) FROM api_call_logs l WHERE l.api_key_id = k.id) \
         FROM api_keys k WHERE k.name = 'imported'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_ne!(imported_key, FILE_KEY);
    assert_eq!(imported, ROWS);
    crate::scale::assert_day_counts_match_rows(
        &app,
        "an import beside live traffic, its key moved",
    )
    .await;
    // The usage rollup and the totals follow the moved key (the key now holding its old id
    // has no calls), and count the traffic once.
    let rolled = |id: i64| {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT (SELECT COALESCE(SUM(calls), 0) FROM usage_daily WHERE api_key_id = ?1), \
             (SELECT COALESCE(SUM(total_tokens), 0) FROM usage_daily WHERE api_key_id = ?1), \
             (SELECT total_tokens_used FROM api_keys WHERE id = ?1)",
        )
        .bind(id)
        .fetch_one(pool)
    };
    let row_tokens: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(total_tokens), 0) FROM api_call_logs WHERE api_key_id = ?",
    )
    .bind(imported_key)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        rolled(imported_key).await.unwrap(),
        (ROWS, row_tokens, row_tokens)
    );
    assert_eq!(rolled(FILE_KEY).await.unwrap(), (0, 0, 0));
    assert_eq!(rolled(key_id).await.unwrap().0, relayed);
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(keys, 2 + created);
    assert_eq!(staging_files(&db_dir), 0, "the staging file is removed");
}

/// At rest the writer and the checkpointer run in the core's idle time (`SCHED_IDLE`) where
/// the process may leave it again (root here, or `RLIMIT_NICE` >= 20), else as batch threads:
/// either way a waking request is not kept waiting by them for long, and a busy core does not
/// starve them (`writer_priority`'s tests switch them between the two).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_writer_and_checkpointer_are_idle_or_batch_threads() {
    let _app = spawn_app().await;
    // (name, policy) of this process's writer and checkpointer threads (other tests' apps too).
    let policies = || {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.starts_with("keygate-log-wri") || name.starts_with("keygate-checkp") {
                let tid: libc::pid_t = task.file_name().to_str().unwrap().parse().unwrap();
                // SAFETY: reads the policy of a thread of this process.
                found.push((name.trim().to_string(), unsafe {
                    libc::sched_getscheduler(tid)
                }));
            }
        }
        found
    };
    // Whether this process may leave SCHED_IDLE, found as keygate finds it: on a thread of its own.
    let switches = std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscalls on this short-lived thread, reading `param` only.
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
                && libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0
        }
    })
    .join()
    .unwrap();
    let at_rest = if switches {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_BATCH
    };
    // Ours at rest: a writer and a checkpointer under `at_rest`. Other tests' apps, running
    // alongside, may have theirs hurried into batch threads; none is an ordinary thread.
    let settled = |found: &[(String, i32)]| {
        ["keygate-log-wri", "keygate-checkp"].iter().all(|name| {
            found
                .iter()
                .any(|(n, policy)| n.starts_with(name) && *policy == at_rest)
        }) && found
            .iter()
            .all(|(_, policy)| [libc::SCHED_IDLE, libc::SCHED_BATCH].contains(policy))
    };
    // A thread sets its policy as its first step: give a just-started one a moment.
    let started = Instant::now();
    let mut found = policies();
    while !settled(&found) && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        found = policies();
    }
    assert!(settled(&found), "{found:?} (expected {at_rest} at rest)");
}

/// The rows of requests that have ended are written, unflushed, while another request stays
/// open (a slow upstream here, a long stream in life): the writer's schedule does not wait for
/// a quiet moment. (A writer that waited for no request to be open, without a bound, failed
/// this.)
#[tokio::test]
async fn rows_are_written_while_a_request_stays_open() {
    let app = spawn_app().await;
    let (slow_id, slow_key) = app.new_key().await;
    let (key_id, key) = app.new_key().await;
    let open = {
        let app_base = app.base.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{app_base}/v1/chat/completions"))
                .bearer_auth(slow_key)
                .json(
                    &json!({"model": "gpt-slow", "messages": [{"role": "user", "content": "hi"}]}),
                )
                .send()
                .await
                .map(|response| response.status())
        })
    };
    // The slow request is open once the upstream has it.
    app.upstream.wait_until_seen(1).await;
    for _ in 0..3 {
        let (status, _) = app.chat_model(&key, "gpt-test").await;
        assert_eq!(status, StatusCode::OK);
    }

    // Read without a flush.
    let waited = Instant::now();
    while rows_in_database(&app, key_id).await < 3 && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rows_in_database(&app, key_id).await,
        3,
        "rows waited for the open request to end"
    );
    assert!(!open.is_finished(), "the slow request ended first");
    assert_eq!(rows_in_database(&app, slow_id).await, 0);
    assert_eq!(open.await.unwrap().unwrap(), StatusCode::OK);
    app.flush().await;
    assert_eq!(rows_in_database(&app, slow_id).await, 1);
}
