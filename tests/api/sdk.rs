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
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let base_url = app.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .env("KEYGATE_BASE_URL", base_url)
            .env("KEYGATE_KEY", key)
            .env("KEYGATE_REVOKED_KEY", revoked)
            .env("KEYGATE_LIMITED_KEY", limited)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
