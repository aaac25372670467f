//! `keygate data export|import` with upstreams: the credential only as its Fernet token and
//! only unsanitized; imports upsert by name, keep ids where this database never gave them, and
//! map the keys' `upstream_ids` to the ids the upstreams get; a running server reloads.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::data::{fails, fresh_db, ok, open, path_str};
use crate::helpers::*;
use crate::upstreams_admin::create_upstream;

const CREDENTIAL: &str = "sk-exported-upstream-credential-0123456789";

/// Two upstreams (`a` with a credential, `b` without) and a key bound to both and the built-in one.
async fn app_with_upstreams() -> (TestApp, i64, i64, i64) {
    let app = spawn_app().await;
    let a = create_upstream(
        &app,
        json!({"name": "a", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": CREDENTIAL,
               "models": ["gpt-*"], "model_map": {"x": "y"}, "priority": 3, "weight": 7,
               "timeout_seconds": 40, "stream_usage": "off", "extra_headers": {"OpenAI-Organization": "org-9"}}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let b = create_upstream(
        &app,
        json!({"name": "b", "kind": "anthropic", "base_url": "http://127.0.0.1:9", "enabled": false}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let (key, _) = app
        .create_key(
            json!({"name": "bound", "upstream_ids": [b, a, 0], "permissions": ["anthropic"]}),
        )
        .await;
    (app, a, b, key)
}

fn export(
    app: &TestApp,
    dir: &std::path::Path,
    name: &str,
    sanitize: bool,
) -> (std::path::PathBuf, String) {
    let file = dir.join(name);
    let mut args = vec!["data", "export", "--output", path_str(&file)];
    if sanitize {
        args.push("--sanitize");
    }
    ok(&app.db_path, dir, &args);
    (file.clone(), std::fs::read_to_string(&file).unwrap())
}

/// Writes an edited export in keygate's order: `metadata`, then upstreams, keys and logs.
fn write_export(path: &std::path::Path, file: &Value) {
    let data: Vec<String> = ["upstreams", "apikeys", "logs"]
        .iter()
        .filter(|t| file["data"].get(**t).is_some())
        .map(|t| format!("\"{t}\": {}", file["data"][*t]))
        .collect();
    let text = format!(
        "{{\"metadata\": {}, \"data\": {{{}}}}}",
        file["metadata"],
        data.join(", ")
    );
    std::fs::write(path, text).unwrap();
}

async fn upstreams_of(db: &std::path::Path) -> Vec<keygate::store::upstreams::UpstreamRow> {
    keygate::store::upstreams::list(&open(db).await)
        .await
        .unwrap()
}

async fn key_of(db: &std::path::Path, id: i64) -> keygate::store::keys::KeyRow {
    keygate::store::keys::get(&open(db).await, id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn exports_carry_upstreams_with_the_credential_only_unsanitized() {
    let (app, a, b, key) = app_with_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, full) = export(&app, dir.path(), "full.json", false);
    let (_, sanitized) = export(&app, dir.path(), "sanitized.json", true);
    let stored = upstreams_of(&app.db_path).await;
    let token = stored[0].encrypted_api_key.clone().unwrap();

    // Unsanitized: the Fernet token, never the credential itself.
    assert!(!full.contains(CREDENTIAL));
    assert!(full.contains(&token));
    let file: Value = serde_json::from_str(&full).unwrap();
    assert_eq!(file["metadata"]["counts"]["upstreams"], 2);
    let rows = file["data"]["upstreams"].as_array().unwrap();
    assert_eq!(rows[0]["id"], a);
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(rows[0]["has_api_key"], true);
    assert_eq!(rows[0]["models"], json!(["gpt-*"]));
    assert_eq!(
        rows[0]["extra_headers"],
        json!({"openai-organization": "org-9"})
    );
    assert_eq!(rows[1]["id"], b);
    assert_eq!(rows[1]["encrypted_api_key"], Value::Null);
    let keys = file["data"]["apikeys"].as_array().unwrap();
    assert_eq!(keys[0]["id"], key);
    assert_eq!(keys[0]["upstream_ids"], json!([b, a, 0]));
    assert_eq!(keys[0]["permissions"], json!(["anthropic"]));

    // Sanitized: neither the credential nor its token, only that there was one.
    assert!(!sanitized.contains(CREDENTIAL));
    assert!(!sanitized.contains(&token));
    assert!(!sanitized.contains("encrypted_api_key"));
    let file: Value = serde_json::from_str(&sanitized).unwrap();
    assert_eq!(file["data"]["upstreams"][0]["has_api_key"], true);
}

#[tokio::test]
async fn an_import_round_trips_upstreams_and_key_bindings() {
    let (app, a, b, key) = app_with_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = export(&app, dir.path(), "full.json", false);

    // Into a fresh database (the same Fernet key): ids kept, the credential readable.
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let said = ok(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&full)],
    );
    assert!(
        said.contains("upstreams: 2 new, 0 overwritten, 0 skipped"),
        "{said}"
    );
    let (before, after) = (upstreams_of(&app.db_path).await, upstreams_of(&db).await);
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    assert_eq!(key_of(&db, key).await.binding.upstream_ids.0, [b, a, 0]);
    let served = spawn_app_on(&db).await;
    let mut specs = served.state.upstreams.table().specs();
    specs.sort_by_key(|u| u.id);
    assert_eq!(specs[0].api_key.as_deref(), Some(CREDENTIAL));
    assert!(!specs[1].enabled);
    let (_, listed) = served.get("/api/upstreams").await;
    assert_eq!(listed["items"][1]["bound_keys"], 1);

    // The same file again: its upstreams conflict by name; refused without a flag.
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&full)],
    );
    assert!(error.contains(&format!("upstream #{a} 'a'")), "{error}");
    let said = ok(
        &db,
        dir.path(),
        &[
            "data",
            "import",
            "--input",
            path_str(&full),
            "--skip-conflicts",
        ],
    );
    assert!(
        said.contains("upstreams: 0 new, 0 overwritten, 2 skipped"),
        "{said}"
    );
    served.shutdown().await;
}

#[tokio::test]
async fn an_import_gives_fresh_ids_where_taken_and_maps_the_keys_and_a_server_reloads() {
    let (app, a, b, key) = app_with_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = export(&app, dir.path(), "full.json", false);

    // A database already serving, whose own upstream has id 1.
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let served = spawn_app_on(&db).await;
    let local = create_upstream(
        &served,
        json!({"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:11434/v1"}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    assert_eq!((local, a, b), (1, 1, 2));
    let said = ok(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&full)],
    );
    assert!(said.contains("upstreams: 2 new"), "{said}");
    let rows = upstreams_of(&db).await;
    let ids: Vec<(i64, &str)> = rows.iter().map(|r| (r.id, r.name.as_str())).collect();
    // `a` cannot keep 1 (taken); `b`'s 2 is then the import's own: the next id.
    assert_eq!(ids, [(1, "local"), (2, "a"), (3, "b")]);
    assert_eq!(key_of(&db, key).await.binding.upstream_ids.0, [3, 2, 0]);
    // The running server notices the import by itself.
    let started = Instant::now();
    while served.state.upstreams.table().specs().len() != 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, audit) = served.get("/api/audit-log?action=import").await;
    assert_eq!(audit["items"][0]["details"]["upstreams"]["new"], 2);
    served.shutdown().await;
}

#[tokio::test]
async fn a_sanitized_import_has_no_credential_and_keeps_an_existing_one_when_overwriting() {
    let (app, a, _, _) = app_with_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (sanitized, _) = export(&app, dir.path(), "sanitized.json", true);
    let (full, _) = export(&app, dir.path(), "full.json", false);

    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let said = ok(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&sanitized)],
    );
    assert!(
        said.contains("1 new upstream(s) come without their credential"),
        "{said}"
    );
    assert_eq!(upstreams_of(&db).await[0].encrypted_api_key, None);

    // Overwriting an upstream that has its credential with a sanitized row keeps it.
    let (_fresh2, db2) = fresh_db(Some(&app.db_path));
    ok(
        &db2,
        dir.path(),
        &["data", "import", "--input", path_str(&full)],
    );
    let said = ok(
        &db2,
        dir.path(),
        &["data", "import", "--input", path_str(&sanitized), "--force"],
    );
    assert!(said.contains("upstreams: 0 new, 2 overwritten"), "{said}");
    let row = upstreams_of(&db2)
        .await
        .into_iter()
        .find(|r| r.id == a)
        .unwrap();
    assert!(row.encrypted_api_key.is_some());

    // Another Fernet key cannot read the credential: refused, nothing imported.
    let (_other, db3) = fresh_db(None);
    let error = fails(
        &db3,
        dir.path(),
        &["data", "import", "--input", path_str(&full)],
    );
    assert!(
        error.contains("data.upstreams[0] (id 1): its credential cannot be decrypted"),
        "{error}"
    );
    assert!(upstreams_of(&db3).await.is_empty());
}

#[tokio::test]
async fn a_bad_upstream_row_or_binding_is_refused_naming_it() {
    let (app, _, _, _) = app_with_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, full) = export(&app, dir.path(), "full.json", false);
    let mut file: Value = serde_json::from_str(&full).unwrap();
    file["data"]["upstreams"][1]["base_url"] = json!("ftp://nowhere");
    let bad = dir.path().join("bad.json");
    write_export(&bad, &file);
    let (_fresh, db) = fresh_db(Some(&app.db_path));
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&bad)],
    );
    assert!(error.contains("data.upstreams[1] (id 2"), "{error}");
    assert!(error.contains("field `base_url`"), "{error}");

    // Keys only (no upstreams in the file): their ids must name upstreams of this database.
    let mut file: Value = serde_json::from_str(&full).unwrap();
    file["data"].as_object_mut().unwrap().remove("upstreams");
    write_export(&bad, &file);
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&bad)],
    );
    assert!(
        error.contains(
            "field `upstream_ids[0]`: upstream 2 is neither in the file nor in this database"
        ),
        "{error}"
    );
    let mut file: Value = serde_json::from_str(&full).unwrap();
    file["data"]["apikeys"][0]["permissions"] = json!(["gemini"]);
    write_export(&bad, &file);
    let error = fails(
        &db,
        dir.path(),
        &["data", "import", "--input", path_str(&bad)],
    );
    assert!(error.contains("field `permissions[0]`"), "{error}");
    assert!(upstreams_of(&db).await.is_empty());
}
