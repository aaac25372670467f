//! The expiry lifecycle: creation choices, the exact boundary, activation, renew, batch renew,
//! regenerate, the sweeper, and the CLI migration — all on a manual clock, no sleeping.

use std::process::{Command, Output};

use serde_json::json;
use time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn every_creation_choice_of_the_seeds() {
    let app = spawn_app().await;
    let (_, never) = app
        .post("/api/api-keys", json!({"name": "never", "never": true}))
        .await;
    assert_eq!(
        (
            never["expires_at"].is_null(),
            never["expiring_soon"].as_bool()
        ),
        (true, Some(false))
    );
    let (_, hour) = app
        .post("/api/api-keys", json!({"name": "1h", "expires_hours": 1}))
        .await;
    assert_eq!(hour["expires_in_seconds"], 3600);
    assert_eq!(hour["expiring_soon"], true);
    for days in [1, 7, 30, 90, 180, 365] {
        let (status, key) = app
            .post("/api/api-keys", json!({"name": "d", "expires_days": days}))
            .await;
        assert_eq!(status, 201);
        assert_eq!(key["expires_in_seconds"], days * 86_400);
        assert_eq!(key["expiring_soon"], days <= 7);
    }
    let custom = keygate::clock::rfc3339(app.clock.now_ms() + 3 * 86_400_000);
    let (_, key) = app
        .post(
            "/api/api-keys",
            json!({"name": "custom", "expires_at": custom}),
        )
        .await;
    assert_eq!(key["expires_at"], custom.as_str());
    let (_, key) = app
        .post("/api/api-keys", json!({"name": "act", "expiration_mode": "activation", "activation_period": 2, "activation_unit": "hours"}))
        .await;
    assert_eq!(
        (key["status"].as_str(), key["expires_at"].is_null()),
        (Some("pending"), true)
    );
    assert!(key["activated_at"].is_null());
}

#[tokio::test]
async fn a_key_expires_at_the_exact_boundary() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "b", "expires_days": 1}))
        .await;
    app.clock
        .advance(Duration::days(1) - Duration::milliseconds(1));
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
    assert_eq!(app.key_json(id).await["status"], "active");
    app.clock.advance(Duration::milliseconds(1));
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
    let key_json = app.key_json(id).await;
    assert_eq!(
        (
            key_json["status"].as_str(),
            key_json["expires_in_seconds"].as_i64()
        ),
        (Some("expired"), Some(0))
    );
}

#[tokio::test]
async fn activation_starts_at_first_use_and_concurrent_first_uses_agree() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "act", "expiration_mode": "activation", "activation_period": 2, "activation_unit": "hours"}))
        .await;
    app.clock.advance(Duration::days(3)); // unused keys do not age
    let first_use = app.clock.now_ms();
    let responses =
        futures_util::future::join_all((0..20).map(|_| app.chat_model(&key, "gpt-test"))).await;
    assert!(responses.iter().all(|(status, _)| *status == 200));
    let key_json = app.key_json(id).await;
    assert_eq!(key_json["status"], "active");
    assert_eq!(key_json["activated_at"], keygate::clock::rfc3339(first_use));
    assert_eq!(
        key_json["expires_at"],
        keygate::clock::rfc3339(first_use + 2 * 3_600_000)
    );
    // The conditional UPDATE: a later activation attempt cannot move the clock.
    let row = keygate::store::keys::activate(&app.state.pool, id, first_use + 5_000, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.activated_at, Some(first_use));
    app.clock.advance(Duration::hours(2));
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 401);

    // Two first uses racing at different instants: exactly one wins, both read its time.
    let (other, _) = app
        .create_key(json!({"name": "race", "expiration_mode": "activation", "activation_period": 1, "activation_unit": "days"}))
        .await;
    let pool = &app.state.pool;
    let (a, b) = tokio::join!(
        keygate::store::keys::activate(pool, other, 1_000, 86_400_000),
        keygate::store::keys::activate(pool, other, 2_000, 86_400_000)
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a.activated_at, b.activated_at);
    assert_eq!(a.expires_at, Some(a.activated_at.unwrap() + 86_400_000));
}

#[tokio::test]
async fn renew_revives_expired_and_disabled_keys_but_not_revoked_ones() {
    let app = spawn_app().await;
    let (expired, key) = app
        .create_key(json!({"name": "e", "expires_days": 1}))
        .await;
    let (disabled, disabled_key) = app.new_key().await;
    let (revoked, _) = app.new_key().await;
    app.patch(
        &format!("/api/api-keys/{disabled}"),
        json!({"is_active": false}),
    )
    .await;
    app.post(&format!("/api/api-keys/{revoked}/revoke"), json!({}))
        .await;
    app.clock.advance(Duration::days(2));
    keygate::tasks::sweeper::sweep_once(&app.state.pool, &app.clock)
        .await
        .unwrap();
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 401);

    let (status, renewed) = app
        .post(
            &format!("/api/api-keys/{expired}/renew"),
            json!({"days": 30}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(
        (renewed["status"].as_str(), renewed["is_active"].as_bool()),
        (Some("active"), Some(true))
    );
    assert_eq!(renewed["expires_in_seconds"], 30 * 86_400);
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);

    let until = keygate::clock::rfc3339(app.clock.now_ms() + 86_400_000);
    let (_, renewed) = app
        .post(
            &format!("/api/api-keys/{disabled}/renew"),
            json!({"expires_at": until}),
        )
        .await;
    assert_eq!(
        (renewed["status"].as_str(), renewed["expires_at"].as_str()),
        (Some("active"), Some(until.as_str()))
    );
    assert_eq!(app.chat_model(&disabled_key, "gpt-test").await.0, 200);
    let (_, renewed) = app
        .post(
            &format!("/api/api-keys/{disabled}/renew"),
            json!({"never": true}),
        )
        .await;
    assert!(renewed["expires_at"].is_null());

    let (status, error) = app
        .post(
            &format!("/api/api-keys/{revoked}/renew"),
            json!({"days": 30}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), error["error"].as_str()),
        (409, Some("Conflict"))
    );
    let (status, error) = app
        .post(
            &format!("/api/api-keys/{expired}/renew"),
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("expires_at"))
    );
    let (status, error) = app
        .post(&format!("/api/api-keys/{expired}/renew"), json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("days"))
    );
    let (status, _) = app
        .post("/api/api-keys/999/renew", json!({"days": 1}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn batch_renew_picks_keys_expiring_within_the_window() {
    let app = spawn_app().await;
    let now = app.clock.now_ms();
    let day = 86_400_000;
    let (in3, _) = app
        .create_key(json!({"name": "3d", "expires_days": 3}))
        .await;
    let (in6, _) = app
        .create_key(json!({"name": "6d", "expires_days": 6}))
        .await;
    let (in10, _) = app
        .create_key(json!({"name": "10d", "expires_days": 10}))
        .await;
    let (never, _) = app.new_key().await;
    let (revoked, _) = app
        .create_key(json!({"name": "r", "expires_days": 2}))
        .await;
    app.post(&format!("/api/api-keys/{revoked}/revoke"), json!({}))
        .await;

    let (status, batch) = app
        .post(
            "/api/api-keys/renew-expiring",
            json!({"ids": [in6, in10, never]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(
        (batch["within_days"].as_i64(), batch["extend_days"].as_i64()),
        (Some(7), Some(30))
    );
    let renewed: Vec<i64> = batch["renewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    assert_eq!(renewed, [in6]);
    assert_eq!(batch["skipped_ids"], json!([in10, never]));
    assert_eq!(
        app.key_json(in6).await["expires_at"],
        keygate::clock::rfc3339(now + 36 * day)
    );

    let (_, batch) = app
        .post(
            "/api/api-keys/renew-expiring",
            json!({"within_days": 7, "extend_days": 90}),
        )
        .await;
    let renewed: Vec<i64> = batch["renewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        renewed,
        [in3],
        "6d was already pushed past the window; 10d, never and revoked are out"
    );
    assert_eq!(
        app.key_json(in3).await["expires_at"],
        keygate::clock::rfc3339(now + 93 * day)
    );
    let (status, error) = app
        .post("/api/api-keys/renew-expiring", json!({"extend_days": 0}))
        .await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("extend_days"))
    );
}

#[tokio::test]
async fn regenerate_kills_the_old_secret_and_keeps_the_history() {
    let app = spawn_app().await;
    let (id, old) = app.new_key().await;
    app.chat_model(&old, "gpt-test").await;
    let (status, regenerated) = app
        .post(&format!("/api/api-keys/{id}/regenerate"), json!({}))
        .await;
    assert_eq!(status, 200);
    let new = regenerated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(regenerated["id"], id);
    assert_eq!(
        regenerated["key_preview"],
        format!("{}…{}", &new[..4], &new[32..])
    );
    assert_eq!(app.chat_model(&old, "gpt-test").await.0, 401);
    assert_eq!(app.chat_model(&new, "gpt-test").await.0, 200);
    // The old secret now matches no key: its 401 row is not attributed to this key.
    assert_eq!(app.logs_of(id).await.len(), 2);
    assert_eq!(app.key_json(id).await["usage_count"], 2);
    assert!(app.key_json(id).await.get("key").is_none());
}

#[tokio::test]
async fn the_sweeper_marks_expired_keys_inactive_and_never_deletes() {
    let app = spawn_app().await;
    let (expiring, _) = app
        .create_key(json!({"name": "x", "expires_days": 1}))
        .await;
    let (lasting, _) = app
        .create_key(json!({"name": "y", "expires_days": 30}))
        .await;
    let sweep = || keygate::tasks::sweeper::sweep_once(&app.state.pool, &app.clock);
    assert_eq!(sweep().await.unwrap(), 0);
    app.clock.advance(Duration::days(1));
    let row = keygate::store::keys::get(&app.state.pool, expiring)
        .await
        .unwrap()
        .unwrap();
    assert!(row.is_active, "the stored flag lags until the sweep");
    assert_eq!(sweep().await.unwrap(), 1);
    assert_eq!(sweep().await.unwrap(), 0);
    let key = app.key_json(expiring).await;
    assert_eq!(
        (key["status"].as_str(), key["is_active"].as_bool()),
        (Some("expired"), Some(false))
    );
    assert_eq!(app.key_json(lasting).await["is_active"], true);
    assert!(captured_logs().contains("expiry sweeper marked expired keys inactive"));
}

fn cli(app: &TestApp, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", app.db_path.display()),
        )
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn expiry_migration_dry_run_then_apply_then_idempotent() {
    let app = spawn_app().await;
    let (a, _) = app.create_key(json!({"name": "legacy-a"})).await;
    let (b, _) = app.create_key(json!({"name": "legacy-b"})).await;
    let (dated, _) = app
        .create_key(json!({"name": "dated", "expires_days": 5}))
        .await;
    let (act, _) = app
        .create_key(json!({"name": "act", "expiration_mode": "activation", "activation_period": 1, "activation_unit": "days"}))
        .await;
    let (gone, _) = app.new_key().await;
    app.post(&format!("/api/api-keys/{gone}/revoke"), json!({}))
        .await;
    let before: Vec<_> =
        futures_util::future::join_all([a, b, dated, act].map(|id| app.key_json(id))).await;

    let dry =
        String::from_utf8(cli(&app, &["migrate", "apikey-expiry", "--dry-run"]).stdout).unwrap();
    assert!(
        dry.contains("Would give 2 key(s)") && dry.contains("legacy-a") && dry.contains("legacy-b"),
        "{dry}"
    );
    assert!(dry.contains("nothing was changed"), "{dry}");
    let after_dry: Vec<_> =
        futures_util::future::join_all([a, b, dated, act].map(|id| app.key_json(id))).await;
    assert_eq!(before, after_dry);

    let applied =
        String::from_utf8(cli(&app, &["migrate", "apikey-expiry", "--days", "10"]).stdout).unwrap();
    assert!(
        applied.contains("Gave 2 key(s)") && applied.contains("10 days"),
        "{applied}"
    );
    for id in [a, b] {
        let secs = app.key_json(id).await["expires_in_seconds"]
            .as_i64()
            .unwrap();
        assert!(
            (10 * 86_400 - 300..=10 * 86_400 + 300).contains(&secs),
            "{secs}"
        );
    }
    assert_eq!(
        app.key_json(dated).await["expires_at"],
        before[2]["expires_at"]
    );
    assert!(app.key_json(act).await["expires_at"].is_null());
    assert!(app.key_json(gone).await["expires_at"].is_null());

    let again = String::from_utf8(cli(&app, &["migrate", "apikey-expiry"]).stdout).unwrap();
    assert!(again.contains("nothing to change"), "{again}");
}

#[tokio::test]
async fn seed_test_creates_the_five_keys_of_the_guide() {
    let app = spawn_app().await;
    let out = String::from_utf8(cli(&app, &["keys", "seed-test"]).stdout).unwrap();
    assert_eq!(out.lines().count(), 6, "{out}");
    // The CLI ran on the system clock; look at its keys a moment later.
    app.clock
        .set(time::OffsetDateTime::now_utc() + Duration::seconds(1));
    let (_, keys) = app.get("/api/api-keys?page_size=10").await;
    let mut by_name: Vec<(String, String, bool)> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().into(),
                k["status"].as_str().unwrap().into(),
                k["expiring_soon"].as_bool().unwrap(),
            )
        })
        .collect();
    by_name.sort();
    let expected = [
        ("Test Key - 1 Day", "active", true),
        ("Test Key - 1 Hour", "active", true),
        ("Test Key - 7 Days", "active", true),
        ("Test Key - Expired", "expired", false),
        ("Test Key - Never", "active", false),
    ];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(n, s, e)| (n.to_string(), s.to_string(), *e))
        .collect();
    assert_eq!(by_name, expected);
    // The printed keys work through the relay.
    let never_line = out.lines().find(|l| l.contains("Never")).unwrap();
    let key = never_line.split_whitespace().last().unwrap();
    assert_eq!(app.chat_model(key, "gpt-test").await.0, 200);
}
