//! `keygate data export|import` through the real binary: lossless round trips, sanitized
//! exports, conflicts, corrupt files, dry runs and type selection.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sqlx::SqlitePool;

use crate::helpers::*;

pub(crate) fn run(db: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("RUST_LOG", "warn")
        .env_remove("KEYGATE_FERNET_KEY")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `keygate` on the database `db` (cwd `dir`); returns stdout, asserting success.
pub(crate) fn ok(db: &Path, dir: &Path, args: &[&str]) -> String {
    let out = run(db, dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `keygate` expecting it to fail; returns stderr.
pub(crate) fn fails(db: &Path, dir: &Path, args: &[&str]) -> String {
    let out = run(db, dir, args);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A fresh database folder; with `fernet_from`, it gets that folder's Fernet key.
pub(crate) fn fresh_db(fernet_from: Option<&Path>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(db) = fernet_from {
        let key = db.parent().unwrap().join("fernet.key");
        std::fs::copy(key, dir.path().join("fernet.key")).unwrap();
    }
    let db = dir.path().join("keygate.db");
    (dir, db)
}

pub(crate) async fn open(db: &Path) -> SqlitePool {
    keygate::store::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap()
}

/// Every key and call log of a database, in a comparable form.
async fn snapshot(pool: &SqlitePool) -> (Vec<String>, Vec<Value>) {
    let keys = keygate::store::keys::all(pool)
        .await
        .unwrap()
        .iter()
        .map(|k| format!("{k:?}"))
        .collect();
    let page = keygate::store::Page {
        page: 1,
        page_size: 10_000,
    };
    let mut logs = keygate::store::logs::list(
        pool,
        &Default::default(),
        keygate::store::logs::PageAt::Number(page),
    )
    .await
    .unwrap()
    .unwrap()
    .rows;
    logs.sort_by_key(|l| l.id);
    let logs = logs
        .iter()
        .map(|l| serde_json::to_value(l).unwrap())
        .collect();
    (keys, logs)
}

/// Keys with call logs: alpha (2 successes, 1 error), an activation key used once, a revoked
/// one tried once; and a call with an unknown key (a log row without a key).
async fn app_with_history() -> (TestApp, Vec<(i64, String)>) {
    let app = spawn_app().await;
    let alpha = app
        .create_key(json!({"name": "alpha", "description": "first", "expires_days": 30}))
        .await;
    let act = app
        .create_key(json!({"name": "act", "expiration_mode": "activation", "activation_period": 2, "activation_unit": "days"}))
        .await;
    let gone = app.create_key(json!({"name": "gone"})).await;
    app.chat_model(&alpha.1, "gpt-test").await;
    app.chat_model(&alpha.1, "gpt-test").await;
    app.chat_model(&alpha.1, "gpt-fail").await;
    app.chat_model(&act.1, "gpt-test").await;
    app.post(&format!("/api/api-keys/{}/revoke", gone.0), json!({}))
        .await;
    app.chat_model(&gone.1, "gpt-test").await;
    app.chat_model("00000000-0000-4000-8000-000000000000", "gpt-test")
        .await;
    app.flush().await;
    (app, vec![alpha, act, gone])
}

#[tokio::test]
async fn a_full_export_imports_losslessly_into_a_fresh_database() {
    let (app, keys) = app_with_history().await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("backup.json");
    let said = ok(
        &app.db_path,
        out_dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    assert!(
        said.contains("3 API key(s) and 6 call log(s)") && said.contains("not sanitized"),
        "{said}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let metadata = &export["metadata"];
    assert_eq!(metadata["format_version"], 4);
    assert_eq!(metadata["keygate_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        metadata["counts"],
        json!({"upstreams": 0, "apikeys": 3, "logs": 6})
    );
    assert_eq!(metadata["sanitized"], false);
    assert_eq!(metadata["types"], json!(["upstreams", "apikeys", "logs"]));
    assert!(keygate::clock::parse_rfc3339(metadata["exported_at"].as_str().unwrap()).is_some());
    let alpha = &export["data"]["apikeys"][0];
    assert_eq!(
        alpha["key_hash"],
        keygate::keys::hash_hex(&keys[0].1).as_str()
    );
    assert_eq!(alpha["usage_count"], 3);
    assert_eq!(export["data"]["logs"].as_array().unwrap().len(), 6);

    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let said = ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    assert!(
        said.contains("API keys: 3 new, 0 overwritten, 0 skipped")
            && said.contains("call logs: 6 new, 0 overwritten, 0 skipped"),
        "{said}"
    );
    assert!(!said.contains("regenerate"), "{said}");

    let pool = open(&db).await;
    assert_eq!(snapshot(&pool).await, snapshot(&app.state.pool).await);
    let row = keygate::store::keys::find_by_hash(&pool, &keygate::keys::hash_hex(&keys[0].1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.id, row.name.as_str()), (keys[0].0, "alpha"));
    let fernet_key = std::fs::read_to_string(db.parent().unwrap().join("fernet.key")).unwrap();
    let fernet = fernet::Fernet::new(fernet_key.trim()).unwrap();
    let secret = fernet
        .decrypt(row.encrypted_key.as_deref().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(secret).unwrap(), keys[0].1);

    // New keys continue after the imported ids.
    let created = keygate::store::keys::insert(
        &pool,
        &keygate::store::keys::NewKey {
            key_hash: keygate::keys::hash_hex("new"),
            encrypted_key: None,
            key_preview: "new".into(),
            name: "after import".into(),
            description: None,
            expires_at: None,
            expiration_mode: keygate::keys::ExpirationMode::Fixed,
            activation_period: None,
            activation_unit: None,
        },
        0,
    )
    .await
    .unwrap();
    assert_eq!(created.id, keys[2].0 + 1);
    keygate::store::keys::delete(&pool, created.id)
        .await
        .unwrap();
    pool.close().await;

    // A server on the imported database: the secrets work as before, the revoked one does not.
    let served = spawn_app_on(&db).await;
    assert_eq!(served.chat_model(&keys[0].1, "gpt-test").await.0, 200);
    assert_eq!(served.chat_model(&keys[1].1, "gpt-test").await.0, 200);
    assert_eq!(served.chat_model(&keys[2].1, "gpt-test").await.0, 401);
}

#[tokio::test]
async fn a_sanitized_export_has_no_secrets_and_its_keys_need_regenerating() {
    let (app, keys) = app_with_history().await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("clean.json");
    let said = ok(
        &app.db_path,
        out_dir.path(),
        &["data", "export", "--sanitize", "--output", path_str(&file)],
    );
    assert!(
        said.contains("sanitized") && said.contains("regenerated"),
        "{said}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("key_hash") && !text.contains("encrypted_key"));
    for (_, secret) in &keys {
        assert!(!text.contains(secret.as_str()));
        assert!(!text.contains(&keygate::keys::hash_hex(secret)));
    }
    assert!(!text.contains("127.0.0.1"), "IPs are masked");
    let export: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(export["metadata"]["sanitized"], true);
    assert!(export["data"]["logs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|log| log["ip_address"] == "127.0.0.0"));

    let (_fresh, db) = fresh_db(None);
    let said = ok(
        &db,
        out_dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    assert!(
        said.contains("3 new key(s) come without their secret")
            && said.contains("cannot authenticate until regenerated"),
        "{said}"
    );
    let pool = open(&db).await;
    for (id, secret) in &keys {
        let row = keygate::store::keys::get(&pool, *id)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(row.key_hash, keygate::keys::hash_hex(secret));
        assert_eq!(row.encrypted_key, None);
    }
    assert_eq!(
        keygate::store::keys::get(&pool, keys[0].0)
            .await
            .unwrap()
            .unwrap()
            .usage_count,
        3
    );
    pool.close().await;

    // Until regenerated, no secret works; after, the new one does.
    let served = spawn_app_on(&db).await;
    assert_eq!(served.chat_model(&keys[0].1, "gpt-test").await.0, 401);
    let (status, regenerated) = served
        .post(
            &format!("/api/api-keys/{}/regenerate", keys[0].0),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{regenerated}");
    let new_key = regenerated["key"].as_str().unwrap();
    assert_eq!(served.chat_model(new_key, "gpt-test").await.0, 200);
}

#[tokio::test]
async fn conflicts_need_a_flag_then_skip_or_overwrite() {
    let (app, keys) = app_with_history().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.json");
    ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    // After the backup: alpha is renamed, and the activation key is deleted with its log.
    app.patch(
        &format!("/api/api-keys/{}", keys[0].0),
        json!({"name": "renamed"}),
    )
    .await;
    app.admin(
        reqwest::Method::DELETE,
        &format!("/api/api-keys/{}", keys[1].0),
        None,
    )
    .await;
    let before = snapshot(&app.state.pool).await;

    let error = fails(
        &app.db_path,
        dir.path(),
        &["data", "import", "--input", path_str(&file)],
    );
    assert!(
        error.contains("--skip-conflicts")
            && error.contains("--force")
            && error.contains("key #1 'renamed'")
            && error.contains("Nothing was imported"),
        "{error}"
    );
    assert_eq!(snapshot(&app.state.pool).await, before);

    let said = ok(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "import",
            "--input",
            path_str(&file),
            "--skip-conflicts",
        ],
    );
    assert!(
        said.contains("API keys: 1 new, 0 overwritten, 2 skipped")
            && said.contains("call logs: 1 new, 0 overwritten, 5 skipped"),
        "{said}"
    );
    assert_eq!(app.key_json(keys[0].0).await["name"], "renamed");
    assert_eq!(app.key_json(keys[1].0).await["name"], "act");
    assert_eq!(app.logs_of(keys[1].0).await.len(), 1);
    crate::scale::assert_day_counts_match_rows(&app, "skipped conflicts").await;

    let said = ok(
        &app.db_path,
        dir.path(),
        &["data", "import", "--input", path_str(&file), "--force"],
    );
    assert!(
        said.contains("API keys: 0 new, 3 overwritten, 0 skipped")
            && said.contains("call logs: 0 new, 6 overwritten, 0 skipped"),
        "{said}"
    );
    assert_eq!(app.key_json(keys[0].0).await["name"], "alpha");
    assert_eq!(app.logs_of(keys[0].0).await.len(), 3);
    crate::scale::assert_day_counts_match_rows(&app, "overwritten conflicts").await;
    assert_eq!(app.chat_model(&keys[0].1, "gpt-test").await.0, 200);
}

#[tokio::test]
async fn a_corrupt_file_changes_nothing_and_says_where() {
    let (app, keys) = app_with_history().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.json");
    ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    // After the backup alpha is renamed: a --force import would rename it back.
    app.patch(
        &format!("/api/api-keys/{}", keys[0].0),
        json!({"name": "renamed"}),
    )
    .await;
    let before = snapshot(&app.state.pool).await;

    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() * 2 / 3]).unwrap();
    let error = fails(
        &app.db_path,
        dir.path(),
        &["data", "import", "--input", path_str(&truncated), "--force"],
    );
    assert!(
        error.contains("nothing was changed") && error.contains("EOF while parsing"),
        "{error}"
    );
    assert!(error.contains("line "), "{error}");

    // The last key's usage_count is text: keys before it were already written, then undone.
    let wrong_type = dir.path().join("wrong-type.json");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let gone = lines
        .iter()
        .position(|l| l.contains(r#""name":"gone""#))
        .unwrap();
    lines[gone] = lines[gone].replace(r#""usage_count":0"#, r#""usage_count":"many""#);
    std::fs::write(&wrong_type, lines.join("\n")).unwrap();
    let error = fails(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "import",
            "--input",
            path_str(&wrong_type),
            "--force",
        ],
    );
    assert!(
        error.contains(&format!(
            "data.apikeys[2] (id 3, line {}): field `usage_count`: invalid type: string \"many\", expected i64",
            gone + 1
        )),
        "{error}"
    );
    assert_eq!(snapshot(&app.state.pool).await, before);
    assert_eq!(app.key_json(keys[0].0).await["name"], "renamed");

    // Logs whose key is neither in the database nor in the file.
    let logs_only = dir.path().join("logs.json");
    ok(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "export",
            "--types",
            "logs",
            "--output",
            path_str(&logs_only),
        ],
    );
    let (_fresh, db) = fresh_db(None);
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&logs_only)],
    );
    assert!(
        error.contains("data.logs[0] (id 1): api_key_id 1 matches no key"),
        "{error}"
    );
    let pool = open(&db).await;
    assert_eq!(snapshot(&pool).await, (vec![], vec![]));

    // Not an export at all, and a format from the future.
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        r#"{"data": {"apikeys": []}, "metadata": {"format_version": 1}}"#,
    )
    .unwrap();
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&other)],
    );
    assert!(
        error.contains("`metadata` must come before `data`"),
        "{error}"
    );
    std::fs::write(&other, r#"{"metadata": {"format_version": 5}, "data": {}}"#).unwrap();
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&other)],
    );
    assert!(
        error.contains("format_version is 5") && error.contains("reads versions 1 to 4"),
        "{error}"
    );
}

#[tokio::test]
async fn a_dry_run_reports_and_changes_nothing() {
    let (app, keys) = app_with_history().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.json");
    ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let said = ok(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&file), "--dry-run"],
    );
    assert!(
        said.contains("Dry run")
            && said.contains("would import API keys: 3 new")
            && said.contains("Nothing was changed"),
        "{said}"
    );
    let pool = open(&db).await;
    assert_eq!(snapshot(&pool).await, (vec![], vec![]));

    app.patch(
        &format!("/api/api-keys/{}", keys[0].0),
        json!({"name": "renamed"}),
    )
    .await;
    let before = snapshot(&app.state.pool).await;
    let said = ok(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "import",
            "--input",
            path_str(&file),
            "--force",
            "--dry-run",
        ],
    );
    assert!(said.contains("API keys: 0 new, 3 overwritten"), "{said}");
    assert_eq!(snapshot(&app.state.pool).await, before);
}

#[tokio::test]
async fn types_choose_what_is_exported() {
    let (app, _keys) = app_with_history().await;
    let dir = tempfile::tempdir().unwrap();
    let said = ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--types", "apikeys"],
    );
    assert!(said.contains("3 API key(s) to keygate-export-"), "{said}");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1);
    let name = &names[0];
    assert!(
        name.starts_with("keygate-export-")
            && name.ends_with(".json")
            && name.len() == "keygate-export-YYYY-MM-DD.json".len(),
        "{name}"
    );
    let export: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap();
    assert_eq!(export["metadata"]["types"], json!(["apikeys"]));
    assert_eq!(export["metadata"]["counts"], json!({"apikeys": 3}));
    assert_eq!(export["data"].as_object().unwrap().len(), 1);
    assert_eq!(export["data"]["apikeys"].as_array().unwrap().len(), 3);

    // The same default name again: refused, the first file kept.
    let error = fails(
        &app.db_path,
        dir.path(),
        &["data", "export", "--types", "apikeys"],
    );
    assert!(
        error.contains("already exists") && error.contains("--output"),
        "{error}"
    );
    let error = fails(
        &app.db_path,
        dir.path(),
        &[
            "data",
            "export",
            "--types",
            "apikeys,users",
            "--output",
            "x.json",
        ],
    );
    assert!(
        error.contains("unknown type `users`") && error.contains("apikeys, logs"),
        "{error}"
    );
    assert!(!dir.path().join("x.json").exists());
}

/// Runs `keygate ARGS…` in a pseudo-terminal, answering each overwrite prompt with the next of
/// ANSWERS (comma-separated); prints everything the terminal showed.
const PTY_SCRIPT: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
answers = os.environ["ANSWERS"].split(",")
seen, asked, deadline = "", 0, time.time() + 30
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk.decode("utf-8", "replace")
    while seen.count("Overwrite it?") > asked and asked < len(answers):
        os.write(fd, (answers[asked] + "\n").encode())
        asked += 1
_, status = os.waitpid(pid, 0)
print(seen)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[tokio::test]
async fn at_a_terminal_import_asks_about_each_conflict() {
    let (app, keys) = app_with_history().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.json");
    ok(
        &app.db_path,
        dir.path(),
        &["data", "export", "--output", path_str(&file)],
    );
    for (id, _) in &keys[..2] {
        app.patch(&format!("/api/api-keys/{id}"), json!({"name": "renamed"}))
            .await;
    }
    let db = format!("sqlite://{}", app.db_path.display());
    let input = path_str(&file).to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", PTY_SCRIPT, env!("CARGO_BIN_EXE_keygate")])
            .args(["data", "import", "--input", &input])
            .env("DATABASE_URL", db)
            .env("RUST_LOG", "warn")
            .env("TERM", "xterm")
            // Key #1: overwrite; key #2: keep; key #3 and every log after it: keep.
            .env("ANSWERS", "y,n,s")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("key #1 'renamed' already exists. Overwrite it?")
            && screen.contains("key #3 'gone' already exists")
            && !screen.contains("call log #1 already exists"),
        "{screen}"
    );
    assert!(
        screen.contains("API keys: 0 new, 1 overwritten, 2 skipped")
            && screen.contains("call logs: 0 new, 0 overwritten, 6 skipped"),
        "{screen}"
    );
    assert_eq!(app.key_json(keys[0].0).await["name"], "alpha");
    assert_eq!(app.key_json(keys[1].0).await["name"], "renamed");
}
