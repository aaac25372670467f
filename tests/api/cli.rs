//! The `keygate keys` commands through the real binary, on the test app's database.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Runs `keygate <args>` (the real binary) on the app's database.
fn keygate(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", app.db_path.display()),
        )
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `keygate <args>` that must succeed; its stdout.
pub fn ok(app: &TestApp, args: &[&str]) -> String {
    let out = keygate(app, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `keygate <args>` that must fail; its stderr.
pub fn fails(app: &TestApp, args: &[&str]) -> String {
    let out = keygate(app, args);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn key_commands_work_on_the_servers_database() {
    let app = spawn_app().await;
    let created = ok(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "cli key",
            "--expires",
            "7d",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    let (id, key) = (
        created["id"].as_i64().unwrap(),
        created["key"].as_str().unwrap().to_string(),
    );
    let expires_in = created["expires_in_seconds"].as_i64().unwrap();
    assert!(
        (7 * 86_400 - 60..=7 * 86_400).contains(&expires_in),
        "{expires_in}"
    );
    assert_eq!(
        app.chat_model(&key, "gpt-test").await.0,
        200,
        "a CLI-created key works in the server"
    );

    let listed: Value = serde_json::from_str(&ok(&app, &["keys", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "cli key");
    assert!(
        !listed.to_string().contains(&key),
        "list never shows the full key"
    );
    let table = ok(&app, &["keys", "list"]);
    assert!(
        table.contains("cli key") && table.contains(created["key_preview"].as_str().unwrap()),
        "{table}"
    );
    assert!(!table.contains(&key));

    ok(&app, &["keys", "expiry", &id.to_string(), "never"]);
    assert!(app.key_json(id).await["expires_at"].is_null());
    ok(&app, &["keys", "expiry", &id.to_string(), "1d"]);
    assert_eq!(app.key_json(id).await["expiring_soon"], true);
    let out = ok(
        &app,
        &["keys", "renew-expiring", "--within", "7", "--extend", "90"],
    );
    assert!(out.contains("Renewed 1 key(s) by 90 days"), "{out}");
    ok(&app, &["keys", "renew", &id.to_string(), "--days", "5"]);
    let shown: Value =
        serde_json::from_str(&ok(&app, &["keys", "show", &id.to_string(), "--json"])).unwrap();
    assert_eq!(shown["id"], id);

    let regenerated = ok(&app, &["keys", "regenerate", &id.to_string()]);
    let new_key = regenerated
        .split_whitespace()
        .find(|w| w.len() == 36)
        .unwrap()
        .to_string();
    assert_eq!(app.chat_model(&new_key, "gpt-test").await.0, 200);

    let bad = keygate(&app, &["keys", "expiry", &id.to_string(), "yesterday"]);
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr);
    assert!(
        message.starts_with("error: expiry `yesterday`"),
        "{message}"
    );
    let missing = keygate(&app, &["keys", "show", "999"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("API key not found"));
}

#[tokio::test]
async fn delete_asks_first_and_without_a_terminal_needs_yes() {
    let app = spawn_app().await;
    let (id, _) = app.new_key().await;
    let refused = keygate(&app, &["keys", "delete", &id.to_string()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --yes"));
    assert_eq!(app.key_json(id).await["id"], id, "nothing deleted");
    ok(&app, &["keys", "delete", &id.to_string(), "--yes"]);
    assert_eq!(app.get(&format!("/api/api-keys/{id}")).await.0, 404);
}

#[tokio::test]
async fn without_a_terminal_the_menu_prints_help_instead_of_hanging() {
    let app = spawn_app().await;
    let out = ok(&app, &["keys"]);
    assert!(
        out.contains("Usage") && out.contains("renew-expiring") && out.contains("needs a terminal"),
        "{out}"
    );
}

#[tokio::test]
async fn a_cli_revoke_is_in_force_in_the_running_server_within_two_seconds() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    assert_eq!(
        app.chat_model(&key, "gpt-test").await.0,
        200,
        "the key is now cached by the server"
    );
    ok(&app, &["keys", "revoke", &id.to_string()]);
    let revoked_at = Instant::now();
    loop {
        let (status, _) = app.chat_model(&key, "gpt-test").await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "CLI revoke not in force after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_interactive_menu_works_in_a_pseudo_terminal() {
    let app = spawn_app().await;
    app.create_key(json!({"name": "menu-key-a", "expires_days": 3}))
        .await;
    let (b, _) = app
        .create_key(json!({"name": "menu-key-b", "expires_days": 3}))
        .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli/menu_pty.py");
    let db = format!("sqlite://{}", app.db_path.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, env!("CARGO_BIN_EXE_keygate")])
            .env("DATABASE_URL", db)
            .env("RUST_LOG", "warn")
            .env("TERM", "xterm")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        screen.contains("menu-key-a"),
        "view all listed the keys: {screen}"
    );
    assert!(
        app.key_json(b).await["expires_at"].is_null(),
        "the menu set never-expires"
    );
}

#[tokio::test]
async fn cli_writes_and_relay_logging_share_the_database_without_lock_errors() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (other, _) = app.new_key().await;
    let load = async {
        for _ in 0..10 {
            let batch = (0..30).map(|_| app.chat_model(&key, "gpt-test"));
            for (status, _) in futures_util::future::join_all(batch).await {
                assert_eq!(status, 200);
            }
            app.flush().await;
        }
    };
    let cli_writes = async {
        for expiry in ["30d", "never", "90d", "7d", "never", "1d"] {
            let args = ["keys", "expiry", &other.to_string(), expiry].map(str::to_string);
            let db = app.db_path.clone();
            let out = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_keygate"))
                    .args(&args)
                    .env("DATABASE_URL", format!("sqlite://{}", db.display()))
                    .env("RUST_LOG", "warn")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && !stderr.contains("locked"),
                "{stderr}"
            );
        }
    };
    tokio::join!(load, cli_writes);
    assert_eq!(app.key_json(id).await["usage_count"], 300);
    assert_eq!(app.key_json(other).await["expiring_soon"], true);
}

/// Output that cannot be written never panics: a reader that left (`| head -1`) ends the
/// command quietly with status 141, as SIGPIPE would; a full disk is an error naming stdout.
#[tokio::test]
async fn a_closed_or_full_stdout_ends_the_command_without_a_panic() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.new_key().await;
    }
    let run = |stdout: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["keys", "list"])
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", app.db_path.display()),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    };
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let left = run(Stdio::from(writer));
    assert_eq!(left.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&left.stderr), "", "quiet");

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let failed = run(Stdio::from(full));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
