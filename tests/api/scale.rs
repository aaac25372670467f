//! Log reads at scale: exact totals and pages by number from the day counts (kept by triggers
//! through imports, overwrites, pruning and key deletion), cursor pages (`before`/`after` a
//! row), the model filter; histories are imported through the real `keygate data import`.

use std::path::Path;

use serde_json::{json, Value};

use crate::cli::ok;
use crate::helpers::*;

/// One call-log row of an export file.
pub fn log_row(id: i64, key_id: i64, timestamp_ms: i64, model: &str, error: bool) -> Value {
    json!({
        "id": id, "api_key_id": key_id,
        "timestamp": keygate::clock::rfc3339(timestamp_ms),
        "model": model, "status": if error { "error" } else { "success" },
        "http_status": if error { 502 } else { 200 }, "response_time": 100 + id % 50,
        "ip_address": "10.0.0.1", "endpoint": "/v1/chat/completions",
        "error_message": if error { Some("upstream unavailable") } else { None },
        "request_size": 300, "response_size": 500,
        "prompt_tokens": if error { None } else { Some(3) },
        "completion_tokens": if error { None } else { Some(4) },
        "total_tokens": if error { None } else { Some(7) },
        "stream": false, "cost": 0.0, "cached_tokens": null
    })
}

/// Writes an export file (format 2) holding only `logs` (their keys exist in the database).
pub fn write_logs_file(path: &Path, logs: &[Value]) {
    let metadata = json!({"format_version": 2, "keygate_version": "test",
        "exported_at": "2026-01-01T00:00:00.000Z", "counts": {"logs": logs.len()},
        "sanitized": false, "types": ["logs"]});
    // `metadata` first, as keygate writes it (a JSON object here would sort its keys).
    let file = format!(
        "{{\"metadata\": {metadata}, \"data\": {}}}",
        json!({ "logs": logs })
    );
    std::fs::write(path, file).unwrap();
}

/// Imports `logs` into the app's database through the real binary, while it serves.
pub fn import_logs(app: &TestApp, logs: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.json");
    write_logs_file(&file, logs);
    let out = ok(app, &["data", "import", "--input", file.to_str().unwrap()]);
    assert!(out.contains(&format!("{} new", logs.len())), "{out}");
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect()
}

fn total(page: &Value) -> (i64, bool) {
    (
        page["total"].as_i64().unwrap(),
        page["total_is_estimate"].as_bool().unwrap(),
    )
}

/// `log_day_counts` agrees with the rows it counts (what the triggers keep it at).
pub async fn assert_day_counts_match_rows(app: &TestApp, when: &str) {
    let pool = &app.state.pool;
    let counted: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT api_key_id, day, model, rows, errors FROM log_day_counts ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let rows: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(api_key_id, 0), (timestamp - (timestamp % 86400000 + 86400000) % 86400000) \
         / 86400000, COALESCE(model, ''), COUNT(*), \
         SUM(status = 'error') FROM api_call_logs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(counted, rows, "{when}");
}

/// Pages by number across days and filters hold what walking every row in page order gives.
async fn assert_pages_by_number(app: &TestApp, query: &str, expected: &[i64]) {
    let size = 97; // not a divisor of a day's rows
    let pages = (expected.len() as i64 + size - 1) / size;
    for page in [1, 2, pages / 2, pages - 1, pages, pages + 1] {
        if page < 1 {
            continue;
        }
        let (status, body) = app
            .get(&format!(
                "/api/api-logs?{query}&page={page}&page_size={size}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let from = ((page - 1) * size).min(expected.len() as i64) as usize;
        let to = (page * size).min(expected.len() as i64) as usize;
        assert_eq!(ids(&body), expected[from..to], "{query} page {page}");
        assert_eq!(total(&body), (expected.len() as i64, false), "{query}");
        let more = to < expected.len();
        assert_eq!(
            body["next_before"].as_i64(),
            if more && from < to {
                Some(expected[to - 1])
            } else {
                None
            },
            "{query} page {page}"
        );
    }
}

#[tokio::test]
async fn totals_are_exact_and_pages_by_number_start_at_their_day() {
    let app = spawn_app().await;
    let (key, _) = app.new_key().await;
    let (other, _) = app.new_key().await;
    let now = app.clock.now_ms();
    // 10,100 rows of `key` (every 100th an error), then 20 of `other`; a minute apart (a week
    // of UTC days), alternating two models.
    let n = 10_100;
    let minute = 60_000;
    let mut logs: Vec<Value> = (1..=n)
        .map(|id| {
            let model = if id % 2 == 0 { "m-even" } else { "m-odd" };
            log_row(id, key, now - (n + 20 - id) * minute, model, id % 100 == 0)
        })
        .collect();
    logs.extend(
        (n + 1..=n + 20)
            .map(|id| log_row(id, other, now - (n + 20 - id) * minute, "m-other", false)),
    );
    import_logs(&app, &logs);
    assert_day_counts_match_rows(&app, "after the import").await;

    let (status, all) = app.get("/api/api-logs?page_size=5").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(total(&all), (n + 20, false), "exact past 10,000 rows");
    assert_eq!(ids(&all), [n + 20, n + 19, n + 18, n + 17, n + 16]);
    assert_eq!(all["page"], 1);
    assert_eq!(all["next_before"], n + 16);
    assert!(all["prev_after"].is_null());

    // Newest first is highest id first here (timestamps rise with ids).
    let newest_first = |keep: &dyn Fn(i64) -> bool| -> Vec<i64> {
        (1..=n + 20).rev().filter(|id| keep(*id)).collect()
    };
    let is_key = |id: i64| id <= n;
    let is_error = |id: i64| id <= n && id % 100 == 0;
    assert_pages_by_number(&app, "x=1", &newest_first(&|_| true)).await;
    assert_pages_by_number(&app, &format!("key_id={key}"), &newest_first(&is_key)).await;
    assert_pages_by_number(
        &app,
        &format!("key_id={key}&status=success"),
        &newest_first(&|id| is_key(id) && !is_error(id)),
    )
    .await;
    assert_pages_by_number(&app, "status=error", &newest_first(&is_error)).await;
    assert_pages_by_number(
        &app,
        "model=m-odd",
        &newest_first(&|id| is_key(id) && id % 2 == 1),
    )
    .await;
    assert_pages_by_number(
        &app,
        &format!("key_id={key}&model=m-even&status=error"),
        &newest_first(&is_error),
    )
    .await;
    assert_pages_by_number(
        &app,
        &format!("key_id={other}"),
        &newest_first(&|id| id > n),
    )
    .await;
    let (_, none) = app.get("/api/api-logs?key_id=0").await;
    assert_eq!(total(&none), (0, false), "no key has id 0");

    // Stats come from the rollup the import kept.
    let (_, stats) = app.get(&format!("/api/api-keys/{key}/stats?days=30")).await;
    assert_eq!(stats["total_calls"], n);
    assert_eq!(stats["error_calls"], n / 100);

    // The oldest page by cursor, and the page after it.
    let (_, oldest) = app.get("/api/api-logs?after=0&page_size=3").await;
    assert_eq!(ids(&oldest), [3, 2, 1]);
    assert!(oldest["page"].is_null());
    assert!(oldest["next_before"].is_null(), "nothing is older");
    assert_eq!(oldest["prev_after"], 3);
    let (_, newer) = app.get("/api/api-logs?after=3&page_size=3").await;
    assert_eq!(ids(&newer), [6, 5, 4]);

    // The counts follow every other way rows come and go: a row without a key (an unknown
    // key's 401), rows overwritten by an import (moved to another key, day, model and status),
    // pruning, and a key's deletion (its rows go by ON DELETE CASCADE).
    let (status, _) = read(app.chat("sk-not-a-key", json!({"model": "gpt-test"})).await).await;
    assert_eq!(status, 401);
    app.flush().await;
    assert_day_counts_match_rows(&app, "a row without a key").await;
    // Two of them from before 1970 (an import may bring such rows): one new, one overwriting.
    let moved: Vec<Value> = (5..=9)
        .map(|id| {
            let at = if id == 9 { -5_000 } else { now - id * 1000 };
            log_row(id, other, at, "m-moved", id % 2 == 0)
        })
        .chain([log_row(n + 1000, key, -86_400_001, "m-moved", true)])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overwrite.json");
    write_logs_file(&file, &moved);
    let out = ok(
        &app,
        &[
            "data",
            "import",
            "--input",
            file.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(out.contains("1 new, 5 overwritten"), "{out}");
    assert_day_counts_match_rows(&app, "after overwriting rows").await;
    let (_, moved_page) = app
        .get("/api/api-logs?model=m-moved&page=1&page_size=2")
        .await;
    assert_eq!(total(&moved_page), (6, false));
    assert_eq!(ids(&moved_page), [5, 6]);
    let (_, oldest) = app
        .get("/api/api-logs?model=m-moved&page=3&page_size=2")
        .await;
    assert_eq!(ids(&oldest), [9, n + 1000], "before 1970, by day");
    let out = ok(&app, &["logs", "prune", "--older-than", "3d"]);
    assert!(out.contains("Deleted"), "{out}");
    assert_day_counts_match_rows(&app, "after pruning").await;
    let (_, all) = app.get("/api/api-logs?page_size=1").await;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs")
        .fetch_one(&app.state.pool)
        .await
        .unwrap();
    assert!(held < n, "pruned: {held}");
    assert_eq!(total(&all), (held, false));
    let (status, _) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/api-keys/{other}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_day_counts_match_rows(&app, "after deleting a key").await;
    let (_, none) = app.get(&format!("/api/api-logs?key_id={other}")).await;
    assert_eq!(total(&none), (0, false));
}

/// Cursors walk a key's rows both ways, ties of timestamp ordered by id, without gaps or
/// repeats; bad cursors are refused naming the parameter.
#[tokio::test]
async fn cursor_pages_walk_both_ways_through_equal_timestamps() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    // The manual clock stands still: all seven rows share one timestamp.
    for i in 0..7 {
        app.chat_model(&key, if i == 3 { "gpt-fail" } else { "gpt-test" })
            .await;
    }
    app.flush().await;
    let numbered = ids(&app.get(&format!("/api/api-keys/{id}/logs")).await.1);
    assert_eq!(numbered.len(), 7);
    assert!(numbered.windows(2).all(|w| w[0] > w[1]), "{numbered:?}");

    let mut walked = Vec::new();
    let (_, mut page) = app
        .get(&format!("/api/api-keys/{id}/logs?page_size=3"))
        .await;
    loop {
        walked.extend(ids(&page));
        let Some(before) = page["next_before"].as_i64() else {
            break;
        };
        page = app
            .get(&format!(
                "/api/api-keys/{id}/logs?page_size=3&before={before}"
            ))
            .await
            .1;
        assert_eq!(page["total"], 7);
    }
    assert_eq!(
        walked, numbered,
        "older pages, newest first, nothing skipped"
    );

    let mut back = Vec::new();
    let mut after = Some(0);
    while let Some(cursor) = after {
        let (status, page) = app
            .get(&format!(
                "/api/api-logs?key_id={id}&page_size=3&after={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let mut rows = ids(&page);
        rows.reverse();
        back.extend(rows);
        after = page["prev_after"].as_i64();
    }
    back.reverse();
    assert_eq!(
        back, numbered,
        "newer pages from the oldest, nothing skipped"
    );

    let (_, errors) = app
        .get(&format!(
            "/api/api-keys/{id}/logs?status=error&before={}",
            numbered[0]
        ))
        .await;
    assert_eq!(ids(&errors), [numbered[3]]);

    for (query, field) in [
        ("before=999", "before"),
        ("after=999", "after"),
        ("before=0", "before"),
        ("after=-1", "after"),
        ("before=2&after=1", "before"),
        ("page=2&before=3", "page"),
    ] {
        let (status, error) = app.get(&format!("/api/api-logs?{query}")).await;
        assert_eq!(
            (status.as_u16(), error["field"].as_str()),
            (400, Some(field)),
            "{query}: {error}"
        );
    }
}

/// A log id the file repeats is a conflict like one the database has, inside one batch of
/// checked rows or across two: refused without a flag, then the later row wins (`--force`)
/// or the first stays (`--skip-conflicts`), as when rows were checked one at a time.
#[tokio::test]
async fn a_log_id_repeated_in_the_file_is_a_conflict_within_and_across_batches() {
    let app = spawn_app().await;
    let (key, _) = app.new_key().await;
    let now = app.clock.now_ms();
    let mut logs: Vec<Value> = (1..=600)
        .map(|id| log_row(id, key, now - 1000 + id, "m-first", false))
        .collect();
    // Id 7 again in the first batch of 512, id 3 again in the second.
    logs.insert(10, log_row(7, key, now, "m-second", true));
    logs.insert(550, log_row(3, key, now, "m-second", true));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("repeats.json");
    write_logs_file(&file, &logs);
    let file = file.to_str().unwrap();

    let refused = crate::cli::fails(&app, &["data", "import", "--input", file]);
    assert!(
        refused.contains("2 row(s)")
            && refused.contains("call log #7")
            && refused.contains("call log #3")
            && refused.contains("Nothing was imported"),
        "{refused}"
    );
    assert_eq!(app.get("/api/api-logs").await.1["total"], 0);

    let forced = ok(&app, &["data", "import", "--input", file, "--force"]);
    assert!(
        forced.contains("call logs: 600 new, 2 overwritten, 0 skipped"),
        "{forced}"
    );
    let (_, page) = app.get("/api/api-logs?model=m-second").await;
    let mut second = ids(&page);
    second.sort();
    assert_eq!(second, [3, 7], "the later row wins");
    let (_, stats) = app.get(&format!("/api/api-keys/{key}/stats")).await;
    assert_eq!(
        (stats["total_calls"].as_i64(), stats["error_calls"].as_i64()),
        (Some(600), Some(2)),
        "each id counted once in the rollup"
    );
    assert_day_counts_match_rows(&app, "a repeated id overwritten").await;
}
