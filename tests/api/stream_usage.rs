//! Usage for every streamed call: keygate asks the upstream for it (`stream_options`), removes
//! what that brings from the client's stream, and falls back for upstreams that refuse it.

use serde_json::{json, Value};

use crate::helpers::*;

/// A request body exactly as the client sends it (raw bytes, to see what keygate changes).
async fn send_raw(app: &TestApp, key: &str, path: &str, body: &str) -> (u16, String) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The JSON of each `data:` event of a stream (not `[DONE]`).
fn events(stream: &str) -> Vec<Value> {
    stream
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| panic!("{data}")))
        .collect()
}

fn text_of(stream: &str) -> String {
    events(stream)
        .iter()
        .filter_map(|event| event["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn tokens(row: &Value) -> (Option<i64>, Option<i64>, Option<i64>) {
    (
        row["prompt_tokens"].as_i64(),
        row["completion_tokens"].as_i64(),
        row["total_tokens"].as_i64(),
    )
}

const COUNTED: (Option<i64>, Option<i64>, Option<i64>) = (
    Some(STREAMED_USAGE.0),
    Some(STREAMED_USAGE.1),
    Some(STREAMED_USAGE.2),
);

/// What a client that did not ask for usage must see: OpenAI's stream without usage.
fn assert_plain_stream(stream: &str) {
    assert_eq!(text_of(stream), "Hello!", "{stream}");
    assert!(!stream.contains("usage"), "{stream}");
    assert!(stream.ends_with("}\n\ndata: [DONE]\n\n"), "{stream}");
    for event in events(stream) {
        assert!(!event["choices"].as_array().unwrap().is_empty(), "{event}");
    }
}

#[tokio::test]
async fn a_stream_without_include_usage_is_counted_and_the_client_sees_no_usage() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let body = "{ \"model\" : \"gpt-test\", \"stream\" : true,\n  \"messages\": [{\"role\":\"user\",\"content\":\"a \\\"quoted\\\" } {\"}] }\n";
    let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_plain_stream(&stream);

    // The upstream got the client's bytes with one member spliced in, nothing re-serialised.
    let seen = app.upstream.seen();
    assert_eq!(seen.len(), 1);
    let want = body.replacen(
        "] }\n",
        "] ,\"stream_options\":{\"include_usage\":true}}\n",
        1,
    );
    assert_eq!(String::from_utf8_lossy(&seen[0].body), want);
    assert_eq!(
        seen[0].headers["content-length"],
        want.len().to_string().as_str()
    );

    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["stream"], true);
    assert_eq!(logs[0]["status"], "success");
    assert_eq!(tokens(&logs[0]), COUNTED);
    assert_eq!(logs[0]["request_size"], body.len());
    assert_eq!(logs[0]["response_size"], stream.len());
}

#[tokio::test]
async fn a_client_that_asked_for_usage_gets_the_upstream_stream_unchanged() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let body = r#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(app.upstream.seen()[0].body, body.as_bytes());
    let events = events(&stream);
    assert_eq!(events.len(), 4, "{stream}");
    assert!(events[..3]
        .iter()
        .all(|e| e["usage"].is_null() && e.get("usage").is_some()));
    assert_eq!(events[3]["choices"], json!([]));
    assert_eq!(events[3]["usage"]["total_tokens"], STREAMED_USAGE.2);
    assert_eq!(tokens(&app.logs_of(id).await[0]), COUNTED);
}

#[tokio::test]
async fn include_usage_false_is_turned_on_upstream_and_its_usage_removed() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let body = r#"{"model":"gpt-test","stream":true,"stream_options":{ "include_usage" : false, "include_obfuscation":false },"messages":[]}"#;
    let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_plain_stream(&stream);
    let seen = String::from_utf8(app.upstream.seen()[0].body.to_vec()).unwrap();
    assert_eq!(
        seen,
        body.replace("\"include_usage\" : false", "\"include_usage\" : true")
    );

    // Present without include_usage: added beside the other members.
    let body = r#"{"model":"gpt-test","stream":true,"stream_options":{"include_obfuscation":false},"messages":[]}"#;
    let (_, stream) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_plain_stream(&stream);
    let seen: Value = serde_json::from_slice(&app.upstream.seen()[1].body).unwrap();
    assert_eq!(
        seen["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
    let logs = app.logs_of(id).await;
    assert!(logs.iter().all(|row| tokens(row) == COUNTED), "{logs:?}");
}

#[tokio::test]
async fn legacy_completions_are_injected_and_other_requests_are_not() {
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    let (status, stream) = send_raw(
        &app,
        &key,
        "/v1/completions",
        r#"{"model":"gpt-test","stream":true,"prompt":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_plain_stream(&stream);
    let untouched = [
        (
            "/v1/responses",
            r#"{"model":"gpt-test","stream":true,"input":"hi"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-test","messages":[]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-test","stream":false}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-test","stream":true,"stream_options":"x"}"#,
        ),
    ];
    for (path, body) in untouched {
        send_raw(&app, &key, path, body).await;
    }
    let seen = app.upstream.seen();
    assert!(String::from_utf8_lossy(&seen[0].body).contains("\"include_usage\":true"));
    for (seen, (path, body)) in seen[1..].iter().zip(untouched) {
        assert_eq!(seen.body, body.as_bytes(), "{path}");
    }
}

#[tokio::test]
async fn an_upstream_that_refuses_stream_options_gets_the_request_again_without_it() {
    for model in ["gpt-no-stream-options", "gpt-no-stream-options-422"] {
        let app = spawn_app().await;
        let (id, key) = app.new_key().await;
        let body = format!(r#"{{"model":"{model}","stream":true,"messages":[]}}"#);
        let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{model}: {stream}");
        assert_eq!(text_of(&stream), "Hello!");
        assert!(!stream.contains("usage"), "{stream}");
        let seen = app.upstream.seen();
        assert_eq!(seen.len(), 2, "{model}");
        assert!(String::from_utf8_lossy(&seen[0].body).contains("stream_options"));
        assert_eq!(seen[1].body, body.as_bytes(), "the client's own request");
        assert_eq!(
            seen[1].headers["content-length"],
            body.len().to_string().as_str()
        );

        // Remembered: the next stream goes out as the client sent it, at once.
        let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", &body).await;
        assert_eq!((status, text_of(&stream).as_str()), (200, "Hello!"));
        let seen = app.upstream.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].body, body.as_bytes());

        let logs = app.logs_of(id).await;
        assert_eq!(
            logs.len(),
            2,
            "one row per request, not per upstream exchange"
        );
        for row in &logs {
            assert_eq!(row["status"], "success", "{row}");
            assert_eq!(tokens(row), (None, None, None), "unknown, not guessed");
        }
    }
}

#[tokio::test]
async fn a_refusal_of_the_clients_own_stream_options_reaches_the_client() {
    let app = spawn_app().await;
    let (_, key) = app.new_key().await;
    let body = r#"{"model":"gpt-no-stream-options","stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, answer) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 400);
    assert!(answer.contains("Unrecognized request argument supplied: stream_options"));
    assert_eq!(app.upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_error_that_does_not_name_stream_options_is_forwarded_as_it_came() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let body = r#"{"model":"gpt-bad-request","stream":true}"#;
    let (status, answer) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 400);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["error"]["message"],
        "'messages' is a required property"
    );
    assert_eq!(app.upstream.seen().len(), 1);
    let logs = app.logs_of(id).await;
    assert_eq!(
        logs[0]["error_message"],
        "upstream returned HTTP 400: 'messages' is a required property"
    );
    // Nothing was learnt: the next stream still asks for usage.
    let (_, stream) = send_raw(
        &app,
        &key,
        "/v1/chat/completions",
        r#"{"model":"gpt-test","stream":true}"#,
    )
    .await;
    assert_plain_stream(&stream);
    assert!(String::from_utf8_lossy(&app.upstream.seen()[1].body).contains("include_usage"));
}

#[tokio::test]
async fn with_stream_usage_off_nothing_is_added() {
    let app = spawn_app_with(&["--stream-usage", "off"]).await;
    let (id, key) = app.new_key().await;
    let body = r#"{"model":"gpt-test","stream":true,"messages":[]}"#;
    let (status, stream) = send_raw(&app, &key, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_plain_stream(&stream);
    assert_eq!(app.upstream.seen()[0].body, body.as_bytes());
    assert_eq!(tokens(&app.logs_of(id).await[0]), (None, None, None));
}
