//! `keygate upstreams …` and the keys' `--upstream`/`--permission` through the real binary,
//! on a running server's database: the server picks the changes up by itself.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::{fails, ok};
use crate::helpers::*;

const CREDENTIAL: &str = "sk-cli-upstream-credential-0123456789";

/// Waits (a real second-by-second check in the server) until its registry satisfies `done`.
async fn until_server(app: &TestApp, done: impl Fn(&keygate::upstreams::registry::Table) -> bool) {
    let started = Instant::now();
    while !done(&app.state.upstreams.table()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not reload the upstreams"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn upstream_commands_change_the_running_servers_upstreams() {
    let app = spawn_app().await;
    let added: Value = serde_json::from_str(&ok(
        &app,
        &[
            "upstreams",
            "add",
            "--name",
            "oa",
            "--kind",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1/",
            "--api-key",
            CREDENTIAL,
            "--model",
            "gpt-*,o1",
            "--map",
            "fast=gpt-4o-mini",
            "--header",
            "OpenAI-Organization: org-1",
            "--priority",
            "2",
            "--json",
        ],
    ))
    .unwrap();
    let id = added["id"].as_i64().unwrap();
    assert_eq!(added["base_url"], "http://127.0.0.1:9/v1");
    assert_eq!(added["models"], json!(["gpt-*", "o1"]));
    assert_eq!(added["model_map"], json!({"fast": "gpt-4o-mini"}));
    assert_eq!(
        added["extra_headers"],
        json!({"openai-organization": "org-1"})
    );
    assert_eq!(added["priority"], 2);
    assert_eq!(added["has_api_key"], true);
    assert_eq!(
        added["status"]["state"], "unknown",
        "the CLI cannot see live health"
    );
    assert!(!added.to_string().contains(CREDENTIAL));
    until_server(&app, |t| {
        t.upstreams
            .iter()
            .any(|u| u.id == id && u.api_key.as_deref() == Some(CREDENTIAL))
    })
    .await;

    let listed: Value = serde_json::from_str(&ok(&app, &["upstreams", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "default");
    assert_eq!(listed[0]["builtin"], true);
    assert_eq!(listed[1]["name"], "oa");
    let table = ok(&app, &["upstreams", "list"]);
    assert!(table.contains("oa") && table.contains("default"), "{table}");
    assert!(!table.contains(CREDENTIAL) && !listed.to_string().contains(CREDENTIAL));

    // Bad input: the admin API's checks and words, nothing stored.
    for (args, said) in [
        (
            vec![
                "--name",
                "default",
                "--kind",
                "openai",
                "--base-url",
                "http://x/v1",
            ],
            "name:",
        ),
        (
            vec![
                "--name",
                "w",
                "--kind",
                "openai",
                "--base-url",
                "http://x/v1",
                "--weight",
                "-1",
            ],
            "weight:",
        ),
        (
            vec![
                "--name",
                "u",
                "--kind",
                "openai",
                "--base-url",
                "ftp://x/v1",
            ],
            "base_url:",
        ),
        (
            vec![
                "--name",
                "k",
                "--kind",
                "gemini",
                "--base-url",
                "http://x/v1",
            ],
            "kind:",
        ),
        (
            vec![
                "--name",
                "h",
                "--kind",
                "openai",
                "--base-url",
                "http://x/v1",
                "--header",
                "Authorization: x",
            ],
            "extra_headers:",
        ),
        (
            vec![
                "--name",
                "oa",
                "--kind",
                "openai",
                "--base-url",
                "http://x/v1",
            ],
            "exists already",
        ),
    ] {
        let mut all = vec!["upstreams", "add"];
        all.extend(args);
        let err = fails(&app, &all);
        assert!(err.contains(said), "{all:?}: {err}");
    }
    let listed: Value = serde_json::from_str(&ok(&app, &["upstreams", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Edit (by name or id), disable, enable; the credential read from stdin.
    ok(
        &app,
        &[
            "upstreams",
            "edit",
            "oa",
            "--weight",
            "5",
            "--timeout-seconds",
            "20",
        ],
    );
    ok(&app, &["upstreams", "disable", &id.to_string()]);
    until_server(&app, |t| {
        t.upstreams
            .iter()
            .any(|u| u.id == id && !u.enabled && u.weight == 5)
    })
    .await;
    ok(&app, &["upstreams", "enable", "oa"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "upstreams",
            "edit",
            "oa",
            "--api-key-stdin",
            "--timeout-seconds",
            "default",
        ])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", app.db_path.display()),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sk-from-stdin-0000000000000000\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_server(&app, |t| {
        t.upstreams.iter().any(|u| {
            u.enabled
                && u.timeout_seconds.is_none()
                && u.api_key.as_deref() == Some("sk-from-stdin-0000000000000000")
        })
    })
    .await;
    ok(&app, &["upstreams", "edit", "oa", "--no-api-key"]);
    let err = fails(&app, &["upstreams", "edit", "default", "--weight", "2"]);
    assert!(err.contains("KEYGATE_UPSTREAM_URL"), "{err}");
    let err = fails(&app, &["upstreams", "edit", "nosuch", "--weight", "2"]);
    assert!(err.contains("no upstream `nosuch`"), "{err}");

    // Keys: --upstream by id or name (repeatable), --permission; bad ones refused.
    let key: Value = serde_json::from_str(&ok(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "bound",
            "--upstream",
            "oa",
            "--upstream",
            "0",
            "--permission",
            "openai",
            "--json",
        ],
    ))
    .unwrap();
    let key_id = key["id"].as_i64().unwrap();
    assert_eq!(key["upstream_ids"], json!([id, 0]));
    assert_eq!(key["permissions"], json!(["openai"]));
    let err = fails(
        &app,
        &["keys", "create", "--name", "x", "--permission", "gemini"],
    );
    assert!(err.contains("permissions[0]"), "{err}");
    let err = fails(&app, &["keys", "create", "--name", "x", "--upstream", "77"]);
    assert!(err.contains("no upstream `77`"), "{err}");
    let shown = ok(&app, &["keys", "show", &key_id.to_string()]);
    assert!(
        shown.contains("upstream_ids") && shown.contains(&format!("{id}, 0")),
        "{shown}"
    );

    // Remove: refused while a key is bound; --force unbinds it.
    let err = fails(&app, &["upstreams", "remove", "oa", "--yes"]);
    assert!(err.contains("1 key(s) are bound"), "{err}");
    let removed = ok(&app, &["upstreams", "remove", "oa", "--yes", "--force"]);
    assert!(removed.contains(&format!("[{key_id}]")), "{removed}");
    assert_eq!(app.key_json(key_id).await["upstream_ids"], json!([0]));
    until_server(&app, |t| t.upstreams.is_empty()).await;
    ok(
        &app,
        &[
            "keys",
            "edit",
            &key_id.to_string(),
            "--upstream",
            "",
            "--permission",
            "",
        ],
    );
    let key = app.key_json(key_id).await;
    assert_eq!(
        (key["upstream_ids"].clone(), key["permissions"].clone()),
        (json!([]), json!([]))
    );

    // Every change is in the audit trail as the CLI's.
    let (_, audit) = app.get("/api/audit-log?action=upstream.update").await;
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{audit}");
    assert!(entries.iter().all(|e| e["via"] == "cli"));
    assert!(!audit.to_string().contains("sk-from-stdin"));
}
