//! `/api/upstreams` (SPEC §12): create, list with the built-in `default` first, show, change,
//! delete with the 409/force rule; every bad field a 400 naming it with nothing stored; the
//! credential never in an answer; every change audited.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

pub const CREDENTIAL: &str = "sk-upstream-credential-0123456789WXYZ";

/// Creates an upstream; returns its view.
pub async fn create_upstream(app: &TestApp, body: Value) -> Value {
    let (status, upstream) = app.post("/api/upstreams", body).await;
    assert_eq!(status, 201, "{upstream}");
    upstream
}

async fn list(app: &TestApp) -> Vec<Value> {
    let (status, list) = app.get("/api/upstreams").await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().unwrap().clone()
}

async fn delete(app: &TestApp, path: &str) -> (reqwest::StatusCode, Value) {
    app.admin(Method::DELETE, path, None).await
}

#[tokio::test]
async fn an_upstream_is_created_listed_shown_changed_and_deleted() {
    let app = spawn_app().await;
    // Before any: the built-in upstream alone, read-only, from the environment.
    let items = list(&app).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], 0);
    assert_eq!(items[0]["name"], "default");
    assert_eq!(items[0]["builtin"], true);
    assert_eq!(
        items[0]["base_url"],
        format!("http://{}/v1", app.upstream.addr)
    );
    assert_eq!(items[0]["has_api_key"], true);
    assert_eq!(items[0]["status"]["state"], "healthy");

    let created = create_upstream(
        &app,
        json!({
            "name": "claude-main",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com/",
            "api_key": CREDENTIAL,
            "models": ["claude-*"],
            "model_map": {"claude-latest": "claude-sonnet-4-5"},
            "extra_headers": {"Anthropic-Beta": "tools-2024"},
        }),
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    assert!(id > 0);
    assert_eq!(created["name"], "claude-main");
    assert_eq!(created["kind"], "anthropic");
    assert_eq!(created["base_url"], "https://api.anthropic.com");
    // Defaults: the kind's header, weight 1, priority 0, enabled, inject.
    assert_eq!(created["auth_header"], "x-api-key");
    assert_eq!(created["weight"], 1);
    assert_eq!(created["priority"], 0);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["stream_usage"], "inject");
    assert_eq!(created["timeout_seconds"], Value::Null);
    assert_eq!(
        created["extra_headers"],
        json!({"anthropic-beta": "tools-2024"})
    );
    assert_eq!(created["has_api_key"], true);
    assert_eq!(created["api_key_preview"], "…WXYZ");
    assert_eq!(created["builtin"], false);
    assert_eq!(created["bound_keys"], 0);
    assert_eq!(created["status"]["state"], "healthy");
    assert!(created.get("api_key").is_none(), "{created}");

    // The relay's registry has it at once.
    let table = app.state.upstreams.table();
    assert_eq!(table.specs().len(), 1);
    assert_eq!(table.specs()[0].api_key.as_deref(), Some(CREDENTIAL));

    let items = list(&app).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "default");
    assert_eq!(items[1], created);
    let (status, shown) = app.get(&format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown, created);
    let (status, builtin) = app.get("/api/upstreams/0").await;
    assert_eq!(status, 200);
    assert_eq!(builtin["builtin"], true);

    // PATCH: absent fields unchanged; without api_key the credential stays.
    let (status, changed) = app
        .patch(
            &format!("/api/upstreams/{id}"),
            json!({"priority": 5, "weight": 0, "enabled": false, "timeout_seconds": 30, "stream_usage": "off"}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["priority"], 5);
    assert_eq!(changed["weight"], 0);
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["timeout_seconds"], 30);
    assert_eq!(changed["stream_usage"], "off");
    assert_eq!(changed["models"], json!(["claude-*"]));
    assert_eq!(changed["status"]["state"], "disabled");
    assert_eq!(changed["has_api_key"], true);
    let spec = app.state.upstreams.table().specs()[0].clone();
    assert_eq!(spec.api_key.as_deref(), Some(CREDENTIAL));
    assert!(!spec.enabled);

    // With api_key: replaced; null: removed; timeout null: the override removed.
    let (_, changed) = app
        .patch(
            &format!("/api/upstreams/{id}"),
            json!({"api_key": "sk-other-credential-abcdefgh1234"}),
        )
        .await;
    assert_eq!(changed["api_key_preview"], "…1234");
    let (_, changed) = app
        .patch(
            &format!("/api/upstreams/{id}"),
            json!({"api_key": null, "timeout_seconds": null}),
        )
        .await;
    assert_eq!(changed["has_api_key"], false);
    assert_eq!(changed["api_key_preview"], Value::Null);
    assert_eq!(changed["timeout_seconds"], Value::Null);
    assert_eq!(app.state.upstreams.table().specs()[0].api_key, None);

    let (status, deleted) = delete(&app, &format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        deleted,
        json!({"id": id, "name": "claude-main", "unbound_key_ids": []})
    );
    assert!(app.state.upstreams.table().specs().is_empty());
    let (status, body) = app.get(&format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app
        .patch(&format!("/api/upstreams/{id}"), json!({"priority": 1}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = delete(&app, &format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_builtin_upstream_cannot_be_changed_here() {
    let app = spawn_app().await;
    for (status, body) in [
        app.patch("/api/upstreams/0", json!({"priority": 1})).await,
        delete(&app, "/api/upstreams/0").await,
    ] {
        assert_eq!(status, 409, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("KEYGATE_UPSTREAM_URL"), "{message}");
    }
}

/// Every bad field: a 400 naming it, nothing stored.
#[tokio::test]
async fn each_bad_field_is_a_400_naming_it_and_nothing_is_stored() {
    let app = spawn_app().await;
    let valid = json!({"name": "ok", "kind": "openai", "base_url": "https://api.openai.com/v1"});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("kind", json!("gemini")), "kind"),
        (with("auth_header", json!("basic")), "auth_header"),
        (with("base_url", json!("ftp://example.com/v1")), "base_url"),
        (with("base_url", json!("example.com/v1")), "base_url"),
        (with("base_url", json!("https:///v1")), "base_url"),
        (
            with("base_url", json!("https://example.com/v1?key=1")),
            "base_url",
        ),
        (
            with("base_url", json!("https://example.com/v1#x")),
            "base_url",
        ),
        (
            with("base_url", json!("https://u:p@example.com/v1")),
            "base_url",
        ),
        (with("name", json!("")), "name"),
        (with("name", json!("x".repeat(65))), "name"),
        (with("name", json!("default")), "name"),
        (with("name", json!("has space")), "name"),
        (with("api_key", json!("")), "api_key"),
        (with("api_key", json!("  ")), "api_key"),
        (with("models", json!(["gpt-4o", "a*b"])), "models[1]"),
        (with("model_map", json!({"": "x"})), "model_map"),
        (with("model_map", json!({"x": " "})), "model_map"),
        (with("weight", json!(-1)), "weight"),
        (with("weight", json!(1001)), "weight"),
        (with("priority", json!(-1)), "priority"),
        (with("timeout_seconds", json!(0)), "timeout_seconds"),
        (with("timeout_seconds", json!(3601)), "timeout_seconds"),
        (with("stream_usage", json!("sometimes")), "stream_usage"),
        (
            with("extra_headers", json!({"bad header": "x"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"X-Ok": "line\nbreak"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"Authorization": "Bearer x"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"x-api-key": "x"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"api-key": "x"})),
            "extra_headers",
        ),
        (with("extra_headers", json!({"Host": "x"})), "extra_headers"),
        (
            with("extra_headers", json!({"Content-Length": "1"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"Connection": "close"})),
            "extra_headers",
        ),
        (
            with("extra_headers", json!({"Transfer-Encoding": "chunked"})),
            "extra_headers",
        ),
        (with("surprise", json!(1)), "body"),
    ];
    for (body, field) in &cases {
        let (status, answer) = app.post("/api/upstreams", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], *field, "{body}: {answer}");
        assert_eq!(answer["error"], "Bad Request");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
    assert_eq!(list(&app).await.len(), 1, "nothing was stored");

    // The same checks on a PATCH; the upstream is unchanged after each.
    let created = create_upstream(&app, valid.clone()).await;
    let id = created["id"].as_i64().unwrap();
    for (body, field) in &cases {
        let mut patch = body.clone();
        let object = patch.as_object_mut().unwrap();
        // Only the bad field (and name only when it is the bad one).
        object.retain(|k, _| *field == "body" && k == "surprise" || field.starts_with(k.as_str()));
        if object.is_empty() {
            continue;
        }
        let (status, answer) = app
            .patch(&format!("/api/upstreams/{id}"), patch.clone())
            .await;
        assert_eq!(status, 400, "{patch}: {answer}");
        assert_eq!(answer["field"], *field, "{patch}: {answer}");
    }
    let (_, now) = app.get(&format!("/api/upstreams/{id}")).await;
    assert_eq!(now, created);

    // A duplicate name: 409, on create and on rename.
    let (status, body) = app.post("/api/upstreams", valid.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("`ok`"), "{body}");
    let other = create_upstream(&app, with("name", json!("other"))).await;
    let (status, body) = app
        .patch(
            &format!("/api/upstreams/{}", other["id"]),
            json!({"name": "ok"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(list(&app).await.len(), 3);
}

#[tokio::test]
async fn the_credential_is_in_no_answer_and_every_change_is_audited() {
    let app = spawn_app().await;
    let mut answers = Vec::new();
    let created = create_upstream(
        &app,
        json!({"name": "azure", "kind": "openai", "auth_header": "api-key",
               "base_url": "https://x.openai.azure.com/openai/v1", "api_key": CREDENTIAL}),
    )
    .await;
    let id = created["id"].as_i64().unwrap();
    answers.push(created);
    answers.push(app.get("/api/upstreams").await.1);
    answers.push(app.get(&format!("/api/upstreams/{id}")).await.1);
    answers.push(
        app.patch(
            &format!("/api/upstreams/{id}"),
            json!({"api_key": "sk-second-credential-999999999", "weight": 3}),
        )
        .await
        .1,
    );
    answers.push(app.get("/api/audit-log").await.1);
    answers.push(delete(&app, &format!("/api/upstreams/{id}")).await.1);
    answers.push(app.get("/api/audit-log?page_size=200").await.1);
    for answer in &answers {
        let text = answer.to_string();
        assert!(!text.contains(CREDENTIAL), "{text}");
        assert!(!text.contains("sk-second-credential"), "{text}");
    }
    assert!(!captured_logs().contains(CREDENTIAL));

    let (_, audit) = app.get("/api/audit-log").await;
    let entries = audit["items"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["upstream.delete", "upstream.update", "upstream.create"]
    );
    let create = &entries[2]["details"];
    assert_eq!(create["upstream_id"], id);
    assert_eq!(create["upstream_name"], "azure");
    assert_eq!(create["changes"]["auth_header"]["new"], "api-key");
    assert_eq!(create["changes"]["has_api_key"]["new"], true);
    let update = &entries[1]["details"]["changes"];
    assert_eq!(update["weight"], json!({"old": 1, "new": 3}));
    assert_eq!(update["api_key"], "changed");
    assert_eq!(update.as_object().unwrap().len(), 2, "{update}");
    assert_eq!(entries[0]["details"]["changes"]["name"]["old"], "azure");
    assert_eq!(entries[0]["via"], "token");
    // The action filter knows the new actions.
    let (status, filtered) = app.get("/api/audit-log?action=upstream.update").await;
    assert_eq!(status, 200);
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
}

/// The key as the relay's cache loads it (its parsed policy).
async fn authed(app: &TestApp, secret: &str) -> std::sync::Arc<keygate::relay::auth::AuthedKey> {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
    keygate::relay::auth::authenticate(
        &app.state.pool,
        &app.state.keyring.cache,
        &headers,
        std::time::Instant::now(),
        app.clock.now_ms(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn keys_are_bound_to_upstreams_and_permissions_checked_and_shown() {
    use keygate::upstreams::spec::Kind;
    let app = spawn_app().await;
    let a = create_upstream(
        &app,
        json!({"name": "a", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
    )
    .await;
    let b = create_upstream(
        &app,
        json!({"name": "b", "kind": "anthropic", "base_url": "http://127.0.0.1:9"}),
    )
    .await;
    let (a, b) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());

    // Bad ids and permissions: 400 naming the entry; no key stored.
    for (body, field) in [
        (
            json!({"name": "k", "upstream_ids": [999]}),
            "upstream_ids[0]",
        ),
        (
            json!({"name": "k", "upstream_ids": [a, -4]}),
            "upstream_ids[1]",
        ),
        (
            json!({"name": "k", "permissions": ["openai", "gemini"]}),
            "permissions[1]",
        ),
        (json!({"name": "k", "permissions": [""]}), "permissions[0]"),
    ] {
        let (status, answer) = app.post("/api/api-keys", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    let (_, keys) = app.get("/api/api-keys").await;
    assert_eq!(keys["total"], 0);

    // A key without either: both empty (any upstream, any kind), and no policy.
    let (plain, plain_secret) = app.new_key().await;
    let shown = app.key_json(plain).await;
    assert_eq!(shown["upstream_ids"], json!([]));
    assert_eq!(shown["permissions"], json!([]));
    assert!(authed(&app, &plain_secret).await.policy.is_none());

    // Bound (repeats dropped; 0 is the built-in upstream): shown by show and list, and the
    // cached key's policy carries them even with no other restriction.
    let (id, secret) = app
        .create_key(json!({"name": "bound", "upstream_ids": [b, 0, b], "permissions": ["anthropic", "anthropic"]}))
        .await;
    let shown = app.key_json(id).await;
    assert_eq!(shown["upstream_ids"], json!([b, 0]));
    assert_eq!(shown["permissions"], json!(["anthropic"]));
    let (_, listed) = app.get("/api/api-keys").await;
    let row = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(row["upstream_ids"], json!([b, 0]));
    let key = authed(&app, &secret).await;
    let policy = key.policy.as_ref().expect("a binding alone makes a policy");
    assert_eq!(policy.upstream_ids(), [b, 0]);
    assert!(policy.permits(Kind::Anthropic));
    assert!(!policy.permits(Kind::OpenAi));

    // PATCH: a bad entry changes nothing; a good one replaces; [] clears.
    let (status, answer) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"upstream_ids": [a, 12345], "name": "renamed"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "upstream_ids[1]");
    assert_eq!(app.key_json(id).await["name"], "bound");
    let (status, patched) = app
        .patch(
            &format!("/api/api-keys/{id}"),
            json!({"upstream_ids": [a, b], "permissions": []}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["upstream_ids"], json!([a, b]));
    assert_eq!(patched["permissions"], json!([]));
    let key = authed(&app, &secret).await;
    assert!(key.policy.as_ref().unwrap().permits(Kind::OpenAi));
    // The audit trail shows the binding's change.
    let (_, audit) = app.get(&format!("/api/audit-log?key_id={id}")).await;
    let changes = &audit["items"][0]["details"]["changes"];
    assert_eq!(
        changes["upstream_ids"],
        json!({"old": [b, 0], "new": [a, b]})
    );
    assert_eq!(changes["permissions"]["old"], json!(["anthropic"]));

    // The list counts the keys bound to each upstream.
    let items = list(&app).await;
    assert_eq!(items[1]["bound_keys"], 1);
    assert_eq!(items[2]["bound_keys"], 1);

    // Deleting a bound upstream: 409 naming how many keys; force unbinds them in the same
    // transaction, and the relay's cached key follows at once.
    let (status, answer) = delete(&app, &format!("/api/upstreams/{b}")).await;
    assert_eq!(status, 409, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with("1 key(s) are bound to upstream `b`"),
        "{message}"
    );
    assert!(message.contains("force=true"), "{message}");
    assert_eq!(list(&app).await.len(), 3, "nothing deleted");
    let (status, deleted) = delete(&app, &format!("/api/upstreams/{b}?force=true")).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["unbound_key_ids"], json!([id]));
    assert_eq!(app.key_json(id).await["upstream_ids"], json!([a]));
    assert_eq!(
        authed(&app, &secret)
            .await
            .policy
            .as_ref()
            .unwrap()
            .upstream_ids(),
        [a]
    );
    let (_, audit) = app.get("/api/audit-log?action=upstream.delete").await;
    assert_eq!(audit["items"][0]["details"]["unbound_key_ids"], json!([id]));
    // A deleted upstream's id is no longer accepted.
    let (status, answer) = app
        .patch(&format!("/api/api-keys/{id}"), json!({"upstream_ids": [b]}))
        .await;
    assert_eq!(status, 400, "{answer}");
}

/// The names of the upstreams the relay routes over now.
fn routed_names(app: &TestApp) -> Vec<String> {
    let table = app.state.upstreams.table();
    table.specs().iter().map(|u| u.name.clone()).collect()
}

/// Gives upstream `id` a credential this server cannot decrypt (as after a change of Fernet
/// key).
async fn unreadable(app: &TestApp, id: i64) {
    sqlx::query("UPDATE upstreams SET encrypted_api_key = 'not-a-token' WHERE id = ?")
        .bind(id)
        .execute(&app.state.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreadable_upstream_is_left_out_of_routing_and_says_how_to_repair_it() {
    let app = spawn_app().await;
    let broken = create_upstream(&app, json!({"name": "broken", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": CREDENTIAL})).await;
    unreadable(&app, broken["id"].as_i64().unwrap()).await;
    // Other changes go on; the relay routes over the upstreams it can read (the unreadable
    // one is left out, with an error in the server log).
    let (status, body) = app
        .post(
            "/api/upstreams",
            json!({"name": "fine", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(routed_names(&app), ["fine"]);
    // The unreadable one says what to do; a new credential repairs it.
    let id = broken["id"].as_i64().unwrap();
    let (status, body) = app.get(&format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("cannot be decrypted") && message.contains("api_key"),
        "{message}"
    );
    let (status, body) = app
        .patch(&format!("/api/upstreams/{id}"), json!({"weight": 2}))
        .await;
    assert_eq!(status, 500, "{body}");
    let (status, body) = app
        .patch(
            &format!("/api/upstreams/{id}"),
            json!({"api_key": "sk-repaired-credential-0000000"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(routed_names(&app), ["broken", "fine"]);
    // An unreadable one can also be deleted.
    unreadable(&app, id).await;
    let (status, body) = delete(&app, &format!("/api/upstreams/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(routed_names(&app), ["fine"]);
}
