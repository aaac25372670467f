//! `GET /metrics` through the real server: admin auth or its own listener, the per-request
//! series the call-log writer aggregates, the bounds on labels, and no secret in it.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// The exposition's samples by series (`name{labels}` as written) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().expect("a number"),
            };
            (series.to_string(), value)
        })
        .collect()
}

/// The metrics text, read with the admin token after every record so far was written.
pub(crate) async fn scrape(app: &TestApp) -> String {
    app.flush().await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

fn requests(route: &str, class: &str, model: &str) -> String {
    format!(
        "keygate_requests_total{{route=\"{route}\",status_class=\"{class}\",model=\"{model}\"}}"
    )
}

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn metrics_count_requests_refusals_tokens_and_times_and_show_no_secret() {
    let app = spawn_app().await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let (_, key) = app.new_key().await;
    let (_, limited) = app
        .create_key(json!({"name": "l", "rate_limit_window": 1, "rate_limit_requests": 1}))
        .await;
    let (_, restricted) = app
        .create_key(json!({"name": "r", "allowed_models": ["gpt-4o-mini"]}))
        .await;
    // Relayed: 3 answered 200 (one priced model), 1 upstream 500.
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);
    assert_eq!(app.chat_model(&limited, "gpt-test").await.0, StatusCode::OK);
    assert_eq!(
        app.chat_model(&key, "gpt-fail").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Refused by keygate: 401, 429 (limit), 403 (restriction), 405, 400 (path).
    let (status, _) = app.chat_model("kg-not-a-real-key", "gpt-test").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.chat_model(&limited, "gpt-test").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.chat_model(&restricted, "gpt-test").await.0,
        StatusCode::FORBIDDEN
    );
    let put = app
        .client
        .put(app.url(CHAT))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let dotted = app
        .client
        .get(app.url("/v1//chat/completions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(dotted.status(), StatusCode::BAD_REQUEST);
    let listed = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);

    let text = scrape(&app).await;
    let s = samples(&text);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-4o-mini")), 2.0);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-test")), 1.0);
    // A model that never answered successfully gets no label of its own.
    assert_eq!(value(&s, &requests(CHAT, "5xx", "other")), 1.0);
    // The 401 and 405 are refused before the body is read: no model; the 403 and 429 name one
    // that answered successfully before.
    assert_eq!(value(&s, &requests(CHAT, "4xx", "none")), 2.0, "{text}");
    assert_eq!(value(&s, &requests(CHAT, "4xx", "gpt-test")), 2.0, "{text}");
    assert_eq!(value(&s, &requests("other", "4xx", "none")), 1.0, "{text}");
    assert_eq!(value(&s, &requests("/v1/models", "2xx", "none")), 1.0);

    let refusal = |labels: &str| format!("keygate_refusals_total{{{labels}}}");
    assert_eq!(value(&s, &refusal("reason=\"invalid_key\"")), 1.0);
    assert_eq!(
        value(
            &s,
            &refusal("reason=\"limit\",limit=\"rate_limit_requests\"")
        ),
        1.0
    );
    assert_eq!(value(&s, &refusal("reason=\"restriction\"")), 1.0);
    assert_eq!(value(&s, &refusal("reason=\"method_not_allowed\"")), 1.0);
    assert_eq!(value(&s, &refusal("reason=\"bad_path\"")), 1.0);
    // The upstream's own 500 is relayed, not a refusal.
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("keygate_refusals_total"))
            .count(),
        5,
        "{text}"
    );

    // The mock answers 5 prompt and 7 completion tokens.
    let tokens = |model: &str, kind: &str| {
        format!("keygate_tokens_total{{model=\"{model}\",kind=\"{kind}\"}}")
    };
    assert_eq!(value(&s, &tokens("gpt-4o-mini", "prompt")), 10.0);
    assert_eq!(value(&s, &tokens("gpt-4o-mini", "completion")), 14.0);
    assert_eq!(value(&s, &tokens("gpt-test", "completion")), 7.0);
    // Cost: what the call log recorded.
    let (_, logs) = app.get("/api/api-logs?page_size=200").await;
    let rows = logs["items"].as_array().unwrap();
    let logged_cost: f64 = rows
        .iter()
        .filter(|row| row["model"] == "gpt-4o-mini")
        .map(|row| row["cost"].as_f64().unwrap())
        .sum();
    assert!(logged_cost > 0.0);
    let cost = value(&s, "keygate_cost_usd_total{model=\"gpt-4o-mini\"}");
    assert!(
        (cost - logged_cost).abs() < 1e-12,
        "{cost} vs {logged_cost}"
    );

    // Every row timed; the upstream's time only for the 4 calls that went upstream and the
    // model list.
    let all = rows.len() as f64;
    assert_eq!(all, 10.0);
    assert_eq!(value(&s, "keygate_overhead_seconds_count"), all);
    assert_eq!(
        value(&s, "keygate_overhead_seconds_bucket{le=\"+Inf\"}"),
        all
    );
    assert_eq!(value(&s, "keygate_upstream_headers_seconds_count"), 5.0);
    assert_eq!(value(&s, "keygate_request_duration_seconds_count"), all);
    assert!(value(&s, "keygate_upstream_headers_seconds_sum") > 0.0);

    // The call-log writer, the key cache, the upstream pool.
    assert_eq!(value(&s, "keygate_call_log_rows_written_total"), all);
    assert_eq!(value(&s, "keygate_call_log_queue_rows"), 0.0);
    assert_eq!(value(&s, "keygate_call_log_write_failures_total"), 0.0);
    assert!(value(&s, "keygate_call_log_batch_write_seconds_count") >= 1.0);
    let hits = value(&s, "keygate_key_cache_lookups_total{result=\"hit\"}");
    let misses = value(&s, "keygate_key_cache_lookups_total{result=\"miss\"}");
    assert!(misses >= 3.0 && hits + misses >= 9.0, "{hits} {misses}");
    assert!(value(&s, "keygate_upstream_connections_open") >= 1.0);
    assert!(value(&s, "keygate_upstream_connections_idle") >= 1.0);
    assert_eq!(value(&s, "keygate_upstream_connections_max"), 1024.0);
    assert!(value(&s, "keygate_client_connections_open") >= 1.0);

    // Every family has its HELP and TYPE, and names carry the keygate_ prefix.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.starts_with("keygate_"), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
    // No secret, and no key id unless asked for.
    for secret in [ADMIN_TOKEN, UPSTREAM_KEY, &key, &limited, &restricted] {
        assert!(!text.contains(secret), "a secret in /metrics");
    }
    assert!(!text.contains("key_id"));
}

#[tokio::test]
async fn per_key_series_only_when_enabled_and_models_past_the_bound_are_other() {
    let app = spawn_app_with(&["--metrics-per-key", "true", "--metrics-models", "1"]).await;
    let (id, key) = app.new_key().await;
    let (other_id, other) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);
    assert_eq!(app.chat_model(&other, "gpt-test").await.0, StatusCode::OK);
    let text = scrape(&app).await;
    let s = samples(&text);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-test")), 2.0);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "other")), 1.0, "{text}");
    assert!(!text.contains("gpt-4o-mini"));
    let per_key =
        |id: i64| format!("keygate_key_requests_total{{key_id=\"{id}\",status_class=\"2xx\"}}");
    assert_eq!(value(&s, &per_key(id)), 2.0);
    assert_eq!(value(&s, &per_key(other_id)), 1.0);
    assert_eq!(
        value(
            &s,
            &format!("keygate_key_tokens_total{{key_id=\"{id}\",kind=\"prompt\"}}")
        ),
        10.0
    );
    assert!(s.contains_key(&format!("keygate_key_cost_usd_total{{key_id=\"{id}\"}}")));
    for secret in [ADMIN_TOKEN, UPSTREAM_KEY, &key, &other] {
        assert!(!text.contains(secret), "a secret in /metrics");
    }
}

#[tokio::test]
async fn metrics_listen_serves_only_metrics_without_auth() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app_with(&["--metrics-listen", &listen]).await;
    let (_, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    app.flush().await;
    let own = format!("http://{listen}");
    let response = app
        .client
        .get(format!("{own}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let s = samples(&text);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-test")), 1.0);
    for path in ["/healthz", "/api/api-keys", "/v1/models", "/"] {
        let other = app
            .client
            .get(format!("{own}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The main listener keeps it behind the admin token.
    let main = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), StatusCode::UNAUTHORIZED);
    assert!(!text.contains(&key) && !text.contains(UPSTREAM_KEY) && !text.contains(ADMIN_TOKEN));
}

#[tokio::test]
async fn a_busy_metrics_address_stops_the_start_naming_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let app = spawn_app_with(&["--metrics-listen", &listen]).await;
    let err = keygate::serve(
        app.state.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("an error");
    assert!(
        err.to_string()
            .starts_with("KEYGATE_METRICS_LISTEN: cannot listen on"),
        "{err}"
    );
}

#[tokio::test]
async fn refusals_for_a_large_body_and_an_unreachable_upstream_are_counted() {
    // An upstream address nobody listens on.
    let dead = MockUpstream {
        addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        mock: Mock::default(),
    };
    let app = spawn_app_against(dead, &["--max-body-bytes", "200"]).await;
    let (_, key) = app.new_key().await;
    let big =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(500)}]});
    assert_eq!(
        app.chat(&key, big).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        app.chat_model(&key, "gpt-test").await.0,
        StatusCode::BAD_GATEWAY
    );
    let text = scrape(&app).await;
    let s = samples(&text);
    assert_eq!(
        value(&s, "keygate_refusals_total{reason=\"body_too_large\"}"),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "keygate_refusals_total{reason=\"upstream_unreachable\"}"
        ),
        1.0
    );
    assert_eq!(value(&s, &requests(CHAT, "5xx", "other")), 1.0);
    // The failed connect is the upstream's time; the 413 never went there.
    assert_eq!(value(&s, "keygate_upstream_headers_seconds_count"), 1.0);
    assert_eq!(value(&s, "keygate_overhead_seconds_count"), 2.0);
    assert_eq!(value(&s, "keygate_upstream_connections_open"), 0.0);
}

#[tokio::test]
async fn client_connections_and_refusals_at_the_cap_are_counted() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app_with(&["--max-connections", "1", "--metrics-listen", &listen]).await;
    // One connection holds the only place; the next is refused with 503.
    let _held = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    // Read without sending: keygate answers 503 at once and closes.
    let mut refused = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut refused, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let text = app
        .client
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = samples(&text);
    assert_eq!(value(&s, "keygate_client_connections_open"), 1.0);
    assert_eq!(value(&s, "keygate_client_connections_refused_total"), 1.0);
}

#[tokio::test]
async fn a_call_log_that_cannot_be_written_shows_in_the_metrics_until_it_recovers() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app_with(&["--log-busy-timeout", "100ms", "--metrics-listen", &listen]).await;
    let (_, key) = app.new_key().await;
    let read = || async {
        let text = app
            .client
            .get(format!("http://{listen}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        samples(&text)
    };
    // Another process holds the write lock: the writer's batches fail and are retried.
    let other = rusqlite::Connection::open(&app.db_path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, StatusCode::OK);
    let started = std::time::Instant::now();
    let s = loop {
        let s = read().await;
        if value(&s, "keygate_call_log_failing") == 1.0 {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(value(&s, "keygate_call_log_write_failures_total") >= 1.0);
    assert_eq!(value(&s, "keygate_call_log_queue_rows"), 1.0);
    assert_eq!(value(&s, "keygate_call_log_rows_written_total"), 0.0);
    // The request was counted as it was taken, before it could be written.
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-test")), 1.0);

    other.execute_batch("COMMIT").unwrap();
    app.flush().await;
    let s = read().await;
    assert_eq!(value(&s, "keygate_call_log_failing"), 0.0);
    assert_eq!(value(&s, "keygate_call_log_queue_rows"), 0.0);
    assert_eq!(value(&s, "keygate_call_log_rows_written_total"), 1.0);
    assert_eq!(value(&s, &requests(CHAT, "2xx", "gpt-test")), 1.0);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_upstream_answers_is_counted_as_client_left() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    let body = r#"{"model":"gpt-slow-1s","messages":[]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
    // Gone once the request is upstream (the mock answers after 1.5 s).
    app.upstream.wait_until_seen(1).await;
    drop(socket);
    let started = std::time::Instant::now();
    let s = loop {
        let s = samples(&scrape(&app).await);
        if s.contains_key("keygate_refusals_total{reason=\"client_left\"}") {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        value(&s, "keygate_refusals_total{reason=\"client_left\"}"),
        1.0
    );
    assert_eq!(value(&s, &requests(CHAT, "4xx", "other")), 1.0);
    // No answer was given: no overhead observed; the upstream never answered its head.
    assert_eq!(value(&s, "keygate_overhead_seconds_count"), 0.0);
    assert_eq!(value(&s, "keygate_upstream_headers_seconds_count"), 0.0);
}
