//! The audit log: every admin change with when, how, from where and what changed (never a
//! secret), through the API, the console session and the CLI; kept after key deletion.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// The audit entries (newest first) matching `query`.
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/api/audit-log?{query}")).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn key_changes_are_recorded_with_what_changed_and_survive_deletion() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1"]).await;
    let (id, secret) = app
        .create_key(json!({"name": "ci", "expires_days": 30, "rate_limit_window": 1, "rate_limit_requests": 5}))
        .await;
    let before = app.key_json(id).await;
    let (status, _) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"name": "ci-bot", "allowed_models": ["gpt-4o*"], "rate_limit_requests": 10}),
        )
        .await;
    assert_eq!(status, 200);
    // From behind the trusted proxy: the client's address is the forwarded one.
    let renewed = app
        .client
        .post(app.url(&format!("/api/api-keys/{id}/renew")))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"days": 90}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let (_, regenerated) = app
        .post(&format!("/api/api-keys/{id}/regenerate"), json!({}))
        .await;
    let new_secret = regenerated["key"].as_str().unwrap().to_string();
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    let (status, _) = app
        .admin(Method::DELETE, &format!("/api/api-keys/{id}"), None)
        .await;
    assert_eq!(status, 204);

    let entries = audit(&app, &format!("key_id={id}")).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["delete", "revoke", "regenerate", "renew", "edit", "create"]
    );
    for entry in &entries {
        assert_eq!(entry["via"], "token", "{entry}");
        assert_eq!(entry["key_id"], id);
        assert!(entry["at"].as_str().unwrap().ends_with('Z'));
    }
    let by_action = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .unwrap()
            .clone()
    };
    let create = by_action("create");
    assert_eq!(create["key_name"], "ci");
    assert_eq!(create["ip"], "127.0.0.1");
    assert_eq!(create["details"]["changes"]["name"]["new"], "ci");
    assert_eq!(
        create["details"]["changes"]["rate_limit_requests"],
        json!({"old": null, "new": 5})
    );
    assert_eq!(
        create["details"]["changes"]["expires_at"]["new"],
        before["expires_at"]
    );

    let edit = by_action("edit");
    assert_eq!(edit["key_name"], "ci-bot");
    assert_eq!(
        edit["details"]["changes"],
        json!({
            "name": {"old": "ci", "new": "ci-bot"},
            "allowed_models": {"old": [], "new": ["gpt-4o*"]},
            "rate_limit_requests": {"old": 5, "new": 10},
        })
    );
    let renew = by_action("renew");
    assert_eq!(renew["ip"], "203.0.113.7", "the forwarded client address");
    assert_eq!(
        renew["details"]["changes"]["expires_at"]["old"],
        before["expires_at"]
    );
    let regenerate = by_action("regenerate");
    assert_eq!(
        regenerate["details"]["changes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["key_preview"]
    );
    let revoke = by_action("revoke");
    assert_eq!(revoke["details"]["changes"]["is_active"]["new"], false);
    let delete = by_action("delete");
    assert_eq!(
        delete["key_name"], "ci-bot",
        "the name it had, after the key is gone"
    );
    assert_eq!(delete["details"]["changes"]["name"]["new"], Value::Null);

    let all = serde_json::to_string(&audit(&app, "page_size=200").await).unwrap();
    for secret in [secret.as_str(), new_secret.as_str(), ADMIN_TOKEN] {
        assert!(!all.contains(secret), "a secret in the audit log");
    }
    assert!(!all.contains("key_hash") && !all.contains("encrypted_key"));
}

#[tokio::test]
async fn the_audit_log_filters_and_pages_and_names_a_bad_filter() {
    let app = spawn_app().await;
    let (a, _) = app
        .create_key(json!({"name": "a", "expires_days": 3}))
        .await;
    let (b, _) = app
        .create_key(json!({"name": "b", "expires_days": 5}))
        .await;
    app.clock.advance(time::Duration::hours(2));
    let since = keygate::clock::rfc3339(app.state.clock.now_ms());
    let (status, batch) = app
        .post(
            "/api/api-keys/renew-expiring",
            json!({"within_days": 7, "extend_days": 30}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");

    let (status, page) = app.get("/api/audit-log?page_size=1&page=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["page"], 2);
    assert_eq!(page["page_size"], 1);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);

    let renewed = audit(&app, "action=batch_renew").await;
    assert_eq!(renewed.len(), 1, "one entry for the batch");
    let details = &renewed[0]["details"];
    assert_eq!(details["extend_days"], 30);
    let ids: Vec<i64> = details["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [a, b]);
    assert!(details["keys"][0]["changes"]["expires_at"]["new"].is_string());

    let recent = audit(&app, &format!("since={since}")).await;
    assert_eq!(recent.len(), 1);
    let early = audit(&app, &format!("until={since}&action=create")).await;
    assert_eq!(early.len(), 2);

    let (status, body) = app.get("/api/audit-log?action=steal").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "Bad Request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("action: must be one of create, edit"),
        "{body}"
    );
    let (status, body) = app.get("/api/audit-log?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().starts_with("since: "),
        "{body}"
    );
    let unauthenticated = app
        .client
        .get(app.url("/api/audit-log"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn console_logins_logouts_and_failed_bursts_are_recorded_once() {
    let app = spawn_app_with(&["--admin-failures-per-ip", "3"]).await;
    let console = reqwest::Client::builder()
        .local_address("127.0.0.8".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..6 {
        console
            .post(app.url("/api/auth/login"))
            .json(&json!({"token": "wrong"}))
            .send()
            .await
            .unwrap();
    }
    let bursts = audit(&app, "action=login_failures").await;
    assert_eq!(
        bursts.len(),
        1,
        "one entry per burst, not per try: {bursts:?}"
    );
    assert_eq!(bursts[0]["via"], "session");
    assert_eq!(bursts[0]["ip"], "127.0.0.8");
    assert_eq!(bursts[0]["details"]["scope"], "address");
    assert_eq!(bursts[0]["details"]["failures"], 3);
    assert!(!serde_json::to_string(&bursts).unwrap().contains("wrong"));

    // Wrong admin tokens from elsewhere: their own burst, by token.
    let scanner = reqwest::Client::builder()
        .local_address("127.0.0.7".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..5 {
        let refused = scanner
            .get(app.url("/api/api-keys"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert!([401, 429].contains(&refused.status().as_u16()));
    }
    let bursts = audit(&app, "action=login_failures").await;
    assert_eq!(bursts.len(), 2, "{bursts:?}");
    assert_eq!(
        (bursts[0]["via"].as_str(), bursts[0]["ip"].as_str()),
        (Some("token"), Some("127.0.0.7"))
    );

    let ok_from = reqwest::Client::builder()
        .local_address("127.0.0.9".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let login = ok_from
        .post(app.url("/api/auth/login"))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let with_session = |method: Method, path: &str| {
        ok_from
            .request(method, app.url(path))
            .header("cookie", &cookie)
            .header("origin", app.base.clone())
    };
    let created = with_session(Method::POST, "/api/api-keys")
        .json(&json!({"name": "from the console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let logout = with_session(Method::POST, "/api/auth/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);

    let entries = audit(&app, "").await;
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .take(3)
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["via"].as_str().unwrap().into(),
                e["ip"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = |action: &str| {
        (
            action.to_string(),
            "session".to_string(),
            "127.0.0.9".to_string(),
        )
    };
    assert_eq!(
        summary,
        [expected("logout"), expected("create"), expected("login")]
    );
}

#[tokio::test]
async fn cli_changes_are_recorded_with_the_os_user_and_keygate_audit_lists_them() {
    let app = spawn_app().await;
    let (id, _) = app.create_key(json!({"name": "shared"})).await;
    crate::cli::ok(&app, &["keys", "edit", &id.to_string(), "--tags", "ops"]);
    crate::cli::ok(&app, &["keys", "revoke", &id.to_string()]);

    let entries = audit(&app, &format!("key_id={id}&action=edit")).await;
    assert_eq!(entries.len(), 1);
    let edit = &entries[0];
    assert_eq!(edit["via"], "cli");
    assert_eq!(edit["ip"], Value::Null, "no address for the CLI");
    assert!(
        edit["os_user"].as_str().is_some_and(|u| !u.is_empty()),
        "{edit}"
    );
    assert_eq!(
        edit["details"]["changes"]["tags"],
        json!({"old": [], "new": ["ops"]})
    );

    let listed: Vec<Value> = serde_json::from_str(&crate::cli::ok(
        &app,
        &["audit", "--key-id", &id.to_string(), "--json"],
    ))
    .unwrap();
    let actions: Vec<&str> = listed
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["revoke", "edit", "create"]);
    let limited: Vec<Value> = serde_json::from_str(&crate::cli::ok(
        &app,
        &["audit", "--action", "revoke", "--limit", "1", "--json"],
    ))
    .unwrap();
    assert_eq!(limited.len(), 1);
    let table = crate::cli::ok(&app, &["audit", "--key-id", &id.to_string()]);
    assert!(
        table.contains("revoke") && table.contains("tags: [] → [\"ops\"]"),
        "{table}"
    );
    let refused = crate::cli::fails(&app, &["audit", "--action", "nope"]);
    assert!(
        refused.contains("--action: `nope` is not one of create"),
        "{refused}"
    );
}

#[tokio::test]
async fn imports_and_the_default_expiry_migration_are_recorded_with_their_counts() {
    let app = spawn_app().await;
    let (a, _) = app.create_key(json!({"name": "no expiry"})).await;
    app.create_key(json!({"name": "expires", "expires_days": 5}))
        .await;
    crate::cli::ok(&app, &["migrate", "apikey-expiry", "--days", "30"]);
    let migrated = audit(&app, "action=default_expiry").await;
    assert_eq!(migrated.len(), 1);
    assert_eq!(migrated[0]["via"], "cli");
    assert_eq!(migrated[0]["details"]["key_ids"], json!([a]));
    assert!(migrated[0]["details"]["expires_at"].is_string());
    crate::cli::ok(
        &app,
        &["migrate", "apikey-expiry", "--days", "30", "--dry-run"],
    );
    assert_eq!(
        audit(&app, "action=default_expiry").await.len(),
        1,
        "a dry run changes nothing"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let file = file.to_str().unwrap();
    crate::cli::ok(&app, &["data", "export", "--output", file]);
    crate::cli::ok(
        &app,
        &["data", "import", "--input", file, "--skip-conflicts"],
    );
    let imported = audit(&app, "action=import").await;
    assert_eq!(imported.len(), 1);
    let details = &imported[0]["details"];
    assert_eq!(details["file"], file);
    assert_eq!(
        details["keys"],
        json!({"new": 0, "overwritten": 0, "skipped": 2})
    );
    assert_eq!(imported[0]["key_id"], Value::Null);
}
