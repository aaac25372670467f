//! Per-key restrictions through the real relay: models, clients, IPs (via a trusted proxy),
//! endpoints, tags; their validation, the filtered model list, the CLI and export/import.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::cli::ok;
use crate::helpers::*;

/// A key's restriction lists and tags, as the admin API names them.
const LISTS: [&str; 5] = [
    "allowed_models",
    "allowed_clients",
    "allowed_ips",
    "allowed_endpoints",
    "tags",
];

/// An export's text with `metadata` before `data`, as keygate writes (and reads) it.
fn as_written(export: &Value) -> String {
    format!(
        "{{\"metadata\": {},\n\"data\": {}}}",
        export["metadata"], export["data"]
    )
}

/// The 403 body of a refusal saying `message`.
fn forbidden(message: &str) -> Value {
    json!({"error": "Forbidden", "message": message})
}

/// A chat completion with `model` and the given extra headers.
async fn chat_with(
    app: &TestApp,
    key: &str,
    model: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.unwrap()).await
}

/// The error rows of `key_id`: (http_status, error_message), oldest first.
async fn refusals(app: &TestApp, key_id: i64) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = app
        .logs_of(key_id)
        .await
        .iter()
        .filter(|row| row["status"] == "error")
        .map(|row| {
            (
                row["http_status"].as_i64().unwrap(),
                row["error_message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    rows.reverse();
    rows
}

#[tokio::test]
async fn models_are_refused_at_the_boundary_before_anything_goes_upstream() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({"name": "m", "allowed_models": ["gpt-4o-mini", "claude-*"]}))
        .await;
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);
    assert_eq!(
        app.chat_model(&key, "claude-3-opus").await.0,
        StatusCode::OK
    );
    assert_eq!(app.upstream.seen().len(), 2);

    let refused = "model gpt-4o is not allowed for this key; allowed: gpt-4o-mini, claude-*";
    assert_eq!(
        app.chat_model(&key, "gpt-4o").await,
        (StatusCode::FORBIDDEN, forbidden(refused))
    );
    // Prefix boundary, and case: `claude` is not `claude-*`, `GPT-4O-MINI` not `gpt-4o-mini`.
    assert_eq!(
        app.chat_model(&key, "claude").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.chat_model(&key, "GPT-4O-MINI").await.0,
        StatusCode::FORBIDDEN
    );
    // A POST that names no model cannot be checked: refused.
    let (status, body) = read(
        app.client
            .post(app.url("/v1/embeddings"))
            .bearer_auth(&key)
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        forbidden("a request that does not name one model (one JSON `model` field) is not allowed for this key; allowed: gpt-4o-mini, claude-*")
    );
    // Two `model` fields, or one with an escaped name, cannot smuggle another model past the
    // check: the upstream might read the second.
    for smuggled in [
        r#"{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}"#,
        r#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o","messages":[]}"#,
        r#"{"mod\u0065l":"gpt-4o","messages":[]}"#,
    ] {
        let status = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(smuggled)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{smuggled}");
    }
    // An escaped name of an allowed model is that model.
    let status = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"mod\u0065l":"gpt-4o-min\u0069","messages":[]}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);
    // A model's own path is checked by its id.
    let (status, _) = read(
        app.client
            .delete(app.url("/v1/models/gpt-4o"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.upstream.seen().len(),
        3,
        "nothing refused went upstream"
    );

    let rows = refusals(&app, id).await;
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert_eq!(
        app.key_json(id).await["usage_count"],
        3,
        "refused requests are not the key's use"
    );
    assert_eq!(rows[0], (403, refused.to_string()));
    assert!(rows.iter().all(|(status, _)| *status == 403));
    assert_eq!(
        rows[7].1,
        "model gpt-4o is not allowed for this key; allowed: gpt-4o-mini, claude-*"
    );
}

#[tokio::test]
async fn a_refused_request_does_not_start_an_activation_clock() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({
            "name": "act",
            "expiration_mode": "activation",
            "activation_period": 1,
            "activation_unit": "days",
            "allowed_models": ["gpt-4o-mini"],
            "allowed_endpoints": ["/v1/chat/completions"]
        }))
        .await;
    assert_eq!(
        app.chat_model(&key, "gpt-4o").await.0,
        StatusCode::FORBIDDEN
    );
    let (status, _) = read(
        app.client
            .post(app.url("/v1/embeddings"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "input": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.flush().await;
    let pending = app.key_json(id).await;
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(pending["usage_count"], 0);
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);
    app.flush().await;
    let active = app.key_json(id).await;
    assert_eq!(active["status"], "active", "{active}");
    assert_eq!(active["usage_count"], 1);
}

#[tokio::test]
async fn clients_and_endpoints_are_refused_before_the_body_is_read() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({
            "name": "ce",
            "allowed_clients": ["my-app/*", "exact-client"],
            "allowed_endpoints": ["/v1/chat/completions", "/v1/audio/*"]
        }))
        .await;
    let ua = |agent: &'static str| [("user-agent", agent)];
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &ua("My-App/2.0")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &ua("EXACT-CLIENT"))
            .await
            .0,
        StatusCode::OK
    );
    let refused = "client curl/8.5 is not allowed for this key; allowed: my-app/*, exact-client";
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &ua("curl/8.5")).await,
        (StatusCode::FORBIDDEN, forbidden(refused))
    );
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &ua("exact-client/2"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Endpoints: exact and prefix.
    let post = |path: &str| {
        app.client
            .post(app.url(path))
            .bearer_auth(&key)
            .header("user-agent", "my-app/1")
            .json(&json!({"model": "gpt-test", "input": "x"}))
            .send()
    };
    assert_eq!(
        read(post("/v1/embeddings").await.unwrap()).await,
        (
            StatusCode::FORBIDDEN,
            forbidden("endpoint /v1/embeddings is not allowed for this key; allowed: /v1/chat/completions, /v1/audio/*")
        )
    );
    assert_eq!(
        post("/v1/audio/speech").await.unwrap().status(),
        reqwest::StatusCode::OK
    );
    assert_eq!(
        post("/v1/chat/completions/x").await.unwrap().status(),
        reqwest::StatusCode::FORBIDDEN
    );
    assert_eq!(app.upstream.seen().len(), 3);
    let rows = refusals(&app, id).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], (403, refused.to_string()));
}

#[tokio::test]
async fn ips_honour_the_trusted_proxy_and_cidrs() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1"]).await;
    let (id, key) = app
        .create_key(json!({"name": "ip", "allowed_ips": ["203.0.113.0/24", "2001:db8::7"]}))
        .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &from("203.0.113.255"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &from("2001:db8::7"))
            .await
            .0,
        StatusCode::OK
    );
    // A spoofed hop before the real client does not help: the client is the nearest untrusted one.
    let refused =
        "IP address 203.0.114.0 is not allowed for this key; allowed: 203.0.113.0/24, 2001:db8::7";
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &from("203.0.113.1, 203.0.114.0")).await,
        (StatusCode::FORBIDDEN, forbidden(refused))
    );
    // Without the header the client is the proxy itself.
    assert_eq!(
        chat_with(&app, &key, "gpt-test", &[]).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.upstream.seen().len(), 2);
    let rows = refusals(&app, id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], (403, refused.to_string()));
    assert!(rows[1].1.starts_with("IP address 127.0.0.1 is not allowed"));

    // Without a trusted proxy, X-Forwarded-For is ignored.
    let direct = spawn_app().await;
    let (_, key) = direct
        .create_key(json!({"name": "ip", "allowed_ips": ["203.0.113.0/24"]}))
        .await;
    assert_eq!(
        chat_with(&direct, &key, "gpt-test", &from("203.0.113.5"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn patch_is_in_force_on_the_next_request_and_regenerate_keeps_restrictions() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let fresh = app.key_json(id).await;
    for field in LISTS {
        assert_eq!(fresh[field], json!([]), "{field}");
    }
    assert_eq!(app.chat_model(&key, "gpt-4o").await.0, StatusCode::OK);
    let (status, patched) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"allowed_models": [" gpt-4o-mini ", "gpt-4o-mini", ""], "tags": ["a"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["allowed_models"], json!(["gpt-4o-mini"]));
    assert_eq!(patched["tags"], json!(["a"]));
    assert_eq!(
        app.chat_model(&key, "gpt-4o").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.chat_model(&key, "gpt-4o-mini").await.0, StatusCode::OK);

    let (status, regenerated) = app
        .post(&format!("/api/api-keys/{id}/regenerate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{regenerated}");
    assert_eq!(regenerated["allowed_models"], json!(["gpt-4o-mini"]));
    let new_key = regenerated["key"].as_str().unwrap();
    assert_eq!(
        app.chat_model(new_key, "gpt-4o").await.0,
        StatusCode::FORBIDDEN
    );
    // A PATCH without the lists leaves them; `[]` lifts one.
    let (_, renamed) = app
        .patch(&format!("/api/api-keys/{id}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(renamed["allowed_models"], json!(["gpt-4o-mini"]));
    app.patch(
        &format!("/api/api-keys/{id}"),
        json!({"allowed_models": []}),
    )
    .await;
    assert_eq!(app.chat_model(new_key, "gpt-4o").await.0, StatusCode::OK);
}

#[tokio::test]
async fn invalid_lists_are_refused_naming_the_entry() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/api/api-keys",
            json!({"name": "bad", "allowed_ips": ["10.0.0.1", "", "nope"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({
            "error": "Bad Request",
            "field": "allowed_ips[2]",
            "message": "allowed_ips[2]: `nope` is not an IP address or a CIDR; send an IP address like 203.0.113.7, or a CIDR like 10.0.0.0/8"
        })
    );
    let cases = [
        (json!({"allowed_models": ["a*b"]}), "allowed_models[0]"),
        (
            json!({"allowed_endpoints": ["/chat"]}),
            "allowed_endpoints[0]",
        ),
        (
            json!({"allowed_clients": ["x".repeat(201)]}),
            "allowed_clients[0]",
        ),
        (json!({"tags": ["ok", "a\u{1b}b"]}), "tags[1]"),
        (
            json!({"tags": (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags",
        ),
    ];
    for (fields, field) in cases {
        let mut create = fields.clone();
        create["name"] = json!("bad");
        let (status, body) = app.post("/api/api-keys", create).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], field, "{body}");
    }
    let (id, _) = app.new_key().await;
    let (status, body) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"allowed_ips": ["10.0.0.0/33"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "allowed_ips[0]");
    assert_eq!(app.key_json(id).await["allowed_ips"], json!([]));
    assert_eq!(
        app.get("/api/api-keys").await.1["total"],
        1,
        "no invalid key was created"
    );
}

#[tokio::test]
async fn the_key_list_filters_by_tag() {
    let app = spawn_app().await;
    let (a, _) = app
        .create_key(json!({"name": "a", "tags": ["team-a", "prod"]}))
        .await;
    let (b, _) = app
        .create_key(json!({"name": "b", "tags": ["team-b", "prod"]}))
        .await;
    app.create_key(json!({"name": "c"})).await;
    let ids = |page: &Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_i64().unwrap())
            .collect()
    };
    let (status, page) = app.get("/api/api-keys?tag=team-a").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [a]);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["tags"], json!(["team-a", "prod"]));
    assert_eq!(ids(&app.get("/api/api-keys?tag=prod").await.1), [b, a]);
    assert_eq!(
        ids(&app.get("/api/api-keys?tag=team").await.1),
        Vec::<i64>::new()
    );
    assert_eq!(app.get("/api/api-keys").await.1["total"], 3);
}

#[tokio::test]
async fn the_model_list_shows_only_allowed_models() {
    let app = spawn_app().await;
    let list = |key: String| {
        let app = &app;
        async move {
            read(
                app.client
                    .get(app.url("/v1/models"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let upstream = json!({"object": "list", "data": [{"id": "gpt-test", "object": "model"}]});
    let (_, open) = app.new_key().await;
    assert_eq!(list(open).await, (StatusCode::OK, upstream.clone()));
    let (_, allowed) = app
        .create_key(json!({"name": "a", "allowed_models": ["gpt-*"]}))
        .await;
    assert_eq!(list(allowed).await, (StatusCode::OK, upstream));
    let (id, other) = app
        .create_key(json!({"name": "o", "allowed_models": ["claude-*"]}))
        .await;
    assert_eq!(
        list(other.clone()).await,
        (StatusCode::OK, json!({"object": "list", "data": []}))
    );
    let rows = app.logs_of(id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["status"], "success");
    assert_eq!(rows[0]["endpoint"], "/v1/models");
    // One model's page is checked by its id.
    let (status, _) = read(
        app.client
            .get(app.url("/v1/models/gpt-test"))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_cli_sets_shows_and_filters_restrictions() {
    let app = spawn_app().await;
    let created = ok(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "cli",
            "--allowed-models",
            "gpt-4o-mini,claude-*",
            "--tags",
            "x,y",
            "--json",
        ],
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created["allowed_models"],
        json!(["gpt-4o-mini", "claude-*"])
    );
    assert_eq!(created["tags"], json!(["x", "y"]));
    let key = created["key"].as_str().unwrap();
    assert_eq!(app.chat_model(key, "gpt-4o").await.0, StatusCode::FORBIDDEN);

    let id_text = id.to_string();
    let edited = ok(
        &app,
        &[
            "keys",
            "edit",
            &id_text,
            "--allowed-ips",
            "10.0.0.0/8",
            "--allowed-models",
            "",
            "--tags",
            "evil\u{202e}x",
        ],
    );
    assert!(edited.contains("allowed_ips        10.0.0.0/8"), "{edited}");
    assert!(
        edited.contains("allowed_models     any (no restriction)"),
        "{edited}"
    );
    assert!(edited.contains("evil\\u{202e}x"), "escaped: {edited}");
    let shown = ok(&app, &["keys", "show", &id_text]);
    assert!(shown.contains("allowed_ips        10.0.0.0/8"), "{shown}");
    let json = app.key_json(id).await;
    assert_eq!(json["allowed_models"], json!([]));
    assert_eq!(json["allowed_ips"], json!(["10.0.0.0/8"]));
    // The CLI is another process: the server reads the key again once its cache entry is
    // older than a second; forget it now instead of waiting. Then the IP restriction refuses
    // loopback.
    app.state.keyring.cache.clear();
    assert_eq!(app.chat_model(key, "gpt-4o").await.0, StatusCode::FORBIDDEN);
    ok(&app, &["keys", "create", "--name", "other"]);
    let listed: Value = serde_json::from_str(&ok(
        &app,
        &["keys", "list", "--tag", "evil\u{202e}x", "--json"],
    ))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let bad = crate::cli::fails(
        &app,
        &["keys", "edit", &id_text, "--allowed-ips", "1.2.3.4,x"],
    );
    assert!(bad.contains("allowed_ips[1]"), "{bad}");
}

#[tokio::test]
async fn export_and_import_carry_restrictions_and_old_files_still_import() {
    let app = spawn_app().await;
    let (id, key) = app
        .create_key(json!({
            "name": "r",
            "allowed_models": ["gpt-4o-mini"],
            "allowed_clients": ["my-app*"],
            "allowed_ips": ["127.0.0.1"],
            "allowed_endpoints": ["/v1/chat/*"],
            "tags": ["t"]
        }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let file_text = file.to_str().unwrap();
    ok(&app, &["data", "export", "--output", file_text]);
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(export["metadata"]["format_version"], 4);
    let row = &export["data"]["apikeys"][0];
    assert_eq!(row["allowed_clients"], json!(["my-app*"]));
    assert_eq!(row["tags"], json!(["t"]));

    let other = spawn_app().await;
    ok(&other, &["data", "import", "--input", file_text]);
    let imported = other.key_json(id).await;
    let original = app.key_json(id).await;
    for field in LISTS {
        assert_eq!(imported[field], original[field], "{field}");
    }
    assert_eq!(
        chat_with(&other, &key, "gpt-4o", &[("user-agent", "my-app")])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        chat_with(&other, &key, "gpt-4o-mini", &[("user-agent", "my-app")])
            .await
            .0,
        StatusCode::OK
    );

    // A file of format version 1 (no lists) imports with none.
    let mut old = export.clone();
    old["metadata"]["format_version"] = json!(1);
    old["data"]["logs"] = json!([]);
    let row = old["data"]["apikeys"][0].as_object_mut().unwrap();
    for field in LISTS {
        row.remove(field);
    }
    let old_file = dir.path().join("old.json");
    std::fs::write(&old_file, as_written(&old)).unwrap();
    let third = spawn_app().await;
    ok(
        &third,
        &["data", "import", "--input", old_file.to_str().unwrap()],
    );
    let imported = third.key_json(id).await;
    for field in LISTS {
        assert_eq!(imported[field], json!([]), "{field}");
    }
    assert_eq!(third.chat_model(&key, "gpt-4o").await.0, StatusCode::OK);

    // An invalid list in a file names its row and entry.
    let mut bad = export;
    bad["data"]["logs"] = json!([]);
    bad["data"]["apikeys"][0]["allowed_ips"] = json!(["127.0.0.1", "not-an-ip"]);
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, as_written(&bad)).unwrap();
    let fourth = spawn_app().await;
    let error = crate::cli::fails(
        &fourth,
        &["data", "import", "--input", bad_file.to_str().unwrap()],
    );
    assert!(
        error.contains("data.apikeys[0] (id 1") && error.contains("field `allowed_ips[1]`"),
        "{error}"
    );
}
