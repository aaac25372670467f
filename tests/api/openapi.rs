//! The admin API's OpenAPI description: served without a credential, naming every route that
//! exists, and schemathesis (from the test venv) fuzzing a live instance with it: no server
//! error, every answer's status, content type and body as described.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn description(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_description_is_public_and_every_operation_in_it_exists() {
    let app = spawn_app().await;
    let doc = description(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/api-keys",
        "/api/api-keys/{id}",
        "/api/api-keys/{id}/regenerate",
        "/api/api-logs",
        "/api/auth/login",
    ] {
        assert!(paths.contains_key(path), "{path} is described");
    }
    // The limit fields are part of the create and PATCH bodies.
    let create = &doc["components"]["schemas"]["CreateKey"]["properties"];
    assert!(create["rate_limit_window"].is_object(), "{create}");
    assert!(doc["components"]["schemas"]["KeyPatch"]["properties"]["total_cost_limit"].is_object());
    // Every described operation is routed: its answer is keygate's own (JSON or empty with a
    // status it describes), never the router's bare 404/405.
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let concrete = path.replace("{id}", "987654");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
            let (status, answer) = app.admin(method.clone(), &concrete, body).await;
            let described = operation["responses"]
                .as_object()
                .unwrap()
                .contains_key(status.as_str());
            assert!(
                described,
                "{method} {path}: {status} is not described ({answer})"
            );
            if status == 404 {
                assert_eq!(answer["error"], "Not Found", "{method} {path}: {answer}");
            }
        }
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_unlike_the_description() {
    let app = spawn_app().await;
    // Some keys and calls, so that operations on an id find something.
    for _ in 0..3 {
        let (_, key) = app.new_key().await;
        app.chat_model(&key, "gpt-test").await;
    }
    let schemathesis = crate::sdk::python().with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "no schemathesis beside {}: run `bash .ci/run` once (it installs it in .venv)",
        crate::sdk::python().display()
    );
    let url = app.url("/api/openapi.json");
    // Its example database and reports go to a scratch folder, not the repository: every run
    // starts from the same seed and nothing else.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .current_dir(cwd)
            .args([
                "run",
                &url,
                "--no-color",
                "--seed",
                "1",
                "--max-examples",
                "25",
            ])
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            // Checks left out: a wrong credential is refused (throttled) by its own tests, and
            // a create giving two expiries at once is a valid schema but a 400.
            .args([
                "--exclude-checks",
                "ignored_auth,missing_required_header,positive_data_acceptance",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
