//! Call logs and stats: exact counts under concurrency, stats over a known mix, pagination.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn two_hundred_concurrent_requests_give_two_hundred_rows() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let requests = (0..200).map(|i| {
        let model = if i % 2 == 0 { "gpt-test" } else { "gpt-other" };
        app.chat(
            &key,
            json!({"model": model, "stream": i % 4 == 1, "messages": []}),
        )
    });
    let responses = futures_util::future::join_all(requests).await;
    for response in responses {
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    app.flush().await;
    let (_, logs) = app
        .get(&format!("/api/api-logs?key_id={id}&page_size=1"))
        .await;
    assert_eq!(logs["total"], 200);
    let key = app.key_json(id).await;
    assert_eq!(key["usage_count"], 200);
    let (_, stats) = app.get(&format!("/api/api-keys/{id}/stats")).await;
    assert_eq!(stats["total_calls"], 200);
    assert_eq!(stats["total_tokens"], 100 * 12 + 50 * 12 + 50 * 7);
}

#[tokio::test]
async fn stats_over_a_known_mix_are_exact() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    // Yesterday: 2 successes. Today: 3 successes (2 gpt-test, 1 gpt-other) and 2 errors.
    app.clock.advance(-time::Duration::days(1));
    app.chat_model(&key, "gpt-test").await;
    app.chat_model(&key, "gpt-test").await;
    app.clock.advance(time::Duration::days(1));
    app.chat_model(&key, "gpt-test").await;
    app.chat_model(&key, "gpt-test").await;
    app.chat_model(&key, "gpt-other").await;
    app.chat_model(&key, "gpt-fail").await;
    app.chat_model(&key, "gpt-fail").await;
    app.flush().await;

    let (status, stats) = app.get(&format!("/api/api-keys/{id}/stats?days=7")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["key_id"], id);
    assert_eq!(stats["days"], 7);
    assert_eq!(stats["total_calls"], 7);
    assert_eq!(stats["success_calls"], 5);
    assert_eq!(stats["error_calls"], 2);
    assert_eq!(stats["success_rate"].as_f64().unwrap(), 5.0 / 7.0);
    assert_eq!(stats["prompt_tokens"], 25);
    assert_eq!(stats["completion_tokens"], 35);
    assert_eq!(stats["total_tokens"], 60);
    let by_model = stats["by_model"].as_array().unwrap();
    assert_eq!(by_model[0]["model"], "gpt-test");
    assert_eq!(
        (
            by_model[0]["calls"].as_i64(),
            by_model[0]["success_calls"].as_i64()
        ),
        (Some(4), Some(4))
    );
    let fail = by_model.iter().find(|m| m["model"] == "gpt-fail").unwrap();
    assert_eq!(
        (
            fail["calls"].as_i64(),
            fail["error_calls"].as_i64(),
            fail["total_tokens"].as_i64()
        ),
        (Some(2), Some(2), Some(0))
    );
    let by_day = stats["by_day"].as_array().unwrap();
    assert_eq!(by_day.len(), 7, "every day of the window, zeros included");
    let counts: Vec<i64> = by_day
        .iter()
        .map(|d| d["calls"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [0, 0, 0, 0, 0, 2, 5]);
    assert_eq!(by_day[6]["error_calls"], 2);
    assert_eq!(by_day[6]["date"], app.clock.now().date().to_string());

    let (_, today) = app.get(&format!("/api/api-keys/{id}/stats?days=1")).await;
    assert_eq!(today["total_calls"], 5);
    let (status, error) = app.get(&format!("/api/api-keys/{id}/stats?days=0")).await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("days"))
    );
}

#[tokio::test]
async fn logs_page_newest_first_and_filter_by_status() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    for i in 0..5 {
        app.clock.advance(time::Duration::seconds(1));
        app.chat_model(&key, if i == 2 { "gpt-fail" } else { "gpt-test" })
            .await;
    }
    app.flush().await;
    let (_, page) = app
        .get(&format!("/api/api-keys/{id}/logs?page=1&page_size=2"))
        .await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["page"].as_i64(),
            page["page_size"].as_i64()
        ),
        (Some(5), Some(1), Some(2))
    );
    let items = page["items"].as_array().unwrap();
    assert!(items[0]["timestamp"].as_str().unwrap() > items[1]["timestamp"].as_str().unwrap());
    let (_, errors) = app
        .get(&format!("/api/api-keys/{id}/logs?status=error"))
        .await;
    assert_eq!(errors["total"], 1);
    assert_eq!(errors["items"][0]["model"], "gpt-fail");
    let (_, successes) = app
        .get(&format!("/api/api-logs?key_id={id}&status=success"))
        .await;
    assert_eq!(successes["total"], 4);
    let (_, all_errors) = app.get("/api/api-logs?status=error").await;
    assert_eq!(all_errors["total"], 1);
    let (_, all_successes) = app.get("/api/api-logs?status=success&page_size=1").await;
    assert_eq!(all_successes["total"], 4);
    assert_eq!(all_successes["items"][0]["status"], "success");
    let (status, error) = app.get("/api/api-logs?status=maybe").await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("status"))
    );
}

/// The console's model filter: exact model, with key and status, on both log lists; the plan
/// of the unkeyed filter walks the model index instead of scanning the table.
#[tokio::test]
async fn logs_filter_by_model() {
    let app = spawn_app().await;
    let (a, key_a) = app.new_key().await;
    let (_, key_b) = app.new_key().await;
    for model in ["gpt-test", "gpt-4o-mini", "gpt-4o-mini", "gpt-fail"] {
        app.chat_model(&key_a, model).await;
    }
    app.chat_model(&key_b, "gpt-4o-mini").await;
    app.flush().await;
    let (_, all) = app.get("/api/api-logs?model=gpt-4o-mini").await;
    assert_eq!(all["total"], 3);
    assert!(all["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|row| row["model"] == "gpt-4o-mini"));
    let (_, of_a) = app
        .get(&format!("/api/api-keys/{a}/logs?model=gpt-4o-mini"))
        .await;
    assert_eq!(of_a["total"], 2);
    let (_, of_a) = app
        .get(&format!(
            "/api/api-logs?key_id={a}&model=gpt-fail&status=error"
        ))
        .await;
    assert_eq!(of_a["total"], 1);
    let (_, none) = app
        .get(&format!(
            "/api/api-logs?key_id={a}&model=gpt-fail&status=success"
        ))
        .await;
    assert_eq!(
        (
            none["total"].as_i64(),
            none["items"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
    // Blank means no filter, and a prefix is not a model.
    let (_, blank) = app.get("/api/api-logs?model=%20").await;
    assert_eq!(blank["total"], 5);
    let (_, prefix) = app.get("/api/api-logs?model=gpt-4o").await;
    assert_eq!(prefix["total"], 0);

    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM api_call_logs WHERE model = 'gpt-4o-mini'",
    )
    .fetch_all(&app.state.pool)
    .await
    .unwrap();
    let plan: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
    assert!(
        plan.iter().any(|step| step.contains("idx_logs_model_time")),
        "{plan:?}"
    );
}

/// A database made by the first schema (AUTOINCREMENT ids, a full status index) keeps every
/// log row through the 0002 rebuild; filters and new rows work on the rebuilt table.
#[tokio::test]
async fn call_logs_survive_the_lean_schema_migration() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("v1.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db_path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let mut first = sqlx::migrate!("./migrations");
        first.migrations = first.migrations[..1].to_vec().into();
        first.run(&pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO api_keys (key_hash, key_preview, name, created_at, updated_at) \
             VALUES ('h', 'kg-…', 'old', 0, 0);
             INSERT INTO api_call_logs (api_key_id, timestamp, model, status, http_status, \
             response_time, endpoint, total_tokens) VALUES
             (1, 1000, 'gpt-a', 'success', 200, 5, '/v1/chat/completions', 30),
             (1, 2000, 'gpt-b', 'error', 502, 7, '/v1/chat/completions', NULL),
             (1, 3000, 'gpt-c', 'success', 200, 9, '/v1/embeddings', 12);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let app = spawn_app_on(&db_path).await;
    let (_, all) = app.get("/api/api-logs").await;
    assert_eq!(all["total"], 3);
    let models: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["gpt-c", "gpt-b", "gpt-a"]);
    assert_eq!(all["items"][0]["total_tokens"], 12);
    let (_, errors) = app.get("/api/api-logs?status=error").await;
    assert_eq!(
        (
            errors["total"].as_i64(),
            errors["items"][0]["http_status"].as_i64()
        ),
        (Some(1), Some(502))
    );
    let (_, successes) = app.get("/api/api-keys/1/logs?status=success").await;
    assert_eq!(successes["total"], 2);

    let (id, key) = app.new_key().await;
    app.chat_model(&key, "gpt-new").await;
    app.flush().await;
    let rows = app.logs_of(id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], 4, "new ids continue after the migrated ones");
}
