//! Anthropic Messages usage on the call log: `POST /v1/messages` relayed to the mock's
//! Anthropic answers (JSON and a real event stream), each row with all input the model saw as
//! its prompt, its cache reads and writes, a cost at the price table's cache prices, counted by
//! the key's limits; Anthropic's error envelope in the row; the new columns through the admin
//! API and export/import.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::cost::{close, stored};
use crate::data::{fresh_db, ok, open, path_str};
use crate::helpers::*;
use keygate::relay::record::{CallRecord, Usage};

/// A model the embedded table prices, cache reads and writes included.
const CLAUDE: &str = "claude-sonnet-4-5";

/// `claude_usage()` as keygate counts it: (prompt, completion, total, cache read, cache write).
const COUNTED: (i64, i64, i64, i64, i64) =
    (25 + 1200 + 3000, 15, 25 + 1200 + 3000 + 15, 3000, 1200);

/// The cost of `claude_usage()` for `CLAUDE`, from the embedded table file read here apart
/// from keygate: plain input, cache reads, cache writes and output each at its own price.
fn expected_cost() -> f64 {
    let table: Value =
        serde_json::from_str(include_str!("../../src/prices/litellm_prices.json")).unwrap();
    let price = &table["models"][CLAUDE];
    let at = |field: &str| {
        price[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{CLAUDE}: {field}"))
    };
    25.0 * at("input_cost_per_token")
        + 3000.0 * at("cache_read_input_token_cost")
        + 1200.0 * at("cache_creation_input_token_cost")
        + 15.0 * at("output_cost_per_token")
}

/// An app whose mock upstream is also configured as an Anthropic upstream (the built-in
/// `default` is OpenAI's and serves no `/v1/messages`).
async fn claude_app() -> TestApp {
    let app = spawn_app().await;
    let base_url = format!("http://{}", app.upstream.addr);
    crate::routing::add_upstream(
        &app,
        json!({"name": "claude", "kind": "anthropic", "base_url": base_url}),
    )
    .await;
    app
}

/// `POST /v1/messages` through keygate with `key` as a bearer (the route's own auth and
/// headers are the relay's business, not this module's).
async fn messages(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/messages"))
        .bearer_auth(key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn message(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The row's token columns: (prompt, completion, total, cache read, cache write).
fn counted(row: &Value) -> (i64, i64, i64, i64, i64) {
    let n = |field: &str| {
        row[field]
            .as_i64()
            .unwrap_or_else(|| panic!("{field}: {row}"))
    };
    (
        n("prompt_tokens"),
        n("completion_tokens"),
        n("total_tokens"),
        n("cache_read_tokens"),
        n("cache_write_tokens"),
    )
}

/// The columns of several upstreams are on every row: `upstream_id` (null or an id) and
/// `attempts` (a count, null only on rows older than them). Which upstream and how many
/// attempts is the relay's to set.
fn has_upstream_columns(row: &Value) {
    let row = row.as_object().unwrap();
    assert!(
        row.get("upstream_id")
            .is_some_and(|v| v.is_null() || v.is_i64()),
        "{row:?}"
    );
    assert!(row.get("attempts").is_some_and(Value::is_i64), "{row:?}");
}

#[tokio::test]
async fn a_messages_answer_is_counted_with_its_cache_tokens_and_priced() {
    let app = claude_app().await;
    let (id, key) = app.new_key().await;
    let (status, answer) = read(messages(&app, &key, message(CLAUDE, false)).await).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["usage"],
        claude_usage(),
        "the answer passes unchanged"
    );
    assert_eq!(app.upstream.seen()[0].path_and_query, "/v1/messages");

    let rows = app.logs_of(id).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (
            &row["endpoint"],
            &row["model"],
            &row["status"],
            &row["stream"]
        ),
        (
            &json!("/v1/messages"),
            &json!(CLAUDE),
            &json!("success"),
            &json!(false)
        )
    );
    assert_eq!(counted(row), COUNTED);
    let cost = row["cost"].as_f64().unwrap();
    assert!(
        cost > 0.0 && close(cost, expected_cost()),
        "{cost} {}",
        expected_cost()
    );
    has_upstream_columns(row);

    // The key's usage and stats count every token the model saw, cache tokens included.
    let key_json = app.key_json(id).await;
    assert_eq!(key_json["total_tokens_used"], COUNTED.2, "{key_json}");
    let (_, stats) = app.get(&format!("/api/api-keys/{id}/stats")).await;
    assert_eq!(
        (
            &stats["prompt_tokens"],
            &stats["total_tokens"],
            &stats["cached_tokens"]
        ),
        (&json!(COUNTED.0), &json!(COUNTED.2), &json!(COUNTED.3)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_messages_stream_is_relayed_unchanged_and_counted_from_its_events() {
    let app = claude_app().await;
    let (id, key) = app.new_key().await;
    let response = messages(&app, &key, message(CLAUDE, true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert_eq!(
        text,
        anthropic_events(CLAUDE, &claude_usage()).concat(),
        "every event passes as the upstream sent it"
    );

    let rows = app.logs_of(id).await;
    let row = &rows[0];
    assert_eq!(
        (&row["stream"], &row["status"]),
        (&json!(true), &json!("success"))
    );
    assert_eq!(counted(row), COUNTED);
    assert!(
        close(row["cost"].as_f64().unwrap(), expected_cost()),
        "{row}"
    );
    has_upstream_columns(row);

    // Without cache activity the stream's counts are its input and output alone.
    let plain = json!({"input_tokens": 9, "output_tokens": 4});
    let mut body = message(CLAUDE, true);
    body["mock_usage"] = plain;
    messages(&app, &key, body).await.text().await.unwrap();
    let row = &app.logs_of(id).await[0];
    assert_eq!(
        (
            &row["prompt_tokens"],
            &row["completion_tokens"],
            &row["total_tokens"]
        ),
        (&json!(9), &json!(4), &json!(13)),
        "{row}"
    );
    assert_eq!(
        (&row["cache_read_tokens"], &row["cache_write_tokens"]),
        (&Value::Null, &Value::Null)
    );
}

#[tokio::test]
async fn a_keys_token_limit_counts_cache_tokens() {
    let app = claude_app().await;
    let (_, key) = app
        .create_key(json!({"name": "t", "rate_limit_window": 60, "rate_limit_tokens": 5000}))
        .await;
    let first = messages(&app, &key, message(CLAUDE, true)).await;
    assert_eq!(first.status(), StatusCode::OK);
    first.text().await.unwrap();
    let second = messages(&app, &key, message(CLAUDE, false)).await;
    let remaining = second
        .headers()
        .get("x-ratelimit-remaining-tokens")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(remaining.as_deref(), Some("760"), "5000 less {}", COUNTED.2);
    second.text().await.unwrap();
    // 8480 counted: over the limit.
    let (status, body) = read(messages(&app, &key, message(CLAUDE, false)).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn anthropic_errors_and_token_counts_are_logged_without_usage() {
    let app = claude_app().await;
    let (id, key) = app.new_key().await;
    let (status, body) =
        read(messages(&app, &key, message("claude-overloaded", false)).await).await;
    assert_eq!(status.as_u16(), 529, "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error");
    let counted = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .bearer_auth(&key)
        .json(&json!({"model": CLAUDE, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(read(counted).await.1, json!({"input_tokens": 42}));

    let rows = app.logs_of(id).await;
    let (count, failed) = (&rows[0], &rows[1]);
    assert_eq!(
        failed["error_message"], "upstream returned HTTP 529: Overloaded",
        "Anthropic's envelope gives the row its message: {failed}"
    );
    assert_eq!(count["endpoint"], "/v1/messages/count_tokens");
    for row in [count, failed] {
        for field in [
            "prompt_tokens",
            "total_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
        ] {
            assert_eq!(row[field], Value::Null, "{field}: {row}");
        }
        assert_eq!(row["cost"], 0.0);
        has_upstream_columns(row);
    }
}

#[tokio::test]
async fn the_new_columns_are_shown_exported_and_imported() {
    let app = spawn_app().await;
    let (id, _) = app.new_key().await;
    // A row as the relay writes one after a failover: the second upstream tried (id 7)
    // answered.
    app.state.logs.record(CallRecord {
        api_key_id: Some(id),
        authenticated: true,
        timestamp: app.clock.now_ms(),
        model: Some(CLAUDE.into()),
        success: true,
        http_status: 200,
        endpoint: "/v1/messages".into(),
        usage: Some(Usage {
            prompt_tokens: Some(4225),
            completion_tokens: Some(15),
            total_tokens: Some(4240),
            cache_read_tokens: Some(3000),
            cache_write_tokens: Some(1200),
        }),
        cost: 0.5,
        upstream_id: Some(7),
        attempts: 2,
        ..CallRecord::default()
    });
    let row = &app.logs_of(id).await[0];
    assert_eq!(
        (
            &row["upstream_id"],
            &row["attempts"],
            &row["cache_write_tokens"]
        ),
        (&json!(7), &json!(2), &json!(1200)),
        "{row}"
    );
    // The admin API describes the fields it answers.
    let (_, doc) = app.get("/api/openapi.json").await;
    let fields = &doc["components"]["schemas"]["LogRow"]["properties"];
    for field in [
        "cache_read_tokens",
        "cache_write_tokens",
        "upstream_id",
        "attempts",
    ] {
        assert!(fields.get(field).is_some(), "{field}: {fields}");
    }
    assert!(fields.get("cached_tokens").is_none());

    let original = stored(&app.state.pool, id).await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("export.json");
    ok(
        &app.db_path,
        out_dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let log = &export["data"]["logs"][0];
    assert_eq!(
        (
            &log["upstream_id"],
            &log["attempts"],
            &log["cache_read_tokens"]
        ),
        (&json!(7), &json!(2), &json!(3000)),
        "{log}"
    );
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    let pool = open(&db).await;
    let imported = stored(&pool, id).await;
    assert_eq!(format!("{imported:?}"), format!("{original:?}"));
    pool.close().await;
}
