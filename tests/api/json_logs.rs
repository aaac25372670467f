//! keygate's own log lines: every line of a request names its key id through the request's
//! span (never the key), as text or, with `KEYGATE_LOG_FORMAT=json`, one JSON object a line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn json_log_lines_parse_and_carry_the_requests_key_id() {
    let upstream = spawn_mock_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("keygate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keygate"));
    let mut child = serve_env(command.arg("serve"), &upstream, dir.path(), port)
        .env("KEYGATE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,keygate=debug")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    wait_until_serving(&base, &mut child).await;
    let client = reqwest::Client::new();
    let (status, created) = read(
        client
            .post(format!("{base}/api/api-keys"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "json logs"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    for stream in [false, true] {
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-test", "messages": [], "stream": stream}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }

    // The "relayed" line of each answer is written when its body ends.
    let started = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let relayed = text.lines().filter(|l| l.contains("\"relayed\"")).count();
        if relayed >= 2 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no relayed lines in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    let parsed: Vec<Value> = lines
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(parsed.iter().all(|line| line["timestamp"].is_string()
        && line["level"].is_string()
        && line["fields"].is_object()));
    let relayed: Vec<&Value> = parsed
        .iter()
        .filter(|line| line["fields"]["message"] == "relayed")
        .collect();
    assert_eq!(relayed.len(), 2, "{lines}");
    for line in relayed {
        assert_eq!(line["span"]["name"], "request", "{line}");
        assert_eq!(line["span"]["key_id"], id, "{line}");
        assert_eq!(line["span"]["route"], "/v1/chat/completions", "{line}");
        assert_eq!(line["span"]["method"], "POST", "{line}");
    }
    for secret in [key.as_str(), UPSTREAM_KEY, ADMIN_TOKEN] {
        assert!(!lines.contains(secret), "a secret in the log");
    }
}

#[tokio::test]
async fn text_log_lines_of_a_request_name_its_key_id_in_the_span() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    app.flush().await;
    let span = format!("request{{method=POST route=/v1/chat/completions key_id={id}}}");
    let logs = without_ansi(&captured_logs());
    assert!(
        logs.lines()
            .any(|line| line.contains(&span) && line.contains("relayed")),
        "no line in {span}"
    );
    assert!(!logs.contains(&key));
}

/// `text` without its ANSI colour sequences (`ESC [ … m`).
fn without_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
