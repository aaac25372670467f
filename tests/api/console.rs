//! The web console: its files and security headers over HTTP, and the whole console driven in
//! headless Chromium by `tests/browser/console.mjs` (playwright-core) against the real server.

use std::path::PathBuf;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Node with `playwright-core` installed in tests/browser, and Chromium: $KEYGATE_TEST_NODE
/// and $KEYGATE_TEST_CHROMIUM (set by `.ci/run`), else `node` and /usr/bin/chromium. Missing
/// pieces fail the test, naming what to do (as the SDK test does for Python).
fn node_and_chromium() -> (PathBuf, PathBuf) {
    let node = std::env::var("KEYGATE_TEST_NODE").unwrap_or_else(|_| "node".into());
    let chromium =
        std::env::var("KEYGATE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = manifest_dir().join("tests/browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "no playwright-core in tests/browser/node_modules: run `bash .ci/run` once (it runs npm ci there)"
    );
    assert!(
        PathBuf::from(&chromium).exists(),
        "no Chromium at {chromium}: run `bash .ci/run` once (it installs Debian's chromium), or set KEYGATE_TEST_CHROMIUM"
    );
    (PathBuf::from(node), PathBuf::from(chromium))
}

/// Runs `tests/browser/<script>` against `app` (screenshots to target/console-screenshots);
/// fails with its output unless it exits 0. Returns its stdout.
async fn run_browser_script(script: &str, app: &TestApp) -> String {
    let (node, chromium) = node_and_chromium();
    let script = manifest_dir().join("tests/browser").join(script);
    let shots = manifest_dir().join("target/console-screenshots");
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(script)
            .arg(base)
            .arg(ADMIN_TOKEN)
            .arg(shots)
            .env("KEYGATE_TEST_CHROMIUM", chromium)
            .output()
            .unwrap_or_else(|err| {
                panic!("cannot run node ({err}): install Node.js, or set KEYGATE_TEST_NODE")
            })
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn console_page_has_a_strict_policy_and_no_inline_code() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, keygate::console::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/static/app.js"></script>"#));

    let script = app
        .client
        .get(app.url("/static/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["x-frame-options"], "DENY");
    let etag = script.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(
        script.bytes().await.unwrap(),
        &include_bytes!("../../static/app.js")[..]
    );
    let again = app
        .client
        .get(app.url("/static/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    let missing = app
        .client
        .get(app.url("/static/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn console_assets_need_no_login_but_its_data_does() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let keys = app
        .client
        .get(app.url("/api/api-keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_works_in_headless_chromium() {
    node_and_chromium();
    let app = spawn_app().await;
    // The calls are seeded on seven days and the week is read two hours after the last: from
    // noon UTC those two hours stay on the last day (started at the real time after 22:00 UTC,
    // they crossed midnight and the week's last day read no call).
    let today = app.clock.now().date();
    app.clock
        .set(today.midnight().assume_utc() + time::Duration::hours(12));
    // A week of calls on the server's clock: 35 succeed (two models), 3 fail.
    let (_, jobs) = app
        .create_key(
            json!({"name": "batch jobs", "description": "nightly summaries", "tags": ["jobs"]}),
        )
        .await;
    for (day, successes) in [3, 4, 6, 5, 7, 4, 6].into_iter().enumerate() {
        if day > 0 {
            app.clock.advance(time::Duration::days(1));
        }
        for call in 0..successes {
            let model = if call % 3 == 0 {
                "gpt-4o-mini"
            } else {
                "gpt-test"
            };
            assert_eq!(app.chat_model(&jobs, model).await.0, StatusCode::OK);
        }
        if day % 2 == 1 {
            let (status, _) = app.chat_model(&jobs, "gpt-fail").await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    // A key to renew once expired: it expires in an hour, then the clock moves two hours on.
    let (expired_id, _) = app
        .create_key(json!({"name": "old expired key", "expires_hours": 1}))
        .await;
    app.clock.advance(time::Duration::hours(2));
    assert_eq!(app.key_json(expired_id).await["status"], "expired");
    let (soon_id, _) = app
        .create_key(json!({"name": "expiring soon key", "expires_days": 3}))
        .await;

    let stdout = run_browser_script("console.mjs", &app).await;
    assert!(stdout.contains("console: all checks passed"), "{stdout}");

    // What the browser did is what the server has.
    assert_eq!(app.key_json(expired_id).await["status"], "active");
    let soon = app.key_json(soon_id).await;
    assert_eq!(soon["expiring_soon"], false, "{soon}");
    let (_, keys) = app.get("/api/api-keys?page_size=200").await;
    let names: Vec<&str> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"one year key"), "deleted: {names:?}");
    assert!(names.contains(&"renamed key"), "{names:?}");
    let revoked = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "one day key")
        .unwrap();
    assert_eq!(revoked["status"], "revoked");
}

/// The Upstreams page and the key dialog's binding, driven by `tests/browser/upstreams.mjs`:
/// what the browser did is what the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_manages_upstreams_in_headless_chromium() {
    node_and_chromium();
    let app = spawn_app().await;
    let stdout = run_browser_script("upstreams.mjs", &app).await;
    assert!(stdout.contains("upstreams: all checks passed"), "{stdout}");
    assert!(stdout.contains("ok: audit log"), "{stdout}");

    let (_, list) = app.get("/api/upstreams").await;
    let items = list["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "openai-main"], "{list}");
    let main = &items[1];
    assert_eq!(main["has_api_key"], true, "{main}");
    assert_eq!(
        main["api_key_preview"], "…ABCD",
        "the credential typed last"
    );
    assert_eq!(main["base_url"], "https://api.openai.com/v1");
    assert_eq!(main["models"], json!(["gpt-4o*", "gpt-4.1", "o3"]));
    assert_eq!(main["model_map"], json!({"gpt-4": "gpt-4o"}));
    assert_eq!(
        main["extra_headers"],
        json!({"openai-organization": "org-123"})
    );
    assert_eq!((&main["priority"], &main["weight"]), (&json!(5), &json!(7)));
    assert_eq!(main["enabled"], true);
    assert!(main.get("api_key").is_none(), "{main}");

    let (_, keys) = app.get("/api/api-keys?search=claude%20code%20key").await;
    let key = &keys["items"][0];
    assert_eq!(
        key["upstream_ids"],
        json!([0]),
        "claude-main was taken out: {key}"
    );
    assert_eq!(key["permissions"], json!(["anthropic"]));
}
