//! Per-key limits through the real relay: each limit at its boundary (time from the manual
//! clock), exact under concurrency, the concurrency slot held by a stream, no fresh allowance
//! after a restart, the 429s and `x-ratelimit-*` headers, validation, the key's own
//! `/v1/usage` and billing endpoints, the CLI and export/import.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use time::macros::datetime;

use crate::helpers::*;

/// 2026-12-01 (a Tuesday) 10:00 UTC.
const T0: time::OffsetDateTime = datetime!(2026-12-01 10:00 UTC);

/// A prices file where `house` costs $0.01 per prompt token (and nothing per output token).
fn prices_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"{"models": {"house": {"input_cost_per_token": 0.01, "output_cost_per_token": 0.0}}}"#,
    )
    .unwrap();
    file
}

/// An app with the `house` price whose clock reads T0.
async fn app_with_prices(prices: &tempfile::NamedTempFile) -> TestApp {
    let app = spawn_app_with(&["--prices-file", prices.path().to_str().unwrap()]).await;
    app.clock.set(T0);
    app
}

/// A chat completion whose answer reports `tokens` prompt tokens (and no others). Its usage
/// is counted once its body has been read (`.text()`), as the body's end is when it is known.
async fn spend(app: &TestApp, key: &str, tokens: i64) -> reqwest::Response {
    app.chat(
        key,
        json!({"model": "house", "messages": [], "mock_usage":
            {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}}),
    )
    .await
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Asserts a 429 by `limit` and returns its Retry-After (None when absent).
async fn refused_by(response: reqwest::Response, limit: &str) -> Option<u64> {
    let retry_after = header(&response, "retry-after").map(|v| v.parse().unwrap());
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    assert_eq!(body["limit"], limit, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(limit),
        "the message names the limit: {body}"
    );
    retry_after
}

#[tokio::test]
async fn fifty_concurrent_requests_against_a_limit_of_ten_give_exactly_ten() {
    let app = spawn_app().await;
    app.clock.set(T0);
    let (id, key) = app
        .create_key(json!({"name": "burst", "rate_limit_window": 1, "rate_limit_requests": 10}))
        .await;
    let requests = (0..50).map(|_| app.chat_model(&key, "gpt-test"));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (10, 40), "{statuses:?}");
    assert_eq!(
        app.upstream.seen().len(),
        10,
        "refused requests never go upstream"
    );
    // Every request has its row; the refusals say why.
    let rows = app.logs_of(id).await;
    assert_eq!(rows.len(), 50);
    let refused: Vec<&Value> = rows.iter().filter(|r| r["http_status"] == 429).collect();
    assert_eq!(refused.len(), 40);
    assert!(refused.iter().all(|r| r["error_message"]
        .as_str()
        .unwrap()
        .starts_with("key limit reached: ")));
    // Refused requests are not the key's use.
    assert_eq!(app.key_json(id).await["usage_count"], 10);
}

#[tokio::test]
async fn the_request_window_at_its_boundary_with_openai_headers() {
    let app = spawn_app().await;
    app.clock.set(T0);
    let (_, key) = app
        .create_key(json!({"name": "w", "rate_limit_window": 1, "rate_limit_requests": 2}))
        .await;
    let first = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests").unwrap(), "2");
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests").unwrap(),
        "1"
    );
    assert_eq!(
        header(&first, "x-ratelimit-reset-requests").unwrap(),
        "1m0s"
    );
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), None);
    app.clock.advance(time::Duration::seconds(20));
    let second = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(
        header(&second, "x-ratelimit-remaining-requests").unwrap(),
        "0"
    );
    assert_eq!(
        header(&second, "x-ratelimit-reset-requests").unwrap(),
        "40s"
    );
    let third = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(header(&third, "retry-after").unwrap(), "40");
    assert_eq!(
        read(third).await,
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "error": "Too Many Requests",
                "message": "Rate limit reached: this key may make 2 requests per 1 min (rate_limit_requests); retry in 40 s",
                "limit": "rate_limit_requests",
            })
        )
    );
    // One millisecond before the window ends: still refused, retry in 1 s.
    app.clock
        .advance(time::Duration::seconds(40) - time::Duration::milliseconds(1));
    let late = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(refused_by(late, "rate_limit_requests").await, Some(1));
    // At its end a new window starts with the next request.
    app.clock.advance(time::Duration::milliseconds(1));
    let next = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(next.status(), 200);
    assert_eq!(
        header(&next, "x-ratelimit-remaining-requests").unwrap(),
        "1"
    );
    assert_eq!(header(&next, "x-ratelimit-reset-requests").unwrap(), "1m0s");
}

#[tokio::test]
async fn the_concurrency_slot_is_held_until_the_stream_ends_or_the_client_leaves() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "c", "concurrency_limit": 1}))
        .await;
    let gated = json!({"model": "gpt-gated", "stream": true, "messages": []});
    let stream = app.chat(&key, gated.clone()).await;
    assert_eq!(stream.status(), 200);
    let second = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(refused_by(second, "concurrency_limit").await, Some(1));
    app.upstream.mock.gate.notify_one();
    let text = stream.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);

    // A client that leaves mid-stream gives its slot back.
    let stream = app.chat(&key, gated).await;
    assert_eq!(stream.status(), 200);
    drop(stream);
    let started = Instant::now();
    loop {
        let (status, _) = app.chat_model(&key, "gpt-test").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slot of a client that left was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.upstream.mock.gate.notify_one();
    let rows = app.logs_of(id).await;
    assert!(rows.iter().any(|r| r["http_status"] == 429));
}

#[tokio::test]
async fn token_and_cost_limits_are_checked_with_what_is_already_spent() {
    let prices = prices_file();
    let app = app_with_prices(&prices).await;
    // Window tokens: checked before the request, so the request that crosses the line passes.
    let (_, key) = app
        .create_key(json!({"name": "t", "rate_limit_window": 60, "rate_limit_tokens": 20}))
        .await;
    let first = spend(&app, &key, 12).await;
    assert_eq!(header(&first, "x-ratelimit-limit-tokens").unwrap(), "20");
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens").unwrap(),
        "20"
    );
    assert_eq!(
        header(&first, "x-ratelimit-reset-tokens").unwrap(),
        "1h0m0s"
    );
    assert_eq!(first.status(), 200);
    let _ = first.text().await;
    let second = spend(&app, &key, 12).await;
    assert_eq!(
        header(&second, "x-ratelimit-remaining-tokens").unwrap(),
        "8"
    );
    let _ = second.text().await;
    let retry = refused_by(spend(&app, &key, 1).await, "rate_limit_tokens").await;
    assert_eq!(retry, Some(3600));

    // Window, day, week and lifetime cost: $0.10 per call of 10 tokens.
    let (_, windowed) = app
        .create_key(json!({"name": "wc", "rate_limit_window": 60, "rate_limit_cost": 0.15}))
        .await;
    for _ in 0..2 {
        let answer = spend(&app, &windowed, 10).await;
        assert_eq!(answer.status(), 200);
        let _ = answer.text().await;
    }
    let retry = refused_by(spend(&app, &windowed, 10).await, "rate_limit_cost").await;
    assert_eq!(retry, Some(3600));

    let (_, daily) = app
        .create_key(json!({"name": "d", "daily_cost_limit": 0.2}))
        .await;
    for _ in 0..2 {
        let _ = spend(&app, &daily, 10).await.text().await;
    }
    let retry = refused_by(spend(&app, &daily, 10).await, "daily_cost_limit").await;
    assert_eq!(retry, Some(14 * 3600), "until midnight UTC");
    app.clock.advance(time::Duration::hours(14));
    assert_eq!(spend(&app, &daily, 10).await.status(), 200);

    app.clock.set(T0);
    let (_, weekly) = app
        .create_key(json!({"name": "wk", "weekly_cost_limit": 0.1}))
        .await;
    let _ = spend(&app, &weekly, 10).await.text().await;
    // Tuesday 10:00 → Monday 00:00 is 5 days and 14 hours.
    let retry = refused_by(spend(&app, &weekly, 10).await, "weekly_cost_limit").await;
    assert_eq!(retry, Some((5 * 24 + 14) * 3600));
    app.clock
        .advance(time::Duration::days(5) + time::Duration::hours(14));
    assert_eq!(spend(&app, &weekly, 10).await.status(), 200);

    let (total_id, total) = app
        .create_key(json!({"name": "tot", "total_cost_limit": 0.1, "token_limit": 1000}))
        .await;
    let _ = spend(&app, &total, 10).await.text().await;
    let retry = refused_by(spend(&app, &total, 10).await, "total_cost_limit").await;
    assert_eq!(retry, None, "a lifetime limit does not pass by itself");
    // Raising the limit lets it through (the meter keeps what was spent).
    let (status, _) = app
        .patch(
            &format!("/api/api-keys/{total_id}"),
            json!({"total_cost_limit": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let _ = spend(&app, &total, 995).await.text().await;
    refused_by(spend(&app, &total, 1).await, "token_limit").await;
    app.flush().await;
    let shown = app.key_json(total_id).await;
    assert_eq!(shown["total_tokens_used"], 1005);
    assert!((shown["total_cost"].as_f64().unwrap() - 10.05).abs() < 1e-9);
    assert!((shown["daily_cost"].as_f64().unwrap() - 10.05).abs() < 1e-9);
    assert!((shown["weekly_cost"].as_f64().unwrap() - 10.05).abs() < 1e-9);
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_window_gives_no_fresh_allowance() {
    let prices = prices_file();
    let app = app_with_prices(&prices).await;
    let (id, key) = app
        .create_key(
            json!({"name": "r", "rate_limit_window": 60, "rate_limit_requests": 3,
            "rate_limit_tokens": 1000, "daily_cost_limit": 1.0}),
        )
        .await;
    for _ in 0..2 {
        let _ = spend(&app, &key, 30).await.text().await;
    }
    let (db, dir) = app.shutdown().await;
    let prices_arg = ["--prices-file", prices.path().to_str().unwrap()];

    let app = spawn_app_on_with(&db, &prices_arg).await;
    app.clock.set(T0 + time::Duration::minutes(10));
    // Started from the saved window: one request of three is left, 50 minutes to go.
    let last = app
        .chat(&key, json!({"model": "gpt-test", "messages": []}))
        .await;
    assert_eq!(last.status(), 200);
    assert_eq!(
        header(&last, "x-ratelimit-remaining-requests").unwrap(),
        "0"
    );
    assert_eq!(
        header(&last, "x-ratelimit-remaining-tokens").unwrap(),
        "940"
    );
    assert_eq!(
        header(&last, "x-ratelimit-reset-requests").unwrap(),
        "50m0s"
    );
    let _ = last.text().await;
    let retry = refused_by(
        app.chat(&key, json!({"model": "gpt-test", "messages": []}))
            .await,
        "rate_limit_requests",
    )
    .await;
    assert_eq!(retry, Some(50 * 60));
    // Restarted again after the window: the day's cost ($0.60) is still counted.
    let (db, _) = app.shutdown().await;
    let app = spawn_app_on_with(&db, &prices_arg).await;
    app.clock.set(T0 + time::Duration::hours(2));
    let _ = spend(&app, &key, 50).await.text().await;
    refused_by(spend(&app, &key, 1).await, "daily_cost_limit").await;
    assert_eq!(app.logs_of(id).await.len(), 6);
    drop(dir);
}

#[tokio::test]
async fn regenerating_a_key_keeps_its_counters() {
    let app = spawn_app().await;
    app.clock.set(T0);
    let (id, key) = app
        .create_key(json!({"name": "g", "rate_limit_window": 5, "rate_limit_requests": 1}))
        .await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    let (status, regenerated) = app
        .post(&format!("/api/api-keys/{id}/regenerate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let new_key = regenerated["key"].as_str().unwrap();
    refused_by(
        app.chat(new_key, json!({"model": "gpt-test", "messages": []}))
            .await,
        "rate_limit_requests",
    )
    .await;
}

#[tokio::test]
async fn limits_are_validated_naming_the_field_and_shown_with_the_key() {
    let app = spawn_app().await;
    let invalid = [
        (json!({"concurrency_limit": -1}), "concurrency_limit"),
        (json!({"daily_cost_limit": -0.5}), "daily_cost_limit"),
        (json!({"rate_limit_requests": 10}), "rate_limit_window"),
        (json!({"rate_limit_window": 600_000}), "rate_limit_window"),
    ];
    for (limits, field) in &invalid {
        let mut body = json!({"name": "bad"});
        body.as_object_mut()
            .unwrap()
            .extend(limits.as_object().unwrap().clone());
        let (status, error) = app.post("/api/api-keys", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limits}: {error}");
        assert_eq!(error["field"], *field, "{error}");
    }
    let (status, error) = app
        .post(
            "/api/api-keys",
            json!({"name": "bad", "token_limit": "lots"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"].as_str().unwrap().contains("token_limit"),
        "{error}"
    );
    let (status, error) = app
        .post("/api/api-keys", json!({"name": "bad", "rate_limit": 5}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `rate_limit`"),
        "{error}"
    );
    let (_, keys) = app.get("/api/api-keys").await;
    assert_eq!(keys["total"], 0, "nothing stored: {keys}");

    let (id, _) = app
        .create_key(json!({"name": "ok", "rate_limit_window": 60, "rate_limit_cost": 1.5}))
        .await;
    let key = app.key_json(id).await;
    assert_eq!(key["rate_limit_window"], 60);
    assert_eq!(key["rate_limit_cost"], 1.5);
    assert_eq!(key["concurrency_limit"], 0);
    assert_eq!(key["daily_cost"], 0.0);
    // PATCH changes what it names; a window cannot be dropped under a windowed limit.
    let path = format!("/api/api-keys/{id}");
    let (status, error) = app.patch(&path, json!({"rate_limit_window": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], "rate_limit_window");
    let (status, key) = app
        .patch(&path, json!({"rate_limit_cost": 0, "concurrency_limit": 4}))
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["rate_limit_cost"], 0.0);
    assert_eq!(key["rate_limit_window"], 60);
    assert_eq!(key["concurrency_limit"], 4);
}

#[tokio::test]
async fn a_key_reads_its_own_usage_and_balance_and_nothing_of_other_keys() {
    let prices = prices_file();
    let app = app_with_prices(&prices).await;
    let (id, key) = app
        .create_key(
            json!({"name": "self", "expires_days": 30, "rate_limit_window": 60,
            "rate_limit_requests": 100, "daily_cost_limit": 5, "total_cost_limit": 20,
            "allowed_endpoints": ["/v1/chat/completions"]}),
        )
        .await;
    let (_, other) = app.new_key().await;
    let _ = spend(&app, &other, 100).await.text().await;
    for _ in 0..3 {
        let _ = spend(&app, &key, 10).await.text().await;
    }
    app.flush().await;
    let get = |path: &str, key: &str| app.client.get(app.url(path)).bearer_auth(key).send();
    let (status, usage) = read(get("/v1/usage", &key).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["key"]["id"], id);
    assert_eq!(usage["key"]["status"], "active");
    assert!(usage["key"]["expires_at"].is_string());
    assert_eq!(usage["limits"]["daily_cost_limit"], 5.0);
    let requests = &usage["remaining"]["rate_limit_requests"];
    assert_eq!(requests["limit"], 100.0);
    assert_eq!(requests["used"], 3.0);
    assert_eq!(requests["remaining"], 97.0);
    assert_eq!(requests["resets_at"], "2026-12-01T11:00:00.000Z");
    let daily = &usage["remaining"]["daily_cost_limit"];
    assert!(
        (daily["used"].as_f64().unwrap() - 0.3).abs() < 1e-9,
        "{daily}"
    );
    assert_eq!(daily["resets_at"], "2026-12-02T00:00:00.000Z");
    assert!(usage["remaining"].get("concurrency_limit").is_none());
    let days = usage["daily"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["date"], "2026-12-01");
    assert_eq!(days[29]["calls"], 3, "only this key's calls: {}", days[29]);
    assert_eq!(days[29]["total_tokens"], 30);
    assert_eq!(days[0]["calls"], 0);

    let (status, subscription) = read(
        get("/v1/dashboard/billing/subscription", &key)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(subscription["hard_limit_usd"], 20.0);
    assert!(subscription["access_until"].as_i64().unwrap() > 0);
    let (_, billed) = read(
        get(
            "/v1/dashboard/billing/usage?start_date=2026-12-01&end_date=2026-12-02",
            &key,
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(
        (billed["total_usage"].as_f64().unwrap() - 30.0).abs() < 1e-6,
        "{billed}"
    );
    let (_, before) = read(
        get(
            "/v1/dashboard/billing/usage?start_date=2026-11-01&end_date=2026-12-01",
            &key,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(before["total_usage"], 0.0);
    let (status, error) = read(
        get(
            "/v1/dashboard/billing/usage?start_date=12/01&end_date=2026-12-02",
            &key,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], "start_date");
    // Never relayed, not a use of the key, and no key no answer.
    assert!(app
        .upstream
        .seen()
        .iter()
        .all(|s| s.path_and_query.starts_with("/v1/chat")));
    assert_eq!(app.key_json(id).await["usage_count"], 3);
    let (status, _) = read(get("/v1/usage", "not-a-key").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let rows = app.logs_of(id).await;
    assert!(rows
        .iter()
        .any(|r| r["endpoint"] == "/v1/usage" && r["http_status"] == 200));
}

#[tokio::test]
async fn the_cli_sets_and_shows_limits_and_export_import_carries_them() {
    let app = spawn_app().await;
    let out = crate::cli::ok(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "cli",
            "--rate-limit-window",
            "10",
            "--rate-limit-requests",
            "5",
            "--daily-cost-limit",
            "2.5",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["rate_limit_requests"], 5);
    let id_text = id.to_string();
    crate::cli::ok(
        &app,
        &["keys", "edit", &id_text, "--concurrency-limit", "3"],
    );
    let shown = crate::cli::ok(&app, &["keys", "show", &id_text]);
    for line in [
        "rate_limit_window  10 min",
        "rate_limit_requests 5",
        "concurrency_limit  3",
        "daily_cost_limit   $2.5",
        "token_limit        none",
    ] {
        assert!(shown.contains(line), "{line:?} in:\n{shown}");
    }
    let error = crate::cli::fails(&app, &["keys", "edit", &id_text, "--concurrency-limit=-2"]);
    assert!(error.contains("concurrency_limit"), "{error}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    crate::cli::ok(
        &app,
        &["data", "export", "--output", file.to_str().unwrap()],
    );
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let key = &export["data"]["apikeys"][0];
    assert_eq!(key["rate_limit_window"], 10);
    assert_eq!(key["concurrency_limit"], 3);
    assert_eq!(key["daily_cost_limit"], 2.5);
    let fresh = spawn_app().await;
    crate::cli::ok(
        &fresh,
        &["data", "import", "--input", file.to_str().unwrap()],
    );
    let imported = fresh.key_json(id).await;
    for field in [
        "rate_limit_window",
        "rate_limit_requests",
        "concurrency_limit",
    ] {
        assert_eq!(imported[field], key[field], "{field}");
    }
}

#[tokio::test]
async fn the_largest_limits_are_stored_exactly() {
    // Found by schemathesis: a count past 2^53 bound as REAL came back undecodable (a 500).
    let app = spawn_app().await;
    let (id, _) = app
        .create_key(
            json!({"name": "big", "token_limit": i64::MAX, "rate_limit_window": 1,
            "rate_limit_requests": 9_007_199_254_740_993_i64, "total_cost_limit": 1e12}),
        )
        .await;
    let key = app.key_json(id).await;
    assert_eq!(key["token_limit"], i64::MAX);
    assert_eq!(key["rate_limit_requests"], 9_007_199_254_740_993_i64);
    let (status, key) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"concurrency_limit": i64::MAX}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["concurrency_limit"], i64::MAX);
}
