//! The cost of every call: priced from the embedded LiteLLM table (or KEYGATE_PRICES_FILE)
//! when the call ends, stored on its row with its cached tokens, summed in the key's stats,
//! and carried by export/import.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::data::{fresh_db, ok, open, path_str};
use crate::helpers::*;
use keygate::store::logs::{self, LogFilter, LogRow};
use keygate::store::Page;

/// A model's prices as the embedded table file holds them, read here independently of keygate.
struct TablePrice {
    input: f64,
    output: f64,
    cache_read: Option<f64>,
}

fn table_price(model: &str) -> TablePrice {
    let table: Value =
        serde_json::from_str(include_str!("../../src/prices/litellm_prices.json")).unwrap();
    let price = &table["models"][model];
    assert!(price.is_object(), "{model} is not in the embedded table");
    TablePrice {
        input: price["input_cost_per_token"].as_f64().unwrap(),
        output: price["output_cost_per_token"].as_f64().unwrap(),
        cache_read: price["cache_read_input_token_cost"].as_f64(),
    }
}

/// Uncached prompt tokens at the input price, cached ones at the cache-read price (the input
/// price without one), completion tokens at the output price.
fn expected_cost(price: &TablePrice, prompt: i64, cached: i64, completion: i64) -> f64 {
    (prompt - cached) as f64 * price.input
        + cached as f64 * price.cache_read.unwrap_or(price.input)
        + completion as f64 * price.output
}

fn usage(prompt: i64, cached: i64, completion: i64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0}
    })
}

/// A chat call whose mock answer carries `usage`; the whole body is read.
async fn chat_with_usage(app: &TestApp, key: &str, model: &str, usage: Value, stream: bool) {
    let response = app
        .chat(
            key,
            json!({"model": model, "stream": stream, "mock_usage": usage,
                   "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap();
}

/// The key's rows as stored (exact REAL values), newest first.
pub(crate) async fn stored(pool: &sqlx::SqlitePool, key_id: i64) -> Vec<LogRow> {
    let filter = LogFilter {
        key_id: Some(key_id),
        ..Default::default()
    };
    let page = Page {
        page: 1,
        page_size: 100,
    };
    logs::list(pool, &filter, logs::PageAt::Number(page))
        .await
        .unwrap()
        .unwrap()
        .rows
}

pub(crate) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

#[tokio::test]
async fn a_chat_call_costs_its_tokens_at_the_embedded_prices() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    chat_with_usage(&app, &key, "gpt-4o-mini", usage(1000, 600, 200), false).await;
    app.flush().await;

    let price = table_price("gpt-4o-mini");
    assert!(price.cache_read.is_some_and(|p| p < price.input));
    let expected = expected_cost(&price, 1000, 600, 200);
    let rows = stored(&app.state.pool, id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].cost, expected);
    assert_eq!(rows[0].cache_read_tokens, Some(600));
    assert_eq!(rows[0].prompt_tokens, Some(1000));

    // The admin API's rows carry both, in a key's logs and in all logs.
    let row = &app.logs_of(id).await[0];
    assert!(close(row["cost"].as_f64().unwrap(), expected), "{row}");
    assert_eq!(row["cache_read_tokens"], 600);
    let (status, all) = app.get("/api/api-logs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(close(all["items"][0]["cost"].as_f64().unwrap(), expected));
    assert_eq!(all["items"][0]["cache_read_tokens"], 600);

    // Stats add them up, in all and per model.
    chat_with_usage(&app, &key, "gpt-4o-mini", usage(10, 0, 5), false).await;
    app.chat_model(&key, "gpt-fail").await;
    app.flush().await;
    let (status, stats) = app.get(&format!("/api/api-keys/{id}/stats")).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let total = expected + expected_cost(&price, 10, 0, 5);
    assert!(
        close(stats["total_cost"].as_f64().unwrap(), total),
        "{stats}"
    );
    assert_eq!(stats["cached_tokens"], 600);
    let by_model = stats["by_model"].as_array().unwrap();
    let mini = by_model
        .iter()
        .find(|m| m["model"] == "gpt-4o-mini")
        .unwrap();
    assert!(close(mini["cost"].as_f64().unwrap(), total), "{stats}");
    let failed = by_model.iter().find(|m| m["model"] == "gpt-fail").unwrap();
    assert_eq!(failed["cost"], 0.0);
}

#[tokio::test]
async fn a_streamed_call_is_priced_from_its_usage_chunk_and_provider_prefixes_are_dropped() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    chat_with_usage(&app, &key, "openai/gpt-4o", usage(500, 128, 50), true).await;
    app.flush().await;
    let rows = stored(&app.state.pool, id).await;
    assert!(rows[0].stream);
    assert_eq!(rows[0].model.as_deref(), Some("openai/gpt-4o"));
    assert_eq!(rows[0].cache_read_tokens, Some(128));
    assert_eq!(
        rows[0].cost,
        expected_cost(&table_price("gpt-4o"), 500, 128, 50)
    );
}

#[tokio::test]
async fn an_unknown_model_costs_nothing_and_is_warned_about_once() {
    const MODEL: &str = "cost-test-unpriced-model-7f3a";
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    for _ in 0..3 {
        chat_with_usage(&app, &key, MODEL, usage(100, 0, 100), false).await;
    }
    app.flush().await;
    let rows = stored(&app.state.pool, id).await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!((row.cost, row.total_tokens), (0.0, Some(200)));
    }
    let logs = captured_logs();
    let warnings = logs
        .lines()
        .filter(|line| line.contains("no price for this model") && line.contains(MODEL))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    let (unknown, _) = app.state.config.prices.unknown_models();
    assert!(unknown.contains(&(MODEL.to_string(), 3)), "{unknown:?}");
}

#[tokio::test]
async fn a_prices_file_overrides_and_adds_models() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"{"models": {
            "gpt-4o-mini": {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002},
            "house-model": {"input_cost_per_token": 0.01, "output_cost_per_token": 0.02,
                            "cache_read_input_token_cost": 0.005}
        }}"#,
    )
    .unwrap();
    let app = spawn_app_with(&["--prices-file", path_str(file.path())]).await;
    let (id, key) = app.new_key().await;
    chat_with_usage(&app, &key, "gpt-4o-mini", usage(1000, 600, 200), false).await;
    chat_with_usage(&app, &key, "house-model", usage(10, 4, 10), false).await;
    app.flush().await;
    let rows = stored(&app.state.pool, id).await;
    let mini = TablePrice {
        input: 0.001,
        output: 0.002,
        cache_read: None,
    };
    let house = TablePrice {
        input: 0.01,
        output: 0.02,
        cache_read: Some(0.005),
    };
    assert_eq!(rows[1].cost, expected_cost(&mini, 1000, 600, 200));
    assert_ne!(
        rows[1].cost,
        expected_cost(&table_price("gpt-4o-mini"), 1000, 600, 200)
    );
    assert_eq!(rows[0].cost, expected_cost(&house, 10, 4, 10));
}

#[tokio::test]
async fn a_broken_prices_file_stops_the_start_naming_the_setting() {
    let upstream = spawn_mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"models": {"gpt-4o": {"input_cost_per_token": "cheap", "output_cost_per_token": 1}}}"#,
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    serve_env(command.arg("serve"), &upstream, dir.path(), free_port())
        .env("KEYGATE_PRICES_FILE", &prices)
        .current_dir(dir.path());
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || command.output().unwrap()),
    )
    .await
    .expect("keygate exits at start")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KEYGATE_PRICES_FILE")
            && stderr.contains(path_str(&prices))
            && stderr.contains("models.gpt-4o"),
        "{stderr}"
    );
}

#[tokio::test]
async fn export_and_import_keep_cost_and_old_exports_import_at_cost_0() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    chat_with_usage(&app, &key, "gpt-4o-mini", usage(1000, 600, 200), false).await;
    app.flush().await;
    let original = stored(&app.state.pool, id).await;
    assert!(original[0].cost > 0.0);

    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("export.json");
    ok(
        &app.db_path,
        out_dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    let pool = open(&db).await;
    let imported = stored(&pool, id).await;
    assert_eq!(
        (imported[0].cost, imported[0].cache_read_tokens),
        (original[0].cost, Some(600))
    );
    pool.close().await;

    // The same file as versions 2 and 3 wrote it: the cache reads named `cached_tokens`, no
    // cache writes, upstream or attempts.
    let mut export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(export["metadata"]["format_version"], 4);
    export["metadata"]["format_version"] = json!(3);
    for log in export["data"]["logs"].as_array_mut().unwrap() {
        let log = log.as_object_mut().unwrap();
        let read = log.remove("cache_read_tokens").unwrap();
        log.insert("cached_tokens".into(), read);
        for new in ["cache_write_tokens", "upstream_id", "attempts"] {
            assert!(log.remove(new).is_some(), "{new}");
        }
    }
    let v3 = out_dir.path().join("v3.json");
    let text = format!(
        r#"{{"metadata": {}, "data": {}}}"#,
        export["metadata"], export["data"]
    );
    std::fs::write(&v3, text).unwrap();
    let (_v3, db) = fresh_db(Some(&app.db_path));
    ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&v3)],
    );
    let pool = open(&db).await;
    let imported = stored(&pool, id).await;
    assert_eq!(
        (
            imported[0].cost,
            imported[0].cache_read_tokens,
            imported[0].cache_write_tokens
        ),
        (original[0].cost, Some(600), None)
    );
    pool.close().await;

    // The same file as a version 1 export wrote it: no cost, no cached tokens.
    export["metadata"]["format_version"] = json!(1);
    for log in export["data"]["logs"].as_array_mut().unwrap() {
        let log = log.as_object_mut().unwrap();
        assert!(log.remove("cost").is_some() && log.remove("cached_tokens").is_some());
    }
    let old = out_dir.path().join("old.json");
    // `metadata` first, as keygate writes it (a `Value` would sort the keys).
    let text = format!(
        r#"{{"metadata": {}, "data": {}}}"#,
        export["metadata"], export["data"]
    );
    std::fs::write(&old, text).unwrap();
    let (_older, db) = fresh_db(Some(&app.db_path));
    ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&old)],
    );
    let pool = open(&db).await;
    let imported = stored(&pool, id).await;
    assert_eq!(
        (
            imported[0].cost,
            imported[0].cache_read_tokens,
            imported[0].prompt_tokens
        ),
        (0.0, None, Some(1000))
    );
}
