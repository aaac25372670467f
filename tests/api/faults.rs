//! Faults an operator meets: log output that cannot be written, a database locked by another
//! process. keygate keeps serving (or answers 503) and never dies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Where the real binary's stdout and stderr go.
enum Output {
    DevFull,
    /// A pipe whose reading end is closed before keygate writes anything.
    ClosedPipe,
}

fn spawn_binary(
    output: Output,
    upstream: &MockUpstream,
    dir: &std::path::Path,
    port: u16,
) -> Child {
    let (stdout, stderr) = match output {
        Output::DevFull => {
            let full = || {
                Stdio::from(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/full")
                        .unwrap(),
                )
            };
            (full(), full())
        }
        Output::ClosedPipe => (Stdio::piped(), Stdio::piped()),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve")
        .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("keygate.db").display()),
        )
        .env(
            "KEYGATE_UPSTREAM_URL",
            format!("http://{}/v1", upstream.addr),
        )
        .env("KEYGATE_UPSTREAM_API_KEY", UPSTREAM_KEY)
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        // Every request logs a line: each one would be a failed write.
        .env("RUST_LOG", "debug")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    child
}

#[tokio::test]
async fn unwritable_log_output_is_never_fatal() {
    for output in [Output::DevFull, Output::ClosedPipe] {
        let upstream = spawn_mock_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = spawn_binary(output, &upstream, dir.path(), port);
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "keygate died at start with unwritable log output"
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "keygate did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, key) = read(
            client
                .post(format!("{base}/api/api-keys"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"name": "faults"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        let key = key["key"].as_str().unwrap().to_string();
        for round in 0..20 {
            // A relayed call, an upstream error and a wrong admin token: each logs a line.
            let model = if round % 2 == 0 {
                "gpt-test"
            } else {
                "gpt-fail"
            };
            let response = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": model, "messages": []}))
                .send()
                .await
                .expect("keygate answered");
            assert!(matches!(response.status().as_u16(), 200 | 500));
            response.bytes().await.expect("a whole answer");
            let refused = client
                .get(format!("{base}/api/api-keys"))
                .bearer_auth("wrong-token-0123456789")
                .send()
                .await
                .expect("keygate answered");
            // 429 once the failures are throttled.
            assert!(matches!(refused.status().as_u16(), 401 | 429));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "keygate is still running"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
