//! A full key exists only in the create answer: never in logs, errors, URLs or the database file.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_full_key_is_never_logged_stored_or_echoed() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    app.chat_model(&key, "gpt-test").await;
    app.chat_model(&key, "gpt-fail").await;
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    let (status, refused) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(status, 401);
    app.flush().await;

    let mut seen = vec![refused.to_string()];
    for path in [
        "/api/api-keys".to_string(),
        format!("/api/api-keys/{id}"),
        "/api/api-logs".to_string(),
        format!("/api/api-keys/{id}/stats"),
    ] {
        seen.push(app.get(&path).await.1.to_string());
    }
    for text in &seen {
        assert!(!text.contains(&key), "full key in an API answer: {text}");
    }
    let logs = captured_logs();
    assert!(!logs.is_empty());
    for secret in [key.as_str(), ADMIN_TOKEN, UPSTREAM_KEY] {
        assert!(!logs.contains(secret), "a secret reached the log output");
    }
    let (db_path, _dir) = app.shutdown().await;
    for file in ["keygate.db", "keygate.db-wal"] {
        let bytes = std::fs::read(db_path.with_file_name(file)).unwrap_or_default();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "full key stored in plain text in {file}"
        );
    }
}

#[tokio::test]
async fn fernet_copy_decrypts_to_the_key() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let row = keygate::store::keys::get(&app.state.pool, id)
        .await
        .unwrap()
        .unwrap();
    let plain = app
        .state
        .keyring
        .fernet
        .decrypt(row.encrypted_key.as_deref().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(plain).unwrap(), key);
    assert_eq!(row.key_hash, keygate::keys::hash_hex(&key));
    let fernet_file = app.db_path.with_file_name("fernet.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fernet_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
