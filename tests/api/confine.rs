//! What may be relayed: GET, POST and DELETE only (405), and no dot segments, empty segments
//! or encoded slashes in the path (400), refused before anything goes upstream, each logged.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A response read off a raw socket.
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request_line` (e.g. `POST /v1/x HTTP/1.1`) with `headers` (each `name: value`) and
/// `body` on a new connection that closes after the answer, and reads that answer.
pub async fn raw_request(app: &TestApp, request_line: &str, headers: &[&str], body: &str) -> Raw {
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{request_line}\r\nhost: {addr}\r\nconnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_end(&mut answer),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    Raw {
        status,
        head: head.to_lowercase(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn unconfined_paths_are_400_naming_the_path_and_never_go_upstream() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let auth = format!("authorization: Bearer {key}");
    let json = r#"{"model":"gpt-test","messages":[]}"#;
    let paths = [
        "/v1/../../admin/secret",
        "/v1/./chat/completions",
        "/v1/%2e%2e/x",
        "/v1/%2E%2E/x",
        "/v1/.%2e/x",
        "/v1/chat/%2e",
        "/v1/a%2fb",
        "/v1/a%2F..%2Fb",
        "/v1/a%5cb",
        "/v1/a%5C..",
        "/v1//x",
        "/v1/chat//completions",
    ];
    for path in paths {
        let raw = raw_request(
            &app,
            &format!("POST {path} HTTP/1.1"),
            &[&auth, "content-type: application/json"],
            json,
        )
        .await;
        assert_eq!(raw.status, 400, "{path}: {}", raw.body);
        let body: serde_json::Value = serde_json::from_str(&raw.body).unwrap();
        assert_eq!(body["error"], "Bad Request", "{path}");
        assert_eq!(body["field"], "path", "{path}");
        assert!(
            body["message"].as_str().unwrap().starts_with("path: "),
            "{body}"
        );
    }
    assert!(app.upstream.seen().is_empty(), "{:?}", app.upstream.seen());

    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), paths.len());
    for log in &logs {
        assert_eq!(log["status"], "error");
        assert_eq!(log["http_status"], 400);
        assert!(
            log["error_message"]
                .as_str()
                .unwrap()
                .starts_with("path refused: "),
            "{log}"
        );
    }
    let endpoints: Vec<&str> = logs
        .iter()
        .map(|l| l["endpoint"].as_str().unwrap())
        .collect();
    assert!(
        endpoints.contains(&"/v1/../../admin/secret"),
        "{endpoints:?}"
    );
    assert_eq!(
        app.key_json(id).await["usage_count"],
        0,
        "refused before admission: not the key's use"
    );
    // The same key, a confined path: relayed.
    assert_eq!(app.chat_model(&key, "gpt-test").await.0, 200);
}

/// A raw backslash (hyper lets it through in the request target; some servers read it as `/`).
#[tokio::test]
async fn a_raw_backslash_never_goes_upstream() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let auth = format!("authorization: Bearer {key}");
    let raw = raw_request(&app, "POST /v1/a\\..\\..\\admin HTTP/1.1", &[&auth], "{}").await;
    assert_eq!(raw.status, 400, "{}", raw.body);
    let body: serde_json::Value = serde_json::from_str(&raw.body).unwrap();
    assert_eq!(body["field"], "path");
    assert!(app.upstream.seen().is_empty());
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["error_message"], "path refused: backslash");
    assert_eq!(logs[0]["http_status"], 400);
}

#[tokio::test]
async fn methods_other_than_get_post_delete_are_405_with_allow() {
    let app = spawn_app().await;
    let (id, key) = app.new_key().await;
    let auth = format!("authorization: Bearer {key}");
    let methods = ["TRACE", "PUT", "PATCH", "HEAD", "OPTIONS", "PROPFIND"];
    for method in methods {
        let raw = raw_request(&app, &format!("{method} /v1/models HTTP/1.1"), &[&auth], "").await;
        assert_eq!(raw.status, 405, "{method}");
        assert!(
            raw.head.contains("\r\nallow: get, post, delete"),
            "{method}: {}",
            raw.head
        );
        if method != "HEAD" {
            let body: serde_json::Value = serde_json::from_str(&raw.body).unwrap();
            assert_eq!(body["error"], "Method Not Allowed");
            assert!(body["message"]
                .as_str()
                .unwrap()
                .contains("GET, POST, DELETE"));
        }
    }
    // TRACE with the upstream credential echoed back is the attack: nothing went upstream.
    assert!(app.upstream.seen().is_empty());
    let logs = app.logs_of(id).await;
    assert_eq!(logs.len(), methods.len());
    assert!(logs.iter().all(|l| l["http_status"] == 405
        && l["status"] == "error"
        && l["error_message"] == "method not relayed (only GET, POST and DELETE are)"));

    // An unknown key gets its 401 first, whatever the method.
    let raw = raw_request(
        &app,
        "TRACE /v1/models HTTP/1.1",
        &["authorization: Bearer not-a-key"],
        "",
    )
    .await;
    assert_eq!(raw.status, 401);
    // GET, POST and DELETE are relayed.
    for method in ["GET", "POST", "DELETE"] {
        let raw = raw_request(
            &app,
            &format!("{method} /v1/files/file-1 HTTP/1.1"),
            &[&auth],
            "",
        )
        .await;
        assert_eq!(raw.status, 200, "{method}");
    }
    assert_eq!(app.upstream.seen().len(), 3);
}
