//! The usage rollup (`usage_daily`) and the key's usage totals: exact after a mix of calls,
//! what stats read (so pruned log rows change nothing), backfilled by migration 0005, added to
//! once by an import (also when it overwrites rows), removed with the key.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::SqlitePool;

use crate::data::{fresh_db, ok, open, path_str};
use crate::helpers::*;

/// One `usage_daily` row: day, model, then calls, success_calls, error_calls, prompt_tokens,
/// completion_tokens, cached_tokens, total_tokens, response_time_ms_sum; and cost.
type Rolled = (String, String, [i64; 8], f64);

const SUMS: &str = "calls, success_calls, error_calls, prompt_tokens, completion_tokens, \
     cached_tokens, total_tokens, response_time_ms_sum, cost";

fn rolled(rows: Vec<sqlx::sqlite::SqliteRow>) -> Vec<Rolled> {
    use sqlx::Row;
    rows.iter()
        .map(|row| {
            let sums: [i64; 8] = std::array::from_fn(|i| row.get(i + 2));
            (row.get(0), row.get(1), sums, row.get(10))
        })
        .collect()
}

/// The key's rollup as stored, by day and model.
async fn rollup(pool: &SqlitePool, key_id: i64) -> Vec<Rolled> {
    rolled(
        sqlx::query(&format!(
            "SELECT day, model, {SUMS} FROM usage_daily WHERE api_key_id = ? ORDER BY day, model"
        ))
        .bind(key_id)
        .fetch_all(pool)
        .await
        .unwrap(),
    )
}

/// The rollup the key's call-log rows give, computed here from the rows.
async fn from_rows(pool: &SqlitePool, key_id: i64) -> Vec<Rolled> {
    rolled(
        sqlx::query(
            "SELECT date(timestamp / 1000, 'unixepoch') AS d, COALESCE(model, '') AS m, \
             COUNT(*), SUM(status = 'success'), SUM(status = 'error'), \
             COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), \
             COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(total_tokens), 0), \
             SUM(response_time), COALESCE(SUM(cost), 0.0) \
             FROM api_call_logs WHERE api_key_id = ? GROUP BY d, m ORDER BY d, m",
        )
        .bind(key_id)
        .fetch_all(pool)
        .await
        .unwrap(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Equal counts, and costs equal but for the order they were summed in.
fn assert_same(got: &[Rolled], want: &[Rolled]) {
    assert_eq!(got.len(), want.len(), "{got:?}\n{want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((&g.0, &g.1, g.2), (&w.0, &w.1, w.2), "{got:?}\n{want:?}");
        assert!(close(g.3, w.3), "{got:?}\n{want:?}");
    }
}

/// The key's `total_tokens_used` and `total_cost` as stored.
async fn totals(pool: &SqlitePool, key_id: i64) -> (i64, f64) {
    sqlx::query_as("SELECT total_tokens_used, total_cost FROM api_keys WHERE id = ?")
        .bind(key_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The sums of the key's rows: total_tokens and cost.
async fn row_totals(pool: &SqlitePool, key_id: i64) -> (i64, f64) {
    sqlx::query_as(
        "SELECT COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cost), 0.0) \
         FROM api_call_logs WHERE api_key_id = ?",
    )
    .bind(key_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn assert_totals_match_rows(pool: &SqlitePool, key_id: i64) {
    let (tokens, cost) = totals(pool, key_id).await;
    let (row_tokens, row_cost) = row_totals(pool, key_id).await;
    assert_eq!(tokens, row_tokens);
    assert!(close(cost, row_cost), "{cost} != {row_cost}");
}

fn usage(prompt: i64, cached: i64, completion: i64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached}
    })
}

async fn chat_with_usage(app: &TestApp, key: &str, model: &str, usage: Value, stream: bool) {
    let body = json!({"model": model, "stream": stream, "mock_usage": usage,
                      "messages": [{"role": "user", "content": "hi"}]});
    let response = app.chat(key, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap();
}

/// Yesterday: two priced calls of gpt-4o-mini (one streamed, with cached tokens) and an error.
/// Today: gpt-4o streamed and not, gpt-4o-mini, two errors.
async fn a_mix_of_calls(app: &TestApp, key: &str) {
    app.clock.advance(-time::Duration::days(1));
    chat_with_usage(app, key, "gpt-4o-mini", usage(1000, 600, 200), false).await;
    chat_with_usage(app, key, "gpt-4o-mini", usage(300, 100, 50), true).await;
    app.chat_model(key, "gpt-fail").await;
    app.clock.advance(time::Duration::days(1));
    chat_with_usage(app, key, "gpt-4o", usage(2000, 0, 400), true).await;
    chat_with_usage(app, key, "gpt-4o", usage(10, 0, 5), false).await;
    chat_with_usage(app, key, "gpt-4o-mini", usage(70, 70, 30), false).await;
    app.chat_model(key, "gpt-fail").await;
    app.chat_model(key, "gpt-fail").await;
    app.flush().await;
}

#[tokio::test]
async fn the_rollup_and_totals_are_exact_and_stats_survive_pruned_rows() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (other, other_key) = app.new_key().await;
    a_mix_of_calls(&app, &key).await;
    app.chat_model(&other_key, "gpt-4o").await;
    app.flush().await;
    let pool = &app.state.pool;

    let rolled = rollup(pool, id).await;
    let today = app.clock.now().date().to_string();
    let yesterday = (app.clock.now().date() - time::Duration::days(1)).to_string();
    let groups: Vec<(&str, &str, i64)> = rolled
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2[0]))
        .collect();
    assert_eq!(
        groups,
        [
            (yesterday.as_str(), "gpt-4o-mini", 2),
            (yesterday.as_str(), "gpt-fail", 1),
            (today.as_str(), "gpt-4o", 2),
            (today.as_str(), "gpt-4o-mini", 1),
            (today.as_str(), "gpt-fail", 2),
        ]
    );
    // Yesterday's gpt-4o-mini: 2 successes, 1300 prompt (700 cached), 250 completion tokens.
    assert_eq!(rolled[0].2[..7], [2, 2, 0, 1300, 250, 700, 1550]);
    assert_eq!(rolled[4].2[..3], [2, 0, 2]);
    assert!(rolled[0].3 > 0.0 && rolled[2].3 > 0.0);
    assert_same(&rolled, &from_rows(pool, id).await);
    assert_totals_match_rows(pool, id).await;
    assert_eq!(totals(pool, id).await.0, 1550 + 2415 + 100);
    assert_same(&rollup(pool, other).await, &from_rows(pool, other).await);

    // The key's answers carry the totals.
    let key_json = app.key_json(id).await;
    let (tokens, cost) = totals(pool, id).await;
    assert_eq!(key_json["total_tokens_used"], tokens);
    assert_eq!(key_json["total_cost"].as_f64(), Some(cost));
    let (_, list) = app.get("/api/api-keys").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert_eq!(listed["total_tokens_used"], tokens);
    let shown = crate::cli::ok(&app, &["keys", "show", &id.to_string()]);
    assert!(
        shown.contains(&format!("total_tokens_used  {tokens}"))
            && shown.contains(&format!("total_cost         ${cost:.6}")),
        "{shown}"
    );

    // Stats give the figures of the rows.
    let (status, stats) = app.get(&format!("/api/api-keys/{id}/stats?days=7")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let (calls, success, prompt, completion, cached, total, avg, cost): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f64,
        f64,
    ) = sqlx::query_as(
        "SELECT COUNT(*), SUM(status = 'success'), SUM(prompt_tokens), SUM(completion_tokens), \
         SUM(cache_read_tokens), SUM(total_tokens), AVG(response_time), SUM(cost) \
         FROM api_call_logs WHERE api_key_id = ?",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (
            stats["total_calls"].as_i64(),
            stats["success_calls"].as_i64(),
            stats["error_calls"].as_i64(),
            stats["prompt_tokens"].as_i64(),
            stats["completion_tokens"].as_i64(),
            stats["cached_tokens"].as_i64(),
            stats["total_tokens"].as_i64(),
        ),
        (
            Some(calls),
            Some(success),
            Some(calls - success),
            Some(prompt),
            Some(completion),
            Some(cached),
            Some(total)
        )
    );
    assert_eq!(
        stats["avg_response_time_ms"].as_f64(),
        Some((avg * 100.0).round() / 100.0)
    );
    assert!(
        close(stats["total_cost"].as_f64().unwrap(), cost),
        "{stats}"
    );
    let by_day: Vec<i64> = stats["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["calls"].as_i64().unwrap())
        .collect();
    assert_eq!(by_day, [0, 0, 0, 0, 0, 3, 5]);
    let by_model: Vec<(&str, i64)> = stats["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["model"].as_str().unwrap(), m["calls"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        by_model,
        [("gpt-4o-mini", 3), ("gpt-fail", 3), ("gpt-4o", 2)]
    );
    let (_, today_only) = app.get(&format!("/api/api-keys/{id}/stats?days=1")).await;
    assert_eq!(today_only["total_calls"], 5);

    // Pruning the rows (as retention will) changes neither stats nor totals.
    let before_key = totals(pool, id).await;
    sqlx::query("DELETE FROM api_call_logs WHERE api_key_id = ?")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
    let (_, after) = app.get(&format!("/api/api-keys/{id}/stats?days=7")).await;
    assert_eq!(after, stats);
    assert_eq!(totals(pool, id).await, before_key);
    assert_eq!(rollup(pool, id).await, rolled);

    // New calls add to what is there.
    chat_with_usage(&app, &key, "gpt-4o", usage(1, 0, 1), false).await;
    app.flush().await;
    assert_eq!(totals(pool, id).await.0, before_key.0 + 2);
    let (_, more) = app.get(&format!("/api/api-keys/{id}/stats?days=1")).await;
    assert_eq!(more["total_calls"], 6);
}

#[tokio::test]
async fn deleting_a_key_removes_its_rollup() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (other, other_key) = app.new_key().await;
    app.chat_model(&key, "gpt-test").await;
    app.chat_model(&other_key, "gpt-test").await;
    app.flush().await;
    assert_eq!(rollup(&app.state.pool, id).await.len(), 1);
    let (status, _) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/api-keys/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(rollup(&app.state.pool, id).await.is_empty());
    assert_eq!(rollup(&app.state.pool, other).await.len(), 1);
}

/// A database made by migrations 0001–0004 gets its rollup and key totals from its rows.
#[tokio::test]
async fn migration_0005_backfills_the_rollup_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("v4.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before.migrations[..4].to_vec().into();
        before.run(&pool).await.unwrap();
        // Day 0 is 1970-01-01; 86_400_000 ms is 1970-01-02.
        sqlx::raw_sql(
            "INSERT INTO api_keys (key_hash, key_preview, name, created_at, updated_at) VALUES
             ('h1', 'kg-…', 'one', 0, 0), ('h2', 'kg-…', 'two', 0, 0), ('h3', 'kg-…', 'idle', 0, 0);
             INSERT INTO api_call_logs (api_key_id, timestamp, model, status, http_status,
             response_time, endpoint, prompt_tokens, completion_tokens, total_tokens, cost,
             cached_tokens) VALUES
             (1, 1000, 'gpt-a', 'success', 200, 5, '/v1/chat/completions', 10, 20, 30, 0.25, 4),
             (1, 2000, 'gpt-a', 'error', 502, 7, '/v1/chat/completions', NULL, NULL, NULL, 0, NULL),
             (1, 86400000, 'gpt-a', 'success', 200, 9, '/v1/chat/completions', 1, 2, 3, 0.5, NULL),
             (1, 86400001, NULL, 'error', 401, 1, '/v1/models', NULL, NULL, NULL, 0, NULL),
             (2, 3000, 'gpt-b', 'success', 200, 11, '/v1/embeddings', 8, 0, 8, 0.125, NULL),
             (NULL, 4000, NULL, 'error', 401, 1, '/v1/chat/completions', NULL, NULL, NULL, 0, NULL);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let app = spawn_app_on(&db_path).await;
    let pool = &app.state.pool;
    let one = rollup(pool, 1).await;
    assert_eq!(
        one,
        [
            (
                "1970-01-01".to_string(),
                "gpt-a".to_string(),
                [2, 1, 1, 10, 20, 4, 30, 12],
                0.25
            ),
            (
                "1970-01-02".to_string(),
                String::new(),
                [1, 0, 1, 0, 0, 0, 0, 1],
                0.0
            ),
            (
                "1970-01-02".to_string(),
                "gpt-a".to_string(),
                [1, 1, 0, 1, 2, 0, 3, 9],
                0.5
            ),
        ]
    );
    assert_same(&rollup(pool, 2).await, &from_rows(pool, 2).await);
    let keyless: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_daily")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(keyless, 4, "rows without a key are not rolled up");
    assert_eq!(totals(pool, 1).await, (33, 0.75));
    assert_eq!(totals(pool, 2).await, (8, 0.125));
    assert_eq!(totals(pool, 3).await, (0, 0.0));
    // Stats read the backfilled rollup: the model-less row shows as no model.
    let (_, stats) = app.get("/api/api-keys/1/stats?days=366").await;
    assert_eq!(stats["total_calls"], 0, "1970 is outside any window");
    let key_json = app.key_json(1).await;
    assert_eq!(
        (
            key_json["total_tokens_used"].as_i64(),
            key_json["total_cost"].as_f64()
        ),
        (Some(33), Some(0.75))
    );
    // Migration 0012 counted the rows held per key (0: none), day and model.
    let counts: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT api_key_id, day, model, rows, errors FROM log_day_counts ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let count = |key: i64, day: i64, model: &str, rows: i64, errors: i64| {
        (key, day, model.to_string(), rows, errors)
    };
    assert_eq!(
        counts,
        [
            count(0, 0, "", 1, 1),
            count(1, 0, "gpt-a", 2, 1),
            count(1, 1, "", 1, 1),
            count(1, 1, "gpt-a", 1, 0),
            count(2, 0, "gpt-b", 1, 0),
        ]
    );
    let (_, page) = app.get("/api/api-logs?status=error").await;
    assert_eq!(page["total"], 3);
}

#[tokio::test]
async fn an_import_adds_to_the_rollup_once_also_when_it_overwrites() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    a_mix_of_calls(&app, &key).await;
    let pool = &app.state.pool;
    let original = rollup(pool, id).await;
    let original_totals = totals(pool, id).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let exported_key = &exported["data"]["apikeys"][0];
    assert_eq!(exported_key["total_tokens_used"], original_totals.0);

    // Into a fresh database: the rollup and totals of the rows, as in the original.
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    ok(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    let fresh = open(&db).await;
    assert_same(&rollup(&fresh, id).await, &original);
    assert_same(&rollup(&fresh, id).await, &from_rows(&fresh, id).await);
    assert_totals_match_rows(&fresh, id).await;
    fresh.close().await;

    // Back over the same rows with --force: every row overwritten, none counted twice.
    ok(
        &app.db_path,
        dir.path(),
        &["data", "import", "--input", path_str(&file), "--force"],
    );
    assert_same(&rollup(pool, id).await, &original);
    assert_totals_match_rows(pool, id).await;

    // Overwriting rows with different ones moves their usage: one row changes model and
    // tokens, one changes day, and a new row is added.
    let mut changed = exported.clone();
    let logs = changed["data"]["logs"].as_array_mut().unwrap();
    logs[0]["model"] = json!("gpt-renamed");
    logs[0]["total_tokens"] = json!(5);
    logs[0]["cost"] = json!(2.5);
    logs[1]["timestamp"] = json!("2020-02-02T02:02:02.000Z");
    let mut extra = logs[2].clone();
    extra["id"] = json!(1000);
    logs.push(extra);
    let changed_file = dir.path().join("changed.json");
    std::fs::write(
        &changed_file,
        format!(
            r#"{{"metadata": {}, "data": {}}}"#,
            changed["metadata"], changed["data"]
        ),
    )
    .unwrap();
    ok(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "import",
            "--input",
            path_str(&changed_file),
            "--force",
        ],
    );
    let now = rollup(pool, id).await;
    assert_same(&now, &from_rows(pool, id).await);
    assert!(now.iter().any(|r| r.0 == "2020-02-02" && r.2[0] == 1));
    assert!(now.iter().any(|r| r.1 == "gpt-renamed" && r.2[6] == 5));
    assert!(now.iter().all(|r| r.2[0] > 0), "no empty groups are left");
    assert_totals_match_rows(pool, id).await;
    // The stats read what the rows say.
    let calls: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs WHERE api_key_id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(calls, 9);
    let (_, stats) = app.get(&format!("/api/api-keys/{id}/stats?days=366")).await;
    assert_eq!(
        stats["total_calls"],
        9 - 1,
        "the 2020 row is outside the window"
    );
}
