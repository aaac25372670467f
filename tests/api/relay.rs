//! The relay: credentials swapped, streaming chunk by chunk, the 401s, 413, 502, 504.

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::confine::raw_request;
use crate::helpers::*;

#[tokio::test]
async fn relays_with_the_upstream_credential_and_never_the_client_key() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions?trace=1"))
        .bearer_auth(&key)
        .header("cookie", "session=client-cookie")
        .header("x-custom", "kept")
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from mock");

    let via_header = app
        .client
        .get(app.url("/v1/models"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 200);

    let seen = app.upstream.seen();
    assert_eq!(
        seen.len(),
        1,
        "GET /v1/models is answered by its own mock route"
    );
    let request = &seen[0];
    assert_eq!(request.path_and_query, "/v1/chat/completions?trace=1");
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    assert!(
        request.headers.get("x-custom").is_none(),
        "only allowlisted headers are forwarded"
    );
    let forwarded: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        forwarded["messages"][0]["content"], "hi",
        "body forwarded intact"
    );
    assert!(request.headers.get("cookie").is_none());
    assert!(request.headers.get("x-api-key").is_none());
    for (_, value) in &request.headers {
        assert!(
            !value.to_str().unwrap_or_default().contains(&key),
            "client key forwarded"
        );
    }

    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 2);
    let chat = logs
        .iter()
        .find(|l| l["endpoint"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(chat["model"], "gpt-test");
    assert_eq!(chat["status"], "success");
    assert_eq!(chat["http_status"], 200);
    assert_eq!(chat["ip_address"], "127.0.0.1");
    assert_eq!(chat["stream"], false);
    assert_eq!(
        (
            chat["prompt_tokens"].as_i64(),
            chat["completion_tokens"].as_i64(),
            chat["total_tokens"].as_i64()
        ),
        (Some(5), Some(7), Some(12))
    );
    assert!(chat["request_size"].as_i64().unwrap() > 20);
    assert!(chat["response_size"].as_i64().unwrap() > 100);
    assert_eq!(chat["error_message"], serde_json::Value::Null);
    let key_json = app.key_json(id).await;
    assert_eq!(key_json["usage_count"], 2);
    assert!(key_json["last_used_at"].is_string());
}

#[tokio::test]
async fn streams_chunk_by_chunk_and_records_streamed_usage() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let response = app
        .chat(&key, json!({"model": "gpt-gated", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    // The upstream holds the rest of the stream until the gate opens: the first chunk must
    // already have arrived, so keygate is not buffering.
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .expect("first chunk forwarded before the stream ended")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    app.upstream.mock.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("\"lo\"") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );

    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["stream"], true);
    assert_eq!(logs[0]["status"], "success");
    assert_eq!(logs[0]["total_tokens"], 7);
    assert_eq!(
        logs[0]["response_size"].as_i64().unwrap() as usize,
        first.len() + rest.len()
    );
}

#[tokio::test]
async fn refused_keys_get_the_exact_401_body() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "k", "expires_days": 1}))
        .await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let no_key = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    let (status, body) = read(no_key).await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
    for presented in ["not-a-uuid", unknown.as_str()] {
        let (status, body) = app.chat_model(presented, "gpt-test").await;
        assert_eq!(
            (status.as_u16(), body.to_string()),
            (401, INVALID_KEY_BODY.to_string())
        );
    }
    // Works, then disabled → 401 on the very next request, then re-enabled.
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    app.patch(&format!("/api/api-keys/{id}"), json!({"is_active": false}))
        .await;
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
    app.patch(&format!("/api/api-keys/{id}"), json!({"is_active": true}))
        .await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    // Expired: the clock passes the expiry; refused at request time, no sweeper needed.
    app.clock.advance(time::Duration::days(1));
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
    assert_eq!(app.key_json(id).await["status"], "expired");

    let logs = app.logs_of(id).await;
    let reasons: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["error_message"].as_str())
        .collect();
    assert_eq!(reasons, ["expired API key", "disabled API key"]);
    let (_, anonymous) = app.get("/api/api-logs?status=error").await;
    let anonymous: Vec<_> = anonymous["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["api_key_id"].is_null())
        .collect();
    assert_eq!(anonymous.len(), 3);
    assert!(anonymous.iter().all(|l| l["http_status"] == 401));
    assert_eq!(
        app.key_json(id).await["usage_count"],
        2,
        "refused requests do not count as usage"
    );
}

#[tokio::test]
async fn revoke_is_in_force_on_the_next_request_and_keeps_the_record() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    let (status, revoked) = app
        .post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
    let (status, _) = app
        .patch(&format!("/api/api-keys/{id}"), json!({"is_active": true}))
        .await;
    assert_eq!(status, 409, "a revoked key cannot be re-enabled");
    assert_eq!(app.logs_of(id).await.len(), 2, "row and logs stay");
}

#[tokio::test]
async fn oversized_body_is_413_and_logged() {
    let app = spawn_app_with(&["--max-body-bytes", "1024"]).await;
    let (id, key) = app.new_key().await;
    let big = "x".repeat(2000);
    let (status, body) = app.chat_model(&key, &big).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"], "Payload Too Large");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("KEYGATE_MAX_BODY_BYTES"));
    // Chunked (no Content-Length) is cut off at the limit too.
    let stream = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(vec![b'x'; 700]),
        Ok(vec![b'y'; 700]),
    ]);
    let chunked = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 2);
    assert!(logs
        .iter()
        .all(|l| l["http_status"] == 413 && l["status"] == "error"));
    assert!(app.upstream.seen().is_empty());
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut upstream = spawn_mock_upstream().await;
    let live_addr = upstream.addr;
    upstream.addr = dead;
    let app = spawn_app_against(upstream, &["--upstream-timeout", "300ms"]).await;
    let (id, key) = app.new_key().await;
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(status, 502);
    assert_eq!(body["error"], "Bad Gateway");
    let logs = app.logs_of(id).await;
    assert!(
        logs[0]["error_message"]
            .as_str()
            .unwrap()
            .starts_with("upstream connect failed"),
        "{}",
        logs[0]
    );

    let mut slow = spawn_mock_upstream().await;
    slow.addr = live_addr;
    let app = spawn_app_against(slow, &["--upstream-timeout", "300ms"]).await;
    let (id, key) = app.new_key().await;
    let (status, body) = app.chat_model(&key, "gpt-slow").await;
    assert_eq!(status, 504);
    assert_eq!(body["error"], "Gateway Timeout");
    let logs = app.logs_of(id).await;
    assert!(
        logs[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{}",
        logs[0]
    );
    assert_eq!(logs[0]["http_status"], 504);
}

#[tokio::test]
async fn upstream_errors_are_forwarded_and_logged_with_their_message() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (status, body) = app.chat_model(&key, "gpt-fail").await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["message"], "mock upstream failure");
    let logs = app.logs_of(id).await;
    assert_eq!(logs[0]["status"], "error");
    assert_eq!(
        logs[0]["error_message"],
        "upstream returned HTTP 500: mock upstream failure"
    );
    let (status, _) = app.admin(Method::GET, "/v1/models", None).await;
    assert_eq!(status, 401, "the admin token is not an API key");
}

#[tokio::test]
async fn a_stream_that_stalls_is_ended_and_logged() {
    let app = spawn_app_with(&["--upstream-timeout", "300ms"]).await;
    let (id, key) = app.new_key().await;
    let response = app
        .chat(
            &key,
            json!({"model": "gpt-gated", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    // The gate never opens: keygate ends the stream after the idle timeout.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stalled stream was not ended");
    let logs = app.logs_of(id).await;
    assert_eq!(logs[0]["status"], "error");
    assert_eq!(logs[0]["error_message"], "upstream timed out mid-response");
    assert_eq!(
        logs[0]["response_size"].as_i64().unwrap() as usize,
        first.len()
    );
}

/// Only paths under `/v1/` reach the relay; look-alikes are the admin router's 404s.
#[tokio::test]
async fn only_paths_under_v1_are_relayed() {
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    for path in ["/v1", "/v1x/chat/completions", "/api/v1/chat/completions"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-test", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    assert!(app.upstream.seen().is_empty());
    let (status, _) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(status, 200);
    app.flush().await;
    let (_, logs) = app.get("/api/api-logs").await;
    assert_eq!(logs["total"], 1, "look-alike paths are not call-logged");
}

#[tokio::test]
async fn only_allowlisted_headers_go_upstream_and_the_organisation_comes_from_config() {
    let app = spawn_app_with(&[
        "--upstream-organization",
        "org-from-config",
        "--upstream-project",
        "proj-from-config",
    ])
    .await;
    let (_, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("openai-organization", "org-chosen-by-client")
        .header("openai-project", "proj-chosen-by-client")
        .header("cookie", "session=client-cookie")
        .header("x-custom", "not forwarded")
        .header("x-forwarded-for", "10.9.9.9")
        .header("accept-encoding", "gzip, br")
        .header("openai-beta", "assistants=v2")
        .header("x-stainless-lang", "python")
        .header("idempotency-key", "idem-1")
        .header("user-agent", "OpenAI/Python 1.0")
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = app.upstream.seen();
    let headers = &seen[0].headers;
    assert_eq!(headers["openai-organization"], "org-from-config");
    assert_eq!(headers["openai-project"], "proj-from-config");
    assert_eq!(headers.get_all("openai-organization").iter().count(), 1);
    assert_eq!(headers.get_all("openai-project").iter().count(), 1);
    for dropped in ["cookie", "x-custom", "x-forwarded-for"] {
        assert!(headers.get(dropped).is_none(), "{dropped} forwarded");
    }
    assert_eq!(headers["accept-encoding"], "identity");
    assert_eq!(headers["openai-beta"], "assistants=v2");
    assert_eq!(headers["x-stainless-lang"], "python");
    assert_eq!(headers["idempotency-key"], "idem-1");
    assert_eq!(headers["user-agent"], "OpenAI/Python 1.0");
    assert_eq!(headers["content-type"], "application/json");

    // Without configuration, neither header is sent, whatever the client says.
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("openai-organization", "org-chosen-by-client")
        .header("openai-project", "proj-chosen-by-client")
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = &app.upstream.seen()[0].headers;
    assert!(headers.get("openai-organization").is_none());
    assert!(headers.get("openai-project").is_none());
}

#[tokio::test]
async fn upstream_set_cookie_is_not_relayed() {
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    let response = app
        .chat(&key, json!({"model": "gpt-cookie", "messages": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "{:?}",
        response.headers()
    );
    assert_eq!(app.upstream.seen().len(), 1, "the mock answered gpt-cookie");
}

#[tokio::test]
async fn long_paths_and_models_are_stored_capped() {
    use keygate::relay::record::{ENDPOINT_MAX_BYTES, MODEL_MAX_BYTES};
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let auth = format!("authorization: Bearer {key}");
    let path = format!("/v1/{}", "p".repeat(60 * 1024));
    let raw = raw_request(&app, &format!("GET {path} HTTP/1.1"), &[&auth], "").await;
    assert_eq!(raw.status, 200, "a long path is relayed");
    // Past what an HTTP URI may hold (64 KiB), hyper answers 414 itself: no row, no upstream.
    let too_long = format!("/v1/{}", "p".repeat(70 * 1024));
    let raw = raw_request(&app, &format!("GET {too_long} HTTP/1.1"), &[&auth], "").await;
    assert_eq!(raw.status, 414);
    assert_eq!(app.upstream.seen().len(), 1);

    let model = "m".repeat(1 << 20);
    let (status, _) = app.chat_model(&key, &model).await;
    assert_eq!(status, 200);
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 2);
    let long_path = logs.iter().find(|l| l["model"].is_null()).unwrap();
    assert_eq!(
        long_path["endpoint"].as_str().unwrap(),
        &path[..ENDPOINT_MAX_BYTES]
    );
    let long_model = logs.iter().find(|l| !l["model"].is_null()).unwrap();
    assert_eq!(
        long_model["model"].as_str().unwrap(),
        &model[..MODEL_MAX_BYTES]
    );
}

#[tokio::test]
async fn upstream_errors_are_stored_and_exported_without_credentials() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (status, body) = app.chat_model(&key, "gpt-echo-auth").await;
    assert_eq!(status, 401);
    // The upstream's answer is relayed, its echo of keygate's credential masked.
    let relayed = body["error"]["message"].as_str().unwrap();
    assert!(!relayed.contains(UPSTREAM_KEY), "{relayed}");
    assert!(relayed.contains("Bearer ****"), "{relayed}");
    let logs = app.logs_of(id).await;
    let stored = logs[0]["error_message"].as_str().unwrap();
    assert_eq!(
        stored,
        "upstream returned HTTP 401: Invalid credentials: got Authorization: Bearer [redacted] (check it)"
    );

    // A row stored before keygate redacted (written here directly) is redacted by a sanitized
    // export, as are bearer tokens and sk- keys of any origin.
    sqlx::query(
        "INSERT INTO api_call_logs (api_key_id, timestamp, status, http_status, response_time, \
         endpoint, error_message) VALUES (?, 0, 'error', 401, 1, '/v1/x', ?)",
    )
    .bind(id)
    .bind(format!(
        "upstream returned HTTP 401: key {UPSTREAM_KEY} or Bearer other-token or sk-abcdefgh12345 \
         cut at sk-upstream-secre"
    ))
    .execute(&app.state.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sanitized.json");
    let args = keygate::cli::data::ExportArgs {
        output: Some(file.clone()),
        types: "logs".into(),
        sanitize: true,
    };
    keygate::cli::data::export(&app.state.keyring, &args, Some(UPSTREAM_KEY))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [UPSTREAM_KEY, "other-token", "sk-abcdefgh", "upstream-secre"] {
        assert!(!text.contains(secret), "{secret} exported: {text}");
    }
    assert!(
        text.contains("key [redacted] or Bearer [redacted] or sk-[redacted]"),
        "{text}"
    );
    assert!(!captured_logs().contains(UPSTREAM_KEY));
}

#[tokio::test]
async fn a_dripping_stream_is_ended_at_the_max_duration() {
    let app = spawn_app_with(&["--upstream-max-duration", "1s"]).await;
    let (id, key) = app.new_key().await;
    let started = std::time::Instant::now();
    let response = app
        .chat(
            &key,
            json!({"model": "gpt-drip", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = 0;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(4), async {
        loop {
            match body.next().await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("the dripping stream was not ended");
    assert!(ended, "the client sees the body end with an error");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
    let logs = app.logs_of(id).await;
    assert_eq!(logs[0]["status"], "error");
    assert_eq!(
        logs[0]["error_message"],
        "upstream exceeded KEYGATE_UPSTREAM_MAX_DURATION"
    );
    assert_eq!(
        logs[0]["response_size"].as_i64().unwrap() as usize,
        received
    );

    // An upstream slower to answer than the whole request may take: 504 at the deadline.
    let app = spawn_app_with(&["--upstream-max-duration", "300ms"]).await;
    let (id, key) = app.new_key().await;
    let (status, body) = app.chat_model(&key, "gpt-slow").await;
    assert_eq!(status, 504);
    assert_eq!(body["error"], "Gateway Timeout");
    let logs = app.logs_of(id).await;
    assert_eq!(
        logs[0]["error_message"],
        "upstream exceeded KEYGATE_UPSTREAM_MAX_DURATION"
    );
}
