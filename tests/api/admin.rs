//! The admin API: auth, key CRUD, validation errors that name the field.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn health_is_public_and_admin_needs_auth() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let anonymous = app
        .client
        .get(app.url("/api/api-keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "Unauthorized", "message": "Send Authorization: Bearer <KEYGATE_ADMIN_TOKEN>, or log in with POST /api/auth/login"})
    );
    let wrong = app
        .client
        .get(app.url("/api/api-keys"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn console_login_sets_a_strict_http_only_session_cookie() {
    let app = spawn_app().await;
    let bad = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"token": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let login = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"token": ADMIN_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    let with_session = |request: reqwest::RequestBuilder| {
        let request = request.header("cookie", session.clone());
        async move { request.send().await.unwrap().status() }
    };
    let keys = || app.client.get(app.url("/api/api-keys"));
    assert_eq!(with_session(keys()).await, 200);
    let logout = app
        .client
        .post(app.url("/api/auth/logout"))
        .header("origin", &app.base);
    assert_eq!(with_session(logout).await, 204);
    assert_eq!(
        with_session(keys()).await,
        401,
        "the session ends at logout"
    );
}

#[tokio::test]
async fn create_shows_the_key_once_and_never_again() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/api/api-keys",
            json!({"name": "prod", "description": "web app", "expires_days": 90}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["key"].as_str().unwrap();
    assert_eq!(secret.len(), 36);
    assert_eq!(uuid::Uuid::parse_str(secret).unwrap().get_version_num(), 4);
    assert_eq!(created["status"], "active");
    assert_eq!(created["expiration_mode"], "fixed");
    assert_eq!(created["expires_in_seconds"], 90 * 86_400);
    let preview = created["key_preview"].as_str().unwrap();
    assert_eq!(preview, format!("{}…{}", &secret[..4], &secret[32..]));
    assert!(created.get("key_hash").is_none() && created.get("encrypted_key").is_none());

    let id = created["id"].as_i64().unwrap();
    let shown = app.key_json(id).await;
    let (_, listed) = app.get("/api/api-keys").await;
    for body in [shown.to_string(), listed.to_string()] {
        assert!(!body.contains(secret), "full key leaked: {body}");
        assert!(!body.contains("key_hash") && !body.contains("encrypted_key"));
    }
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["name"], "prod");
    assert_eq!(listed["items"][0]["description"], "web app");
}

#[tokio::test]
async fn invalid_input_names_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "k", "expires_days": 0}), "expires_days"),
        (json!({"name": "k", "expires_at": "tomorrow"}), "expires_at"),
        (
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "k", "expires_days": 3, "never": true}),
            "expires_at",
        ),
        (
            json!({"name": "k", "expiration_mode": "activation"}),
            "activation_unit",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = app.post("/api/api-keys", body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"], "Bad Request");
        assert_eq!(error["field"], field, "{body} → {error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}: ")),
            "{error}"
        );
    }
    let (status, error) = app
        .post("/api/api-keys", json!({"name": "k", "expire_days": 3}))
        .await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("expire_days"),
        "{error}"
    );
    let (status, error) = app
        .post("/api/api-keys", json!({"description": "no name"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("name"),
        "{error}"
    );
    let (status, error) = app.get("/api/api-logs?page_size=500").await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("page_size"))
    );
    let (status, error) = app.get("/api/api-keys?status=sleepy").await;
    assert_eq!(
        (status.as_u16(), error["field"].as_str()),
        (400, Some("status"))
    );
    let (status, error) = app.get("/api/api-keys/999").await;
    assert_eq!(status, 404);
    assert_eq!(error["error"], "Not Found");
}

#[tokio::test]
async fn patch_changes_fields_and_expiry() {
    let app = spawn_app().await;
    let (id, _) = app
        .create_key(json!({"name": "a", "expires_days": 1}))
        .await;
    let (status, key) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"name": "renamed", "description": "d", "expires_at": null}),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["name"], "renamed");
    assert_eq!(key["expires_at"], serde_json::Value::Null);
    assert_eq!(key["status"], "active");
    let (_, key) = app
        .patch(&format!("/api/api-keys/{id}"), json!({"is_active": false}))
        .await;
    assert_eq!(key["status"], "disabled");
    let (_, key) = app
        .patch(&format!("/api/api-keys/{id}"), json!({"description": null}))
        .await;
    assert_eq!(key["description"], serde_json::Value::Null);
    assert_eq!(key["name"], "renamed");
}

#[tokio::test]
async fn list_filters_by_status_and_search_and_pages() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_key(json!({"name": format!("svc-{i}")})).await;
    }
    let (revoked, _) = app.create_key(json!({"name": "old 100%"})).await;
    app.post(&format!("/api/api-keys/{revoked}/revoke"), json!({}))
        .await;
    let (_, page) = app.get("/api/api-keys?page=2&page_size=4").await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(6), 2)
    );
    let (_, page) = app.get("/api/api-keys?status=revoked").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["status"], "revoked");
    let (_, page) = app.get("/api/api-keys?status=active").await;
    assert_eq!(page["total"], 5);
    let (_, page) = app.get("/api/api-keys?search=100%25").await;
    assert_eq!(page["total"], 1);
    let (_, page) = app.get("/api/api-keys?search=svc-3").await;
    assert_eq!(page["items"][0]["name"], "svc-3");
}

#[tokio::test]
async fn delete_removes_the_key_and_its_logs() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let (other, other_key) = app.new_key().await;
    for _ in 0..3 {
        app.chat_model(&key, "gpt-test").await;
    }
    app.chat_model(&other_key, "gpt-test").await;
    assert_eq!(app.logs_of(id).await.len(), 3);

    let (status, _) = app
        .admin(Method::DELETE, &format!("/api/api-keys/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get(&format!("/api/api-keys/{id}")).await;
    assert_eq!(status, 404);
    let (_, logs) = app.get(&format!("/api/api-logs?key_id={id}")).await;
    assert_eq!(logs["total"], 0);
    let (_, logs) = app.get("/api/api-logs").await;
    assert_eq!(logs["total"], 1, "the other key's log stays");
    assert_eq!(logs["items"][0]["api_key_id"], other);
    let (status, body) = app.chat_model(&key, "gpt-test").await;
    assert_eq!(
        (status.as_u16(), body.to_string()),
        (401, INVALID_KEY_BODY.to_string())
    );
}

/// A client whose connections come from `ip` (any 127/8 address is loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn with_token(
    client: &reqwest::Client,
    app: &TestApp,
    token: &str,
) -> (reqwest::StatusCode, Option<String>, serde_json::Value) {
    let response = client
        .get(app.url("/api/api-keys"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        response.status(),
        retry_after,
        response.json().await.unwrap(),
    )
}

#[tokio::test]
async fn wrong_admin_tokens_are_throttled_per_address() {
    let app = spawn_app().await;
    let attacker = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(with_token(&attacker, &app, "wrong-token").await.0.as_u16());
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429; 10], "{statuses:?}");
    let (status, retry_after, body) = with_token(&attacker, &app, ADMIN_TOKEN).await;
    assert_eq!(
        status, 429,
        "the throttled address is refused even with the right token"
    );
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(body["error"], "Too Many Requests");
    assert!(
        body["message"].as_str().unwrap().contains("retry in"),
        "{body}"
    );

    let admin = client_from("127.0.0.2");
    assert_eq!(
        with_token(&admin, &app, ADMIN_TOKEN).await.0,
        200,
        "the right token works from another address"
    );
    let logs = captured_logs();
    assert!(
        logs.contains("10 failures in 60s from this address"),
        "one aggregate warning"
    );
    assert!(!logs.contains("wrong-token"));
}

#[tokio::test]
async fn console_logins_are_throttled_too() {
    let app = spawn_app().await;
    let attacker = client_from("127.0.0.3");
    let login = |client: &reqwest::Client, token: &str| {
        client
            .post(app.url("/api/auth/login"))
            .json(&json!({"token": token}))
            .send()
    };
    for _ in 0..10 {
        assert_eq!(login(&attacker, "wrong").await.unwrap().status(), 401);
    }
    let refused = login(&attacker, ADMIN_TOKEN).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let other = client_from("127.0.0.4");
    assert_eq!(login(&other, ADMIN_TOKEN).await.unwrap().status(), 200);
}

#[tokio::test]
async fn past_the_total_limit_wrong_tokens_get_429_but_the_right_one_works() {
    let app = spawn_app_with(&[
        "--admin-failures-per-ip",
        "5",
        "--admin-failures-total",
        "12",
    ])
    .await;
    for n in 0..3 {
        let client = client_from(&format!("127.0.1.{n}"));
        for _ in 0..4 {
            assert_eq!(with_token(&client, &app, "wrong").await.0, 401);
        }
    }
    let fresh = client_from("127.0.1.9");
    let (status, retry_after, _) = with_token(&fresh, &app, "wrong").await;
    assert_eq!(status, 429, "the 13th failure overall");
    assert!(retry_after.is_some());
    assert_eq!(with_token(&fresh, &app, ADMIN_TOKEN).await.0, 200);
}

/// Logs in; returns the `name=value` of the session cookie and the whole Set-Cookie.
async fn login_cookie(app: &TestApp, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = app
        .client
        .post(app.url("/api/auth/login"))
        .json(&json!({"token": ADMIN_TOKEN}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    (cookie.split(';').next().unwrap().to_string(), cookie)
}

#[tokio::test]
async fn cookie_requests_that_change_things_must_come_from_the_same_origin() {
    let app = spawn_app().await;
    let (session, _) = login_cookie(&app, &[]).await;
    let create = |headers: &[(&str, &str)]| {
        let mut request = app
            .client
            .post(app.url("/api/api-keys"))
            .header("cookie", &session)
            .json(&json!({"name": "csrf"}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let host = app.base.trim_start_matches("http://").to_string();
    let (status, body) = create(&[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("Origin"),
        "{body}"
    );
    assert_eq!(create(&[("origin", "https://evil.example")]).await.0, 403);
    assert_eq!(create(&[("origin", "null")]).await.0, 403);
    assert_eq!(create(&[("sec-fetch-site", "cross-site")]).await.0, 403);
    assert_eq!(
        create(&[("sec-fetch-site", "same-site"), ("origin", &app.base)])
            .await
            .0,
        403,
        "Sec-Fetch-Site decides when present"
    );
    assert_eq!(create(&[("origin", &app.base)]).await.0, 201);
    assert_eq!(
        create(&[("origin", &format!("https://{host}"))]).await.0,
        201
    );
    assert_eq!(create(&[("sec-fetch-site", "same-origin")]).await.0, 201);
    assert_eq!(create(&[("sec-fetch-site", "none")]).await.0, 201);
    // Reading needs no check; the bearer token is not affected.
    let list = app
        .client
        .get(app.url("/api/api-keys"))
        .header("cookie", &session)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let (status, _) = app.post("/api/api-keys", json!({"name": "bearer"})).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_an_https_proxy() {
    let app = spawn_app().await;
    let (_, plain) = login_cookie(&app, &[("x-forwarded-proto", "https")]).await;
    assert!(
        !plain.contains("Secure"),
        "X-Forwarded-Proto from an untrusted peer is ignored: {plain}"
    );

    let proxied = spawn_app_with(&["--trusted-proxies", "127.0.0.0/8"]).await;
    let (_, secure) = login_cookie(&proxied, &[("x-forwarded-proto", "https")]).await;
    assert!(secure.contains("; Secure"), "{secure}");
    let (_, plain) = login_cookie(&proxied, &[("x-forwarded-proto", "http")]).await;
    assert!(!plain.contains("Secure"), "{plain}");

    let always = spawn_app_with(&["--secure-cookie", "always"]).await;
    assert!(login_cookie(&always, &[]).await.1.contains("; Secure"));
    let never = spawn_app_with(&[
        "--trusted-proxies",
        "127.0.0.0/8",
        "--secure-cookie",
        "never",
    ])
    .await;
    assert!(!login_cookie(&never, &[("x-forwarded-proto", "https")])
        .await
        .1
        .contains("Secure"));
}

#[tokio::test]
async fn a_huge_page_is_refused_not_wrapped_to_page_one() {
    let app = spawn_app().await;
    let (id, _) = app.new_key().await;
    for path in [
        "/api/api-keys".to_string(),
        "/api/api-logs".to_string(),
        format!("/api/api-keys/{id}/logs"),
    ] {
        let (status, body) = app.get(&format!("{path}?page=9223372036854775807")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["field"], "page", "{body}");
        // The largest page whose offset fits is simply empty.
        let last = i64::MAX / 50;
        let (status, body) = app.get(&format!("{path}?page={last}")).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["items"], json!([]), "{path}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_origin_may_match_x_forwarded_host() {
    for (trusted, expected) in [(true, 201), (false, 403)] {
        let app = if trusted {
            spawn_app_with(&["--trusted-proxies", "127.0.0.1"]).await
        } else {
            spawn_app().await
        };
        let (session, _) = login_cookie(&app, &[]).await;
        let response = app
            .client
            .post(app.url("/api/api-keys"))
            .header("cookie", &session)
            .header("origin", "https://keygate.example")
            .header("x-forwarded-host", "keygate.example")
            .json(&json!({"name": "proxied"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "trusted proxy: {trusted}");
    }
}

#[tokio::test]
async fn the_key_list_is_sorted_by_the_server_across_pages() {
    let app = spawn_app().await;
    for (name, expiry) in [
        ("bravo", json!({"expires_days": 2})),
        ("Alpha", json!({"never": true})),
        ("charlie", json!({"expires_days": 1})),
    ] {
        let mut body = json!({"name": name});
        body.as_object_mut()
            .unwrap()
            .extend(expiry.as_object().unwrap().clone());
        app.create_key(body).await;
    }
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, first) = app.get("/api/api-keys?sort=name&page_size=2").await;
    let (_, second) = app.get("/api/api-keys?sort=name&page_size=2&page=2").await;
    assert_eq!(names(&first), ["Alpha", "bravo"], "case-insensitive");
    assert_eq!(names(&second), ["charlie"]);
    let (_, desc) = app.get("/api/api-keys?sort=name&order=desc").await;
    assert_eq!(names(&desc), ["charlie", "bravo", "Alpha"]);
    let (_, expiring) = app.get("/api/api-keys?sort=expires_at").await;
    assert_eq!(
        names(&expiring),
        ["charlie", "bravo", "Alpha"],
        "never expires last"
    );
    let (_, newest) = app.get("/api/api-keys").await;
    assert_eq!(
        names(&newest),
        ["charlie", "Alpha", "bravo"],
        "newest first by default"
    );
    let (status, error) = app.get("/api/api-keys?sort=secret").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], "sort");
    let (status, error) = app.get("/api/api-keys?sort=name&order=up").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(error["field"], "order");
}

#[tokio::test]
async fn regenerate_with_a_grace_period_keeps_the_replaced_key_working_until_it_ends() {
    let app = spawn_app().await;
    let (id, old) = app.new_key().await;
    let path = format!("/api/api-keys/{id}/regenerate");
    for bad in [json!({"grace_hours": -1}), json!({"grace_hours": 721})] {
        let (status, error) = app.post(&path, bad).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["field"], "grace_hours");
    }
    assert_eq!(
        app.chat_model(&old, "gpt-test").await.0,
        200,
        "nothing changed"
    );
    let (status, answer) = app.post(&path, json!({"grace_hours": 2})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    let new = answer["key"].as_str().unwrap().to_string();
    let until = keygate::clock::parse_rfc3339(answer["previous_key_valid_until"].as_str().unwrap());
    assert_eq!(until, Some(app.clock.now_ms() + 2 * 3_600_000));
    assert_eq!(
        app.chat_model(&old, "gpt-test").await.0,
        200,
        "within the grace"
    );
    assert_eq!(app.chat_model(&new, "gpt-test").await.0, 200);
    app.clock.advance(time::Duration::hours(2));
    assert_eq!(
        app.chat_model(&old, "gpt-test").await.0,
        401,
        "the grace is over"
    );
    assert_eq!(app.chat_model(&new, "gpt-test").await.0, 200);
    let rows = app.logs_of(id).await;
    assert_eq!(rows.iter().filter(|r| r["http_status"] == 200).count(), 4);

    // Without a body (or without grace_hours) the replaced key dies at once, and so does a
    // replaced key still in its grace.
    let (_, answer) = app.post(&path, json!({"grace_hours": 24})).await;
    let graced = answer["key"].as_str().unwrap().to_string();
    let response = app
        .client
        .post(app.url(&path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let (status, answer) = read(response).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert!(answer.get("previous_key_valid_until").is_none());
    let newest = answer["key"].as_str().unwrap().to_string();
    assert_eq!(app.chat_model(&new, "gpt-test").await.0, 401);
    assert_eq!(app.chat_model(&graced, "gpt-test").await.0, 401);
    assert_eq!(app.chat_model(&newest, "gpt-test").await.0, 200);

    // A revoked key's replaced secret dies with it.
    let (_, answer) = app.post(&path, json!({"grace_hours": 24})).await;
    let (latest, replaced) = (answer["key"].as_str().unwrap().to_string(), newest);
    assert_eq!(app.chat_model(&replaced, "gpt-test").await.0, 200);
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(app.chat_model(&replaced, "gpt-test").await.0, 401);
    assert_eq!(app.chat_model(&latest, "gpt-test").await.0, 401);

    let (other, _) = app.new_key().await;
    let out = crate::cli::ok(
        &app,
        &[
            "keys",
            "regenerate",
            &other.to_string(),
            "--grace-hours",
            "12",
        ],
    );
    assert!(out.contains("The old key works until"), "{out}");
}
