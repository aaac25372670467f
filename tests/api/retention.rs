//! Call-log retention (the background task and `keygate logs prune`) and the online backup
//! (`keygate data backup`), on a manual clock and through the real binary.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{fails, ok};
use crate::helpers::*;
use crate::scale::{import_logs, log_row};

const DAY_MS: i64 = 86_400_000;

async fn pragma(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar(&format!("PRAGMA {name}"))
        .fetch_one(&app.state.pool)
        .await
        .unwrap()
}

async fn total_logs(app: &TestApp) -> i64 {
    let (_, page) = app.get("/api/api-logs?page_size=1").await;
    page["total"].as_i64().unwrap()
}

/// `old` rows of `key` 40 days old, then `new` rows of today, imported.
fn history(key: i64, now: i64, old: i64, new: i64) -> Vec<Value> {
    (1..=old + new)
        .map(|id| {
            let at = if id <= old {
                now - 40 * DAY_MS + id
            } else {
                now - 1000 + (id - old)
            };
            log_row(id, key, at, "gpt-test", id % 10 == 0)
        })
        .collect()
}

#[tokio::test]
async fn pruning_deletes_old_rows_in_batches_keeps_stats_and_gives_space_back() {
    let app = spawn_app().await;
    let (key, _) = app.new_key().await;
    let now = app.clock.now_ms();
    let old = 2 * keygate::tasks::retention::ROWS_PER_BATCH + 500;
    import_logs(&app, &history(key, now, old, 30));
    let (_, before) = app.get(&format!("/api/api-keys/{key}/stats?days=90")).await;
    assert_eq!(before["total_calls"], old + 30);
    let key_before = app.key_json(key).await;
    assert_eq!(
        pragma(&app, "auto_vacuum").await,
        2,
        "a new database is created incremental"
    );
    let pages_before = pragma(&app, "page_count").await;

    let stop = CancellationToken::new();
    let pruned = keygate::tasks::retention::prune_once(&app.state.pool, &app.clock, 30, &stop)
        .await
        .unwrap();
    assert_eq!(pruned.rows, old as u64);
    assert!(pruned.pages_freed > 0, "{pruned:?}");
    assert_eq!(pragma(&app, "freelist_count").await, 0);
    assert!(pragma(&app, "page_count").await < pages_before);
    assert_eq!(total_logs(&app).await, 30);
    let (_, after) = app.get(&format!("/api/api-keys/{key}/stats?days=90")).await;
    assert_eq!(
        after, before,
        "stats read the rollup, which pruning leaves alone"
    );
    let key_after = app.key_json(key).await;
    assert_eq!(
        key_after["total_tokens_used"],
        key_before["total_tokens_used"]
    );

    // Nothing is old enough now; a day later, still nothing (the new rows are 1 day old).
    let again = keygate::tasks::retention::prune_once(&app.state.pool, &app.clock, 30, &stop)
        .await
        .unwrap();
    assert_eq!(again.rows, 0);
    app.clock.advance(time::Duration::days(29));
    let later = keygate::tasks::retention::prune_once(&app.state.pool, &app.clock, 30, &stop)
        .await
        .unwrap();
    assert_eq!(later.rows, 0);
    app.clock.advance(time::Duration::days(2));
    let last = keygate::tasks::retention::prune_once(&app.state.pool, &app.clock, 30, &stop)
        .await
        .unwrap();
    assert_eq!(last.rows, 30);
}

/// With KEYGATE_LOG_RETENTION_DAYS set, the server prunes at start (then every cleanup
/// interval), and keeps serving.
#[tokio::test]
async fn the_server_prunes_old_rows_when_retention_is_set() {
    let app = spawn_app().await;
    let (key, secret) = app.new_key().await;
    import_logs(&app, &history(key, app.clock.now_ms(), 50, 5));
    let (db, dir) = app.shutdown().await;

    let app = spawn_app_on_with(&db, &["--log-retention-days", "30"]).await;
    let started = std::time::Instant::now();
    while total_logs(&app).await != 5 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "retention did not prune at start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.chat_model(&secret, "gpt-test").await.0, 200);
    app.flush().await;
    let (_, stats) = app.get(&format!("/api/api-keys/{key}/stats?days=90")).await;
    assert_eq!(stats["total_calls"], 55 + 1);
    drop(app);
    drop(dir);
}

#[tokio::test]
async fn logs_prune_counts_then_deletes_while_the_server_serves() {
    let app = spawn_app().await;
    let (key, secret) = app.new_key().await;
    import_logs(&app, &history(key, app.clock.now_ms(), 120, 8));

    let dry = ok(&app, &["logs", "prune", "--older-than", "30d", "--dry-run"]);
    assert!(dry.contains("Dry run: 120 call log(s)"), "{dry}");
    assert_eq!(total_logs(&app).await, 128, "a dry run deletes nothing");
    let bad = fails(&app, &["logs", "prune", "--older-than", "soon"]);
    assert!(bad.contains("--older-than"), "{bad}");

    let done = ok(&app, &["logs", "prune", "--older-than", "30d"]);
    assert!(done.contains("Deleted 120 call log(s)"), "{done}");
    // The prune is in the audit log (the dry run is not).
    let (_, trail) = app.get("/api/audit-log?action=prune").await;
    assert_eq!(trail["total"], 1, "{trail}");
    assert_eq!(trail["items"][0]["details"]["rows_deleted"], 120, "{trail}");
    assert_eq!(trail["items"][0]["via"], "cli", "{trail}");
    assert_eq!(total_logs(&app).await, 8);
    assert_eq!(app.chat_model(&secret, "gpt-test").await.0, 200);
    app.flush().await;
    assert_eq!(total_logs(&app).await, 9);
    let (_, stats) = app.get(&format!("/api/api-keys/{key}/stats?days=90")).await;
    assert_eq!(stats["total_calls"], 129);
    let vacuum = ok(&app, &["logs", "vacuum"]);
    assert!(vacuum.contains("already"), "{vacuum}");
}

/// A database created before incremental auto-vacuum is converted by `keygate logs vacuum`.
#[tokio::test]
async fn logs_vacuum_converts_an_older_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate!("./migrations").run(&pool).await.unwrap();
        pool.close().await;
    }
    let app = spawn_app_on(&db).await;
    assert_eq!(
        pragma(&app, "auto_vacuum").await,
        0,
        "opening does not rewrite it"
    );
    let (db, _) = app.shutdown().await;
    let out = crate::data::ok(&db, dir.path(), &["logs", "vacuum"]);
    assert!(out.contains("rewritten"), "{out}");
    let app = spawn_app_on(&db).await;
    assert_eq!(pragma(&app, "auto_vacuum").await, 2);
}

/// Every key and call log, comparable.
async fn contents(app: &TestApp) -> (Vec<Value>, Vec<Value>) {
    app.flush().await;
    let (_, keys) = app.get("/api/api-keys?page_size=200").await;
    let mut logs = Vec::new();
    let (_, mut page) = app.get("/api/api-logs?page_size=200").await;
    loop {
        logs.extend(page["items"].as_array().unwrap().iter().cloned());
        let Some(before) = page["next_before"].as_i64() else {
            break;
        };
        page = app
            .get(&format!("/api/api-logs?page_size=200&before={before}"))
            .await
            .1;
    }
    (keys["items"].as_array().unwrap().clone(), logs)
}

#[tokio::test]
async fn a_backup_taken_while_serving_restores_with_working_keys_and_the_same_logs() {
    let app = spawn_app().await;
    let (first, secret) = app.new_key().await;
    let (_, other) = app.new_key().await;
    for model in ["gpt-test", "gpt-fail", "gpt-other"] {
        app.chat_model(&secret, model).await;
        app.chat_model(&other, model).await;
    }
    let (keys, logs) = contents(&app).await;
    let out_dir = tempfile::tempdir().unwrap();
    let snapshot = out_dir.path().join("keygate-backup.db");
    let snapshot_arg = snapshot.to_str().unwrap();

    // Traffic goes on while the backup runs.
    let traffic = async {
        for _ in 0..20 {
            assert_eq!(app.chat_model(&secret, "gpt-test").await.0, 200);
        }
    };
    let backup = async {
        tokio::task::spawn_blocking({
            let db = app.db_path.clone();
            let dir = out_dir.path().to_path_buf();
            let target = snapshot_arg.to_string();
            move || crate::data::ok(&db, &dir, &["data", "backup", "--output", &target])
        })
        .await
        .unwrap()
    };
    let (_, out) = tokio::join!(traffic, backup);
    assert!(out.contains("Backed up the database"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&snapshot).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let refused = fails(&app, &["data", "backup", "--output", snapshot_arg]);
    assert!(
        refused.contains("already exists") && refused.contains("--force"),
        "{refused}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no partial file left: {leftovers:?}");
    let (keys_now, logs_now) = contents(&app).await;

    let restored = spawn_app_on(&snapshot).await;
    let (restored_keys, restored_logs) = contents(&restored).await;
    assert_eq!(restored_keys.len(), keys.len());
    for key in &restored_keys {
        let id = key["id"].as_i64().unwrap();
        let then = keys.iter().find(|k| k["id"] == id).unwrap();
        assert_eq!(key["key_preview"], then["key_preview"]);
    }
    // A consistent snapshot: the rows before the backup, then some of the rows written while
    // it ran, each as the live database holds it.
    assert!(restored_logs.len() >= logs.len() && restored_logs.len() <= logs_now.len());
    for row in &restored_logs {
        assert!(logs_now.contains(row), "{row}");
    }
    for row in &logs {
        assert!(restored_logs.contains(row), "{row}");
    }
    assert_eq!(
        restored.chat_model(&secret, "gpt-test").await.0,
        200,
        "keys authenticate"
    );
    assert_eq!(restored.chat_model(&other, "gpt-test").await.0, 200);
    let (_, stats) = restored.get(&format!("/api/api-keys/{first}/stats")).await;
    assert!(stats["total_calls"].as_i64().unwrap() >= 3);
    drop(keys_now);

    let replaced = ok(
        &app,
        &["data", "backup", "--output", snapshot_arg, "--force"],
    );
    assert!(replaced.contains("Backed up"), "{replaced}");
}
