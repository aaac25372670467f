//! Slow, idle, crowding and oversized clients on raw sockets and HTTP/2 (timeouts, the
//! connection cap, the body limit on HTTP/2), and other local users (file modes).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads until EOF (or a reset) or `limit`; returns what came and when the socket ended.
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(start + limit),
            socket.read(&mut buf),
        )
        .await
        {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn assert_serves(app: &TestApp) {
    let (status, body) = read(app.client.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout", "1s"]).await;
    let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut socket, Duration::from_secs(4)).await;
    let closed = closed.expect("the server closes a slow head");
    assert!(closed >= Duration::from_millis(900), "closed at {closed:?}");

    // A client that connects and sends nothing at all is closed too.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let (got, closed) = read_until_closed(&mut silent, Duration::from_secs(4)).await;
    let closed = closed.expect("the server closes a silent connection");
    assert!(closed >= Duration::from_millis(900), "closed at {closed:?}");
    assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"));
    assert_serves(&app).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(&["--idle-timeout", "1s"]).await;
    let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
    one_request(&mut socket).await;
    one_request(&mut socket).await;
    let (got, closed) = read_until_closed(&mut socket, Duration::from_secs(4)).await;
    let closed = closed.expect("the server closes an idle connection");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&closed),
        "closed at {closed:?}"
    );
    assert_serves(&app).await;
}

#[tokio::test]
async fn the_header_timeout_also_bounds_the_wait_between_keep_alive_requests() {
    // The head timeout runs from the end of the previous response (the connection's timer).
    let app = spawn_app_with(&["--header-timeout", "1s", "--idle-timeout", "60s"]).await;
    let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
    one_request(&mut socket).await;
    let (_, closed) = read_until_closed(&mut socket, Duration::from_secs(4)).await;
    let closed = closed.expect("the server closes the idle connection");
    assert!(closed >= Duration::from_millis(900), "closed at {closed:?}");
}

#[tokio::test]
async fn a_second_head_sent_drop_by_drop_is_closed_after_the_header_timeout() {
    // The connection's own timer bounds every head from the end of the previous response:
    // bytes that keep coming do not extend it, and the idle timeout (longer) does not apply.
    let app = spawn_app_with(&["--header-timeout", "1s", "--idle-timeout", "60s"]).await;
    let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
    one_request(&mut socket).await;
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (mut closed, mut got) = (None, Vec::new());
    for byte in head.iter() {
        if socket.write_all(&[*byte]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let closed = closed.expect("the server closes a head that keeps coming");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(3000)).contains(&closed),
        "closed at {closed:?}"
    );
    assert_serves(&app).await;
}

#[tokio::test]
async fn over_the_connection_cap_a_new_connection_is_refused_at_once() {
    let app = spawn_app_with(&["--max-connections", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
        one_request(&mut socket).await;
        held.push(socket);
    }
    let started = Instant::now();
    let mut fourth = TcpStream::connect(addr(&app)).await.unwrap();
    let (got, closed) = read_until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "the fourth connection is not left hanging"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{text}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "Service Unavailable");

    // The three held connections still work; once they close, new ones are served.
    one_request(&mut held[0]).await;
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let client = reqwest::Client::new();
        match client.get(app.url("/healthz")).send().await {
            Ok(response) if response.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("not served after the held connections closed: {other:?}"),
        }
    }
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_http2_client_over_the_body_limit_gets_the_413() {
    let app = spawn_app_with(&["--max-body-bytes", "1000"]).await;
    let (_, key) = app.new_key().await;
    let big = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(200_000)}]});
    let client = h2_client();

    // With a Content-Length.
    let response = client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&big)
        .send()
        .await
        .expect("an answer, not a stream error");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let (status, body) = read(response).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "Payload Too Large");

    // Streamed, without a Content-Length.
    let bytes = serde_json::to_vec(&big).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(16_384).map(|c| Ok(c.to_vec())).collect();
    let response = client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("an answer, not a stream error");
    let (status, body) = read(response).await;
    assert_eq!(status, 413, "{body}");

    // The connection still serves.
    let response = client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Sends a body of `sent` bytes over the limit on HTTP/2 (the whole body, as curl does);
/// returns the status, the answer's body, and whether the server reset the stream.
async fn h2_oversized(
    app: &TestApp,
    key: &str,
    content_length: bool,
    sent: usize,
) -> (u16, Value, Option<h2::Reason>) {
    let socket = TcpStream::connect(addr(app)).await.unwrap();
    let (client, connection) = h2::client::handshake(socket).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("{}/v1/chat/completions", app.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    if content_length {
        request = request.header("content-length", sent.to_string());
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    send.reserve_capacity(sent);
    send.send_data(vec![b' '; sent].into(), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(3), response)
        .await
        .expect("an answer")
        .expect("an answer, not a stream reset");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.expect("the whole answer, not a stream reset"));
    }
    let reset = tokio::time::timeout(
        Duration::from_millis(300),
        std::future::poll_fn(|cx| send.poll_reset(cx)),
    )
    .await
    .ok()
    .and_then(Result::ok);
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        reset,
    )
}

#[tokio::test]
async fn an_http2_client_over_the_body_limit_gets_the_413_without_a_stream_reset() {
    let app = spawn_app_with(&["--max-body-bytes", "1000"]).await;
    let (_, key) = app.new_key().await;
    for content_length in [true, false] {
        let (status, body, reset) = h2_oversized(&app, &key, content_length, 300_000).await;
        assert_eq!(status, 413, "{content_length}: {body}");
        assert_eq!(body["error"], "Payload Too Large");
        assert_eq!(
            reset, None,
            "content-length {content_length}: the server read the whole request before answering"
        );
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(&["--idle-timeout", "1s"]).await;
    let socket = TcpStream::connect(addr(&app)).await.unwrap();
    let (mut client, connection) = h2::client::handshake(socket).await.unwrap();
    let driver = tokio::spawn(async move {
        let result = connection.await;
        (Instant::now(), result)
    });
    let request = http::Request::get(format!("{}/healthz", app.base))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let idle_from = Instant::now();
    let (ended, _) = tokio::time::timeout(Duration::from_secs(4), driver)
        .await
        .expect("the server closes an idle HTTP/2 connection")
        .unwrap();
    let after = ended - idle_from;
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&after),
        "closed {after:?} after the last response"
    );
}

#[tokio::test]
async fn an_http2_connection_that_never_opens_a_stream_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(&["--header-timeout", "1s"]).await;
    let mut socket = TcpStream::connect(addr(&app)).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut socket, Duration::from_secs(4)).await;
    let closed = closed.expect("the server closes the connection");
    assert!(closed >= Duration::from_millis(900), "closed at {closed:?}");
    assert_serves(&app).await;
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[tokio::test]
async fn the_data_directory_and_the_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("inner").join("keygate.db");
    let app = spawn_app_on(&db).await;
    app.new_key().await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("inner")), 0o700);
    let files = [
        db.clone(),
        with_suffix(&db, "-wal"),
        with_suffix(&db, "-shm"),
    ];
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }

    // Files left readable by others (an older keygate, a copy) are tightened at start.
    for file in &files {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let again = spawn_app_on(&db).await;
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(again.get("/api/api-keys").await.0, 200);
}

#[test]
fn serve_raises_the_open_file_limit_to_the_hard_limit() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let hard = limit.rlim_max;
    if hard <= 256 {
        return; // nothing to raise on this machine
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/keygate.db", dir.path().display()),
        )
        .env("KEYGATE_LISTEN", "127.0.0.1:0")
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("open-file limit") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("keygate logs its open-file limit at start");
    assert!(
        line.contains(&format!("open_file_limit={hard}")),
        "raised from 256 to the hard limit {hard}: {line}"
    );
}

#[tokio::test]
async fn key_names_are_printed_with_control_characters_escaped() {
    let app = spawn_app().await;
    let evil = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m";
    let (id, _) = app
        .create_key(json!({"name": evil, "expires_days": 3}))
        .await;
    for args in [
        vec!["keys", "list"],
        vec!["keys", "show", &id.to_string()],
        vec!["keys", "renew-expiring", "--within", "7", "--extend", "1"],
    ] {
        let out = crate::cli::ok(&app, &args);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{9b}'),
            "{args:?}: {out:?}"
        );
        assert!(out.contains(r"evil\u{1b}[2J"), "{args:?}: {out}");
    }
    let json = crate::cli::ok(&app, &["keys", "list", "--json"]);
    assert!(!json.contains('\u{1b}'), "JSON escapes it too: {json}");
}
