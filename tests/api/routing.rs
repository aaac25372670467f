//! Several upstreams (SPEC §12): routing by kind and model, priority, failover only when the
//! request cannot have been served, cooldown, model_map, the Anthropic upstream's credential.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Adds an upstream as an admin would, and returns its id.
pub async fn add_upstream(app: &TestApp, spec: Value) -> i64 {
    let (status, body) = app.post("/api/upstreams", spec).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

/// A fake upstream and the requests it got.
pub struct Fixed {
    /// Its base URL, OpenAI-style (`…/v1`).
    pub url: String,
    pub hits: Arc<AtomicUsize>,
}

impl Fixed {
    /// Its base URL, Anthropic-style (no `/v1`).
    pub fn root(&self) -> String {
        self.url.trim_end_matches("/v1").to_string()
    }
}

/// An upstream that reads each request whole, counts it, writes `answer` (raw bytes, framing
/// and all), then closes the connection, or with `hang` keeps it open for 30 s.
pub async fn spawn_raw(answer: String, hang: bool) -> Fixed {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (hits, answer) = (counted.clone(), answer.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                // The head, then the body its Content-Length announces.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let l = l.to_ascii_lowercase();
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let _ = socket.write_all(answer.as_bytes()).await;
                if hang {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    Fixed { url, hits }
}

/// An upstream that answers every request with `status` and the JSON `body` (extra header
/// lines in `headers`). `status` 0: it never answers.
pub async fn spawn_fixed(status: u16, headers: &'static str, body: &'static str) -> Fixed {
    if status == 0 {
        return spawn_raw(String::new(), true).await;
    }
    spawn_raw(
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        ),
        false,
    )
    .await
}

/// A URL where nothing listens.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}/v1", free_port())
}

async fn chat(app: &TestApp, key: &str, model: &str) -> (StatusCode, Value) {
    read(app.chat(key, json!({"model": model, "messages": []})).await).await
}

async fn last_row(app: &TestApp, key_id: i64) -> Value {
    app.flush().await;
    app.logs_of(key_id).await.into_iter().next().unwrap()
}

#[tokio::test]
async fn routes_by_model_then_priority_and_falls_back_to_the_default() {
    let app = spawn_app().await;
    let (a, b) = (spawn_mock_upstream().await, spawn_mock_upstream().await);
    add_upstream(&app, json!({"name": "a", "kind": "openai", "base_url": format!("http://{}/v1", a.addr), "api_key": "sk-upstream-a-0000", "models": ["gpt-a*"]})).await;
    add_upstream(&app, json!({"name": "b", "kind": "openai", "base_url": format!("http://{}/v1", b.addr), "api_key": "sk-upstream-b-0000", "models": ["gpt-b", "gpt-a1"], "priority": 5})).await;
    let (_, key) = app.new_key().await;
    for model in ["gpt-a1", "gpt-a2", "gpt-b", "gpt-other"] {
        let (status, body) = chat(&app, &key, model).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let models = |seen: Vec<Seen>| -> Vec<String> {
        seen.iter()
            .map(|s| {
                serde_json::from_slice::<Value>(&s.body).unwrap()["model"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    // `gpt-a1` is served by both: priority 0 (`a`) first.
    assert_eq!(models(a.seen()), ["gpt-a1", "gpt-a2"]);
    assert_eq!(models(b.seen()), ["gpt-b"]);
    assert_eq!(models(app.upstream.seen()), ["gpt-other"]);
    // A model's own path is routed by that model.
    let response = app
        .client
        .get(app.url("/v1/models/gpt-b"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(b.seen().last().unwrap().path_and_query, "/v1/models/gpt-b");
    // Each with its own credential.
    assert_eq!(
        a.seen()[0].headers["authorization"],
        "Bearer sk-upstream-a-0000"
    );
    assert_eq!(
        b.seen()[0].headers["authorization"],
        "Bearer sk-upstream-b-0000"
    );
}

#[tokio::test]
async fn a_503_fails_over_to_the_next_upstream_with_one_row() {
    let app = spawn_app().await;
    let down = spawn_fixed(503, "", r#"{"error":{"message":"overloaded"}}"#).await;
    let up = spawn_mock_upstream().await;
    add_upstream(
        &app,
        json!({"name": "down", "kind": "openai", "base_url": down.url, "models": ["gpt-x"]}),
    )
    .await;
    let up_id = add_upstream(&app, json!({"name": "up", "kind": "openai", "base_url": format!("http://{}/v1", up.addr), "models": ["gpt-x"], "priority": 1})).await;
    let (key_id, key) = app.new_key().await;
    let (status, body) = chat(&app, &key, "gpt-x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((down.hits.load(Ordering::SeqCst), up.seen().len()), (1, 1));
    let row = last_row(&app, key_id).await;
    assert_eq!(row["status"], "success");
    assert_eq!(row["upstream_id"], up_id);
    assert_eq!(row["attempts"], 2);
    let error = row["error_message"].as_str().unwrap();
    assert!(
        error.contains("upstream `down` failed: HTTP 503"),
        "{error}"
    );
    assert_eq!(app.logs_of(key_id).await.len(), 1);
}

#[tokio::test]
async fn a_dead_upstream_fails_over_and_is_cooled_then_skipped_until_its_cooldown_ends() {
    let app = spawn_app().await;
    let down = spawn_fixed(500, "", "{}").await;
    let down_id = add_upstream(
        &app,
        json!({"name": "down", "kind": "openai", "base_url": down.url}),
    )
    .await;
    let (_, key) = app.new_key().await;
    for _ in 0..3 {
        let (status, _) = chat(&app, &key, "gpt-test").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(down.hits.load(Ordering::SeqCst), 3);
    let health = app.state.upstreams.health(down_id);
    assert_eq!(health.state, "cooling");
    assert_eq!(health.last_error.as_deref(), Some("HTTP 500"));
    // Cooling: skipped, the default answers alone.
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(down.hits.load(Ordering::SeqCst), 3);
    // Its cooldown over, it is tried again, fails, and cools for twice as long.
    app.clock.advance(time::Duration::seconds(31));
    chat(&app, &key, "gpt-test").await;
    assert_eq!(down.hits.load(Ordering::SeqCst), 4);
    let until = app.state.upstreams.health(down_id).cooling_until.unwrap();
    assert_eq!(until - app.clock.now_ms(), 60_000);
    // Metrics name it.
    let metrics = crate::metrics::scrape(&app).await;
    for line in [
        "keygate_upstream_requests_total{upstream=\"down\"} 4",
        "keygate_upstream_failures_total{upstream=\"down\"} 4",
        "keygate_upstream_cooldowns_total{upstream=\"down\"} 2",
        "keygate_upstream_cooling{upstream=\"down\"} 1",
        "keygate_upstream_requests_total{upstream=\"default\"} 5",
        "keygate_upstream_cooling{upstream=\"default\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in {metrics}"
        );
    }
    // A dead port (connect refused) fails over too.
    let dead = add_upstream(
        &app,
        json!({"name": "dead", "kind": "openai", "base_url": dead_url(), "priority": 3}),
    )
    .await;
    app.clock.advance(time::Duration::minutes(5));
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::OK);
    assert!(app
        .state
        .upstreams
        .health(dead)
        .last_error
        .unwrap()
        .contains("connect"));
}

#[tokio::test]
async fn a_400_is_relayed_not_retried() {
    let app = spawn_app().await;
    let refusing = spawn_fixed(400, "", r#"{"error":{"message":"bad"}}"#).await;
    add_upstream(
        &app,
        json!({"name": "r", "kind": "openai", "base_url": refusing.url}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let (status, body) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["message"], "bad");
    assert!(
        app.upstream.seen().is_empty(),
        "the default got the request"
    );
    assert_eq!(last_row(&app, key_id).await["attempts"], 1);
}

#[tokio::test]
async fn a_timed_out_post_reaches_no_second_upstream() {
    let app = spawn_app().await;
    let hanging = spawn_fixed(0, "", "").await;
    add_upstream(
        &app,
        json!({"name": "hangs", "kind": "openai", "base_url": hanging.url, "timeout_seconds": 1}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(hanging.hits.load(Ordering::SeqCst), 1);
    assert!(
        app.upstream.seen().is_empty(),
        "a timed-out request was sent again"
    );
    let row = last_row(&app, key_id).await;
    assert_eq!(
        (row["http_status"].as_i64(), row["attempts"].as_i64()),
        (Some(504), Some(1))
    );
}

#[tokio::test]
async fn at_most_the_configured_number_of_upstreams_are_tried() {
    let app = spawn_app_with(&["--upstream-attempts", "2"]).await;
    let mut failing = Vec::new();
    for (i, name) in ["f1", "f2", "f3"].iter().enumerate() {
        let f = spawn_fixed(502, "", "{}").await;
        add_upstream(
            &app,
            json!({"name": name, "kind": "openai", "base_url": f.url, "priority": i}),
        )
        .await;
        failing.push(f);
    }
    let (key_id, key) = app.new_key().await;
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let hits: Vec<usize> = failing
        .iter()
        .map(|f| f.hits.load(Ordering::SeqCst))
        .collect();
    assert_eq!(hits, [1, 1, 0]);
    assert!(app.upstream.seen().is_empty());
    let row = last_row(&app, key_id).await;
    assert_eq!(row["attempts"], 2);
    assert!(row["error_message"]
        .as_str()
        .unwrap()
        .starts_with("upstream `f1` failed: HTTP 502"));
}

#[tokio::test]
async fn a_429_with_retry_after_cools_for_that_long() {
    let app = spawn_app().await;
    let limited = spawn_fixed(
        429,
        "retry-after: 120\r\n",
        r#"{"error":{"message":"slow down"}}"#,
    )
    .await;
    let id = add_upstream(
        &app,
        json!({"name": "limited", "kind": "openai", "base_url": limited.url}),
    )
    .await;
    let (_, key) = app.new_key().await;
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::OK);
    let health = app.state.upstreams.health(id);
    assert_eq!(health.cooling_until, Some(app.clock.now_ms() + 120_000));
}

#[tokio::test]
async fn when_every_upstream_cools_the_one_ending_first_is_tried() {
    let app = spawn_app().await;
    let a = spawn_fixed(429, "retry-after: 100\r\n", "{}").await;
    let b = spawn_fixed(429, "retry-after: 50\r\n", "{}").await;
    // Anthropic's kind: the built-in default (OpenAI's) is no candidate.
    add_upstream(
        &app,
        json!({"name": "a", "kind": "anthropic", "base_url": a.url}),
    )
    .await;
    add_upstream(
        &app,
        json!({"name": "b", "kind": "anthropic", "base_url": b.url, "priority": 1}),
    )
    .await;
    let (_, key) = app.new_key().await;
    let messages = || async {
        let response = app
            .client
            .post(app.url("/v1/messages"))
            .header("x-api-key", &key)
            .json(&json!({"model": "claude-x", "max_tokens": 1, "messages": []}))
            .send()
            .await
            .unwrap();
        response.status()
    };
    // Both fail and cool; the last one's 429 is the answer.
    assert_eq!(messages().await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)),
        (1, 1)
    );
    // Both cooling: only `b`, whose cooldown ends first, is tried.
    assert_eq!(messages().await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)),
        (1, 2)
    );
}

#[tokio::test]
async fn model_map_renames_the_model_sent_upstream() {
    let app = spawn_app().await;
    let up = spawn_mock_upstream().await;
    add_upstream(&app, json!({"name": "azure", "kind": "openai", "base_url": format!("http://{}/v1", up.addr), "models": ["gpt-4o"], "model_map": {"gpt-4o": "my-gpt4o-deployment"}})).await;
    let (key_id, key) = app.new_key().await;
    let (status, _) = read(
        app.chat(
            &key,
            json!({"model": "gpt-4o", "stream": true, "messages": []}),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sent: Value = serde_json::from_slice(&up.seen()[0].body).unwrap();
    assert_eq!(sent["model"], "my-gpt4o-deployment");
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    let row = last_row(&app, key_id).await;
    assert_eq!(row["model"], "gpt-4o");
    assert_eq!(row["total_tokens"], STREAMED_USAGE.2);
}

#[tokio::test]
async fn anthropic_routes_go_to_anthropic_upstreams_with_their_credential() {
    let app = spawn_app().await;
    let (key_id, key) = app.new_key().await;
    // None configured: a 404 in Anthropic's envelope, with a row.
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-sonnet-4-5"),
        "{body}"
    );
    assert_eq!(last_row(&app, key_id).await["http_status"], 404);

    let claude = spawn_mock_upstream().await;
    add_upstream(&app, json!({"name": "claude", "kind": "anthropic", "base_url": format!("http://{}", claude.addr), "api_key": "sk-ant-upstream-0000"})).await;
    let response = app
        .client
        .post(app.url("/v1/messages?beta=true"))
        .header("authorization", format!("Bearer {key}"))
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = &claude.seen()[0];
    assert_eq!(seen.path_and_query, "/v1/messages?beta=true");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-upstream-0000");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the client's key went upstream"
    );
    assert!(app.upstream.seen().is_empty());
}

#[tokio::test]
async fn v1_models_lists_what_the_key_can_reach_in_either_shape() {
    let app = spawn_app().await;
    let claude = spawn_mock_upstream().await;
    add_upstream(&app, json!({"name": "a", "kind": "openai", "base_url": dead_url(), "models": ["gpt-a", "gpt-b"]})).await;
    add_upstream(&app, json!({"name": "claude", "kind": "anthropic", "base_url": format!("http://{}", claude.addr)})).await;
    let (key_id, key) = app.new_key().await;
    let list = |anthropic: bool, key: String| {
        let mut request = app.client.get(app.url("/v1/models")).bearer_auth(key);
        if anthropic {
            request = request.header("anthropic-version", "2023-06-01");
        }
        async move { read(request.send().await.unwrap()).await }
    };
    let (status, body) = list(false, key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<(&str, &str)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["owned_by"].as_str().unwrap()))
        .collect();
    // `a` lists its names (never asked: its address is dead); the default is asked.
    assert_eq!(
        ids,
        [("gpt-a", "a"), ("gpt-b", "a"), ("gpt-test", "default")]
    );
    assert_eq!(body["object"], "list");
    // An upstream's own list is kept 5 minutes.
    let listing = spawn_fixed(
        200,
        "",
        r#"{"object":"list","data":[{"id":"m1"},{"id":"x9"}]}"#,
    )
    .await;
    add_upstream(
        &app,
        json!({"name": "listing", "kind": "openai", "base_url": listing.url, "models": ["m*"]}),
    )
    .await;
    let (_, body) = list(false, key.clone()).await;
    assert_eq!(body["data"][2]["id"], "m1", "{body}");
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        4,
        "its pattern keeps m1 only: {body}"
    );
    list(false, key.clone()).await;
    assert_eq!(listing.hits.load(Ordering::SeqCst), 1);
    app.clock.advance(time::Duration::minutes(6));
    list(false, key.clone()).await;
    assert_eq!(listing.hits.load(Ordering::SeqCst), 2);
    let (status, body) = list(true, key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["data"][0]["id"], "gpt-test");
    assert_eq!(body["has_more"], false);
    assert_eq!(body["first_id"], "gpt-test");
    // A key restricted to some models sees only those.
    let (_, narrow) = app
        .create_key(json!({"name": "narrow", "allowed_models": ["gpt-b"]}))
        .await;
    let (_, body) = list(false, narrow).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["id"], "gpt-b");
    app.flush().await;
    let rows = app.logs_of(key_id).await;
    assert_eq!(rows.len(), 5);
    assert!(rows
        .iter()
        .all(|r| r["status"] == "success" && r["endpoint"] == "/v1/models"));
}

#[tokio::test]
async fn keys_bound_to_upstreams_and_kinds_reach_only_those() {
    let app = spawn_app().await;
    let (a, b) = (spawn_mock_upstream().await, spawn_mock_upstream().await);
    let a_id = add_upstream(&app, json!({"name": "a", "kind": "openai", "base_url": format!("http://{}/v1", a.addr), "models": ["gpt-a"]})).await;
    let b_id = add_upstream(&app, json!({"name": "b", "kind": "openai", "base_url": format!("http://{}/v1", b.addr), "models": ["gpt-b"]})).await;
    let claude = add_upstream(
        &app,
        json!({"name": "claude", "kind": "anthropic", "base_url": format!("http://{}", a.addr)}),
    )
    .await;
    let (bound_id, bound) = app
        .create_key(json!({"name": "b only", "upstream_ids": [b_id]}))
        .await;
    // Its upstream serves the model: relayed there.
    let (status, _) = chat(&app, &bound, "gpt-b").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.seen().len(), 1);
    // Only `a` (and the default, which it is not bound to) serve this one: 404, nothing sent.
    let (status, body) = chat(&app, &bound, "gpt-a").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("bound to"),
        "{body}"
    );
    assert!(a.seen().is_empty() && app.upstream.seen().is_empty());
    let row = last_row(&app, bound_id).await;
    assert_eq!(
        (row["http_status"].as_i64(), row["attempts"].as_i64()),
        (Some(404), Some(0))
    );
    // Its model list names only what it can reach.
    let (_, list) = read(
        app.client
            .get(app.url("/v1/models"))
            .bearer_auth(&bound)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["id"], "gpt-b");
    // Bound to the built-in upstream (id 0): the default answers every model.
    let (_, builtin) = app
        .create_key(json!({"name": "default only", "upstream_ids": [0]}))
        .await;
    let (status, _) = chat(&app, &builtin, "gpt-a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((a.seen().len(), app.upstream.seen().len()), (0, 1));

    // A key permitted only OpenAI's API: 403 on /v1/messages, in Anthropic's envelope.
    let (openai_only_id, openai_only) = app
        .create_key(json!({"name": "openai only", "permissions": ["openai"]}))
        .await;
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &openai_only)
        .json(&json!({"model": "claude-x", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("permissions"));
    assert!(a.seen().is_empty());
    let row = last_row(&app, openai_only_id).await;
    assert_eq!(row["http_status"], 403);
    assert!(row["upstream_id"].is_null());
    // …and its Anthropic-shaped model list is empty, while OpenAI's is not.
    let (_, list) = read(
        app.client
            .get(app.url("/v1/models"))
            .bearer_auth(&openai_only)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["data"], json!([]));
    let (status, _) = chat(&app, &openai_only, "gpt-a").await;
    assert_eq!(status, StatusCode::OK);
    let _ = (a_id, claude);
}

#[tokio::test]
async fn an_upstream_test_asks_its_model_list_and_never_shows_its_credential() {
    let app = spawn_app().await;
    let good = spawn_mock_upstream().await;
    let good_id = add_upstream(&app, json!({"name": "good", "kind": "openai", "base_url": format!("http://{}/v1", good.addr), "api_key": "sk-good-upstream-0000"})).await;
    let (status, probe) = app
        .post(&format!("/api/upstreams/{good_id}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{probe}");
    assert_eq!(
        (
            probe["ok"].as_bool(),
            probe["status"].as_i64(),
            probe["models"].as_i64()
        ),
        (Some(true), Some(200), Some(1))
    );
    assert!(probe["latency_ms"].is_u64());
    // An upstream that echoes its credential in a 401: redacted.
    let secret = "sk-echoed-upstream-credential-1234";
    let echo = spawn_fixed(
        401,
        "",
        r#"{"error":{"message":"Incorrect API key provided: sk-echoed-upstream-credential-1234"}}"#,
    )
    .await;
    let echo_id = add_upstream(
        &app,
        json!({"name": "echo", "kind": "openai", "base_url": echo.url, "api_key": secret}),
    )
    .await;
    let (status, probe) = app
        .post(&format!("/api/upstreams/{echo_id}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (probe["ok"].as_bool(), probe["status"].as_i64()),
        (Some(false), Some(401))
    );
    assert!(
        probe["error"].as_str().unwrap().contains("HTTP 401"),
        "{probe}"
    );
    assert!(!probe.to_string().contains(secret), "{probe}");
    // Nothing listening; the built-in one; an unknown id.
    let dead = add_upstream(
        &app,
        json!({"name": "dead", "kind": "openai", "base_url": dead_url()}),
    )
    .await;
    let (_, probe) = app
        .post(&format!("/api/upstreams/{dead}/test"), json!({}))
        .await;
    assert_eq!(probe["ok"], false);
    assert!(probe["status"].is_null());
    assert!(
        probe["error"].as_str().unwrap().contains("connect"),
        "{probe}"
    );
    let (_, probe) = app.post("/api/upstreams/0/test", json!({})).await;
    assert_eq!(probe["ok"], true, "{probe}");
    let (status, _) = app.post("/api/upstreams/999/test", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The CLI probes from its own process (not blocking this runtime, which serves the mocks).
    let app = Arc::new(app);
    let cli = |args: &'static [&'static str], ok: bool| {
        let app = app.clone();
        tokio::task::spawn_blocking(move || {
            if ok {
                crate::cli::ok(&app, args)
            } else {
                crate::cli::fails(&app, args)
            }
        })
    };
    let out = cli(&["upstreams", "test", "good"], true).await.unwrap();
    assert!(out.contains("Upstream 'good' answered HTTP 200"), "{out}");
    let out = cli(&["upstreams", "test", "echo", "--json"], false)
        .await
        .unwrap();
    assert!(out.contains("HTTP 401") && !out.contains(secret), "{out}");
}

#[tokio::test]
async fn an_answer_broken_after_its_first_bytes_is_not_sent_elsewhere() {
    let app = spawn_app().await;
    // 200 with a body it cuts short, then it closes the connection.
    let cut = spawn_raw(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"cut".into(),
        false,
    )
    .await;
    add_upstream(
        &app,
        json!({"name": "cut", "kind": "openai", "base_url": cut.url}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let sent = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await;
    // The client sees the answer break (at its head or in its body, as hyper flushes it).
    match sent {
        Ok(response) => assert!(response.bytes().await.is_err(), "a cut body arrived whole"),
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }
    assert_eq!(cut.hits.load(Ordering::SeqCst), 1);
    assert!(
        app.upstream.seen().is_empty(),
        "sent to a second upstream after bytes reached the client"
    );
    let row = last_row(&app, key_id).await;
    assert_eq!(
        (row["status"].as_str(), row["attempts"].as_i64()),
        (Some("error"), Some(1))
    );
}

#[tokio::test]
async fn a_body_without_a_model_is_routed_by_its_route_kind_alone() {
    let app = spawn_app().await;
    let up = spawn_mock_upstream().await;
    add_upstream(&app, json!({"name": "listed", "kind": "openai", "base_url": format!("http://{}/v1", up.addr), "models": ["gpt-x", "o*"]})).await;
    let (_, key) = app.new_key().await;
    for body in [
        json!({"messages": []}),
        json!({"model": 7}),
        json!("not an object"),
    ] {
        let (status, answer) = read(app.chat(&key, body.clone()).await).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
    }
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The first upstream of the kind took each; the default none.
    assert_eq!(up.seen().len(), 4);
    assert!(app.upstream.seen().is_empty());
}

#[tokio::test]
async fn a_503_that_stalls_before_its_end_is_a_504_and_goes_nowhere_else() {
    let app = spawn_app().await;
    // A 503 whose body stops halfway; the connection stays open.
    let stalls = spawn_raw(
        "HTTP/1.1 503 X\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"error\":".into(),
        true,
    )
    .await;
    let url = stalls.url;
    add_upstream(
        &app,
        json!({"name": "stalls", "kind": "openai", "base_url": url, "timeout_seconds": 1}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let (status, body) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(app.upstream.seen().is_empty(), "sent on after a timeout");
    let row = last_row(&app, key_id).await;
    let error = row["error_message"].as_str().unwrap();
    assert!(
        error.contains("HTTP 503, then upstream timed out"),
        "{error}"
    );
    assert_eq!(row["attempts"], 1);
}

#[tokio::test]
async fn an_upstream_echoing_its_credential_in_a_failure_is_redacted_in_the_row() {
    let app = spawn_app().await;
    let secret = "sk-failing-upstream-credential-5678";
    let echo = spawn_fixed(
        503,
        "",
        r#"{"error":{"message":"overloaded for key sk-failing-upstream-credential-5678"}}"#,
    )
    .await;
    let id = add_upstream(
        &app,
        json!({"name": "echo", "kind": "openai", "base_url": echo.url, "api_key": secret}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::OK, "failed over to the default");
    let row = last_row(&app, key_id).await;
    let error = row["error_message"].as_str().unwrap();
    assert!(
        error.contains("upstream `echo` failed: HTTP 503"),
        "{error}"
    );
    assert!(!error.contains(secret), "{error}");
    // Nor in its status, the API, the metrics or keygate's own log.
    let (_, listed) = app.get("/api/upstreams").await;
    assert!(!listed.to_string().contains(secret));
    assert!(!format!("{:?}", app.state.upstreams.health(id)).contains(secret));
    let metrics = crate::metrics::scrape(&app).await;
    assert!(!metrics.contains(secret));
    assert!(!captured_logs().contains(secret));
}

#[tokio::test]
async fn a_stream_that_reports_an_error_after_its_200_is_a_failed_row() {
    let app = spawn_app().await;
    let events = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let url = spawn_raw(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{events}",
            events.len()
        ),
        false,
    )
    .await
    .root();
    add_upstream(
        &app,
        json!({"name": "claude", "kind": "anthropic", "base_url": url}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-x", "max_tokens": 5, "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("overloaded_error"),
        "the client gets the event as sent: {text}"
    );
    let row = last_row(&app, key_id).await;
    assert_eq!(row["status"], "error", "{row}");
    assert_eq!(row["http_status"], 200);
    assert_eq!(
        row["error_message"],
        "upstream stream ended with an error: Overloaded"
    );
    assert_eq!(
        row["prompt_tokens"], 12,
        "the usage read before the error still counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_whose_connections_all_stay_busy_fails_over() {
    // One connection per upstream; the first request holds the hanging upstream's only one.
    let app = Arc::new(spawn_app_with(&["--upstream-max-connections", "1"]).await);
    let hangs = spawn_fixed(0, "", "").await;
    add_upstream(
        &app,
        json!({"name": "hangs", "kind": "openai", "base_url": hangs.url, "timeout_seconds": 60}),
    )
    .await;
    let (key_id, key) = app.new_key().await;
    let holder = {
        let (app, key) = (app.clone(), key.clone());
        tokio::spawn(async move { chat(&app, &key, "gpt-test").await })
    };
    while hangs.hits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The second waits for a connection (up to 5 s), none frees: it never left, so the next
    // upstream takes it.
    let (status, _) = chat(&app, &key, "gpt-test").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hangs.hits.load(Ordering::SeqCst), 1);
    assert_eq!(app.upstream.seen().len(), 1);
    let row = last_row(&app, key_id).await;
    assert_eq!(row["attempts"], 2);
    assert!(
        row["error_message"]
            .as_str()
            .unwrap()
            .contains("stayed busy"),
        "{row}"
    );
    holder.abort();
}
