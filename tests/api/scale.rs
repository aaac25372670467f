//! Log reads at scale: totals counted up to a cap and estimated past it (from the rollup or the
//! id span), cursor pages (`before`/`after` a row), the model filter; histories are imported
//! through the real `keygate data import`.

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

#[tokio::test]
async fn totals_past_the_cap_are_estimated_without_counting_and_filters_stay_exact() {
    let app = spawn_app().await;
    let (key, _) = app.new_key().await;
    let (other, _) = app.new_key().await;
    let now = app.clock.now_ms();
    // 10,100 rows of `key` (every 100th an error), then 20 of `other`; one second apart,
    // alternating two models.
    let n = 10_100;
    let mut logs: Vec<Value> = (1..=n)
        .map(|id| {
            let model = if id % 2 == 0 { "m-even" } else { "m-odd" };
            log_row(id, key, now - (n + 20 - id) * 1000, model, id % 100 == 0)
        })
        .collect();
    logs.extend(
        (n + 1..=n + 20).map(|id| log_row(id, other, now - (n + 20 - id) * 1000, "m-other", false)),
    );
    import_logs(&app, &logs);

    let (status, all) = app.get("/api/api-logs?page_size=5").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(total(&all), (n + 20, true), "past the cap: the id span");
    assert_eq!(ids(&all), [n + 20, n + 19, n + 18, n + 17, n + 16]);
    assert_eq!(all["page"], 1);
    assert_eq!(all["next_before"], n + 16);
    assert!(all["prev_after"].is_null());

    let (_, of_key) = app
        .get(&format!("/api/api-keys/{key}/logs?page_size=1"))
        .await;
    assert_eq!(total(&of_key), (n, true), "from the key's rollup");
    let (_, successes) = app
        .get(&format!(
            "/api/api-logs?key_id={key}&status=success&page_size=1"
        ))
        .await;
    assert_eq!(total(&successes), (n - n / 100, true));
    let (_, errors) = app
        .get(&format!(
            "/api/api-keys/{key}/logs?status=error&page_size=200"
        ))
        .await;
    assert_eq!(total(&errors), (n / 100, false), "under the cap: counted");
    assert_eq!(errors["items"].as_array().unwrap().len(), 101);
    assert!(errors["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "error"));
    let (_, all_errors) = app.get("/api/api-logs?status=error&page_size=1").await;
    assert_eq!(total(&all_errors), (n / 100, false));
    let (_, of_other) = app.get(&format!("/api/api-logs?key_id={other}")).await;
    assert_eq!(total(&of_other), (20, false));

    let (_, odd) = app.get("/api/api-logs?model=m-odd&page_size=3").await;
    assert_eq!(total(&odd), (n / 2, false));
    assert_eq!(ids(&odd), [n - 1, n - 3, n - 5]);
    let (_, odd_errors) = app
        .get(&format!(
            "/api/api-keys/{key}/logs?model=m-even&status=error&page_size=1"
        ))
        .await;
    assert_eq!(
        total(&odd_errors),
        (n / 100, false),
        "every 100th id is even"
    );

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
}
