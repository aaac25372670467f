//! The official `openai` Python SDK as a client: plain, streaming (with and without asking for
//! usage: counted either way, shown only when asked), and a revoked key.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::helpers::*;

/// The Python with `openai` installed: $KEYGATE_TEST_PYTHON, else the `.venv` that `.ci/run` makes.
pub(crate) fn python() -> PathBuf {
    if let Ok(path) = std::env::var("KEYGATE_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the openai package: run `bash .ci/run` once (it creates .venv), or set KEYGATE_TEST_PYTHON"
    );
    venv
}

/// Runs `tests/sdk/<script>` with `env`; fails with its output unless it exits 0. Its stdout.
async fn run_script(script: &str, env: Vec<(&'static str, String)>) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn openai_python_sdk_works_through_keygate() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (revoked_id, revoked) = app.new_key().await;
    app.post(&format!("/api/api-keys/{revoked_id}/revoke"), json!({}))
        .await;
    let (_, limited) = app
        .create_key(
            json!({"name": "one a minute", "rate_limit_window": 1, "rate_limit_requests": 1}),
        )
        .await;
    let stdout = run_script(
        "openai_client.py",
        vec![
            ("KEYGATE_BASE_URL", app.url("/v1")),
            ("KEYGATE_KEY", key),
            ("KEYGATE_REVOKED_KEY", revoked),
            ("KEYGATE_LIMITED_KEY", limited),
        ],
    )
    .await;
    assert!(stdout.contains("plain: Hello from mock"), "{stdout}");
    assert!(stdout.contains("stream: Hello!"), "{stdout}");
    assert!(stdout.contains("stream usage: 7"), "{stdout}");
    assert!(stdout.contains("revoked: AuthenticationError"), "{stdout}");
    assert!(stdout.contains("limited: RateLimitError"), "{stdout}");
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 3);
    let streams: Vec<_> = logs.iter().filter(|l| l["stream"] == true).collect();
    assert_eq!(streams.len(), 2);
    for row in streams {
        // Counted whether the client asked for usage or not.
        assert_eq!(row["status"], "success", "{row}");
        assert_eq!(row["total_tokens"], 7, "{row}");
        assert_eq!(row["prompt_tokens"], 4, "{row}");
    }
}

/// The official `anthropic` Python SDK through `/v1/messages`, as Claude Code uses it: Bearer
/// and x-api-key keys, a message, a stream, count_tokens, a beta call, a key over its limit,
/// a model no upstream serves, and failover past an overloaded (529) upstream.
#[tokio::test]
async fn anthropic_python_sdk_works_through_keygate() {
    let app = spawn_app().await;
    let mock = format!("http://{}", app.upstream.addr);
    // First an upstream that is always overloaded, then the one that answers.
    let overloaded = crate::routing::spawn_fixed(
        529,
        "",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .await;
    let overloaded_url = overloaded.root();
    crate::routing::add_upstream(&app, json!({"name": "busy", "kind": "anthropic", "base_url": overloaded_url, "models": ["claude-*"]})).await;
    let claude = crate::routing::add_upstream(&app, json!({"name": "claude", "kind": "anthropic", "base_url": mock, "models": ["claude-*"], "priority": 1})).await;
    let (id, key) = app.new_key().await;
    let (_, limited) = app
        .create_key(
            json!({"name": "one a minute", "rate_limit_window": 1, "rate_limit_requests": 1}),
        )
        .await;
    let stdout = run_script(
        "anthropic_client.py",
        vec![
            ("KEYGATE_BASE_URL", app.url("")),
            ("KEYGATE_KEY", key),
            ("KEYGATE_LIMITED_KEY", limited),
        ],
    )
    .await;
    for line in [
        "plain: Hello from mock",
        "stream: Hello from mock",
        "count_tokens: 42",
        "beta: Hello from mock",
        "limited: RateLimitError: Rate limit reached",
        "unrouted: NotFoundError: No upstream serves model `gpt-4o`",
    ] {
        assert!(stdout.contains(line), "no `{line}` in {stdout}");
    }
    // The beta call kept its header (the query Claude Code adds is in tests/api/routing.rs);
    // no request carried the client's key.
    let seen = app.upstream.seen();
    assert!(seen.iter().any(|s| s
        .headers
        .get("anthropic-beta")
        .is_some_and(|b| b == "prompt-caching-2024-07-31")));
    assert!(seen
        .iter()
        .all(|s| s.headers.get("authorization").is_none()));
    let rows = app.logs_of(id).await;
    // plain, stream, count_tokens, beta, unrouted: one row each, whatever was tried.
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let served: Vec<_> = rows.iter().filter(|r| r["status"] == "success").collect();
    assert_eq!(served.len(), 4);
    for row in &served {
        assert_eq!(row["upstream_id"], claude, "{row}");
    }
    // The overloaded upstream was tried first until its third failure cooled it.
    let failed_over = served.iter().filter(|r| r["attempts"] == 2).count();
    assert_eq!(failed_over, 3, "{served:#?}");
    assert_eq!(overloaded.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    let streamed = served.iter().find(|r| r["stream"] == true).unwrap();
    assert_eq!(streamed["cache_read_tokens"], 3000, "{streamed}");
    assert_eq!(streamed["completion_tokens"], 15, "{streamed}");
}
