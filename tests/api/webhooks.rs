//! Webhooks through the real server to mock receivers on loopback: each event arrives once,
//! signed; a failing receiver gets it on a later try (times from the manual clock); undelivered
//! events survive a restart; no secret in any body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::*;

const SECRET: &str = "whsec-test-0123456789abcdef";

#[derive(Clone, Debug)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

/// A webhook receiver: records every POST; answers 500 to the first `failures` of them.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    failures: Arc<AtomicUsize>,
    url: String,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let mut receiver = Receiver {
            failures: Arc::new(AtomicUsize::new(failures)),
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hooks/{token}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.url = format!("http://{}/hooks/t0ken", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (a real-time bound, for the delivery task) until `n` POSTs have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        for _ in 0..200 {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{n} webhook(s) did not arrive: got {:?}", self.got());
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver
        .got
        .lock()
        .unwrap()
        .push(Delivery { headers, body });
    let failing = receiver
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

/// An app sending its webhooks to `urls`, sweeping every 100 ms (real time).
async fn app_to(urls: &[&Receiver]) -> TestApp {
    let urls = urls
        .iter()
        .map(|r| r.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    spawn_app_with(&[
        "--webhook-url",
        &urls,
        "--webhook-secret",
        SECRET,
        "--cleanup-interval",
        "100ms",
    ])
    .await
}

/// Checks the signature as a receiver would, with its own HMAC: `t=<secs>,v1=<hex>` over
/// `"<t>.<body>"`, the timestamp from keygate's clock.
fn assert_signed(delivery: &Delivery, now_ms: i64) {
    let header = delivery.header("x-keygate-signature");
    let (t, v1) = header.split_once(',').unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    assert!(
        (now_ms / 1000 - t).abs() <= 300,
        "timestamp {t} is the clock's"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&delivery.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(
        v1.strip_prefix("v1=").unwrap(),
        expected,
        "signature verifies"
    );
    assert!(keygate::webhooks::sign::verify(
        SECRET,
        header,
        &delivery.body,
        now_ms / 1000,
        300
    ));
}

/// No secret of keygate, the key or the receiver in a body.
fn assert_no_secret(delivery: &Delivery, key_secret: &str) {
    let body = String::from_utf8_lossy(&delivery.body);
    for secret in [key_secret, ADMIN_TOKEN, UPSTREAM_KEY, SECRET, "t0ken"] {
        assert!(!body.contains(secret), "a secret in {body}");
    }
    assert!(
        !body.contains("hash") && !body.contains("encrypted"),
        "{body}"
    );
}

async fn outbox(app: &TestApp) -> i64 {
    keygate::store::webhooks::pending(&app.state.pool)
        .await
        .unwrap()
}

/// Waits until the outbox's one row has `attempts` failed attempts counted.
async fn wait_for_attempts(app: &TestApp, attempts: i64) {
    for _ in 0..200 {
        let counted: Option<i64> = sqlx::query_scalar("SELECT attempts FROM webhook_outbox")
            .fetch_optional(&app.state.pool)
            .await
            .unwrap();
        if counted == Some(attempts) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the delivery was not counted as failed {attempts} time(s)");
}

async fn wait_for_empty_outbox(app: &TestApp) {
    for _ in 0..200 {
        if outbox(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the outbox did not empty");
}

#[tokio::test]
async fn a_revoked_key_sends_one_signed_event_to_every_url() {
    let (first, second) = (Receiver::start(0).await, Receiver::start(0).await);
    let app = app_to(&[&first, &second]).await;
    let (id, secret) = app
        .create_key(json!({"name": "ci", "expires_days": 30}))
        .await;
    let (status, _) = app
        .post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    for receiver in [&first, &second] {
        let got = receiver.wait_for(1).await;
        let event = got[0].json();
        assert_eq!(event["type"], "key.revoked");
        assert_eq!(event["key"]["id"], id);
        assert_eq!(event["key"]["name"], "ci");
        assert_eq!(
            event["key"]["key_preview"],
            app.key_json(id).await["key_preview"]
        );
        assert!(event["key"]["expires_at"].is_string());
        assert!(event["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(got[0].header("x-keygate-event"), "key.revoked");
        assert_eq!(got[0].header("x-keygate-delivery"), event["id"]);
        assert_eq!(got[0].header("content-type"), "application/json");
        assert_signed(&got[0], app.clock.now_ms());
        assert_no_secret(&got[0], &secret);
    }
    assert_eq!(first.got()[0].body, second.got()[0].body, "the same event");

    // Revoking again changes nothing and sends nothing.
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    wait_for_empty_outbox(&app).await;
    keygate::tasks::webhooks::deliver_due(&app.state.pool, &app.clock, &app.state.keyring.webhooks)
        .await
        .unwrap();
    assert_eq!((first.got().len(), second.got().len()), (1, 1));
    assert!(
        !captured_logs().contains("t0ken"),
        "the URL's token is never logged"
    );
}

#[tokio::test]
async fn expiry_notices_arrive_once_each_seven_days_and_one_day_before_and_when_expired() {
    let receiver = Receiver::start(0).await;
    let app = app_to(&[&receiver]).await;
    let webhooks = app.state.keyring.webhooks.clone();
    let scan = || keygate::tasks::webhooks::scan_expiry(&app.state.pool, &app.clock, &webhooks);
    let (id, secret) = app
        .create_key(json!({"name": "expiring", "expires_days": 10}))
        .await;
    let (_, _never) = app.create_key(json!({"name": "forever"})).await;
    assert_eq!(scan().await.unwrap(), 0, "10 days left: nothing yet");

    app.clock
        .advance(time::Duration::days(3) + time::Duration::hours(1));
    let got = receiver.wait_for(1).await;
    let event = got[0].json();
    assert_eq!(event["type"], "key.expiring_soon");
    assert_eq!(event["within_days"], 7);
    assert_eq!(event["key"]["id"], id);
    assert_eq!(
        event["key"]["expires_at"],
        app.key_json(id).await["expires_at"]
    );
    assert_signed(&got[0], app.clock.now_ms());
    assert_no_secret(&got[0], &secret);
    assert_eq!(scan().await.unwrap(), 0, "sent once");

    app.clock.advance(time::Duration::days(6));
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["type"], "key.expiring_soon");
    assert_eq!(got[1].json()["within_days"], 1);

    app.clock.advance(time::Duration::days(1));
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].json()["type"], "key.expired");
    assert_eq!(got[2].json().get("within_days"), None);
    assert_eq!(scan().await.unwrap(), 0, "each notice once");
    wait_for_empty_outbox(&app).await;
    assert_eq!(receiver.got().len(), 3);

    // A renewed key gets the notices of its new expiry.
    let (status, _) = app
        .post(&format!("/api/api-keys/{id}/renew"), json!({"days": 2}))
        .await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(4).await;
    assert_eq!(got[3].json()["within_days"], 7);
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try() {
    let receiver = Receiver::start(2).await;
    let app = app_to(&[&receiver]).await;
    let (id, _) = app.new_key().await;
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    receiver.wait_for(1).await;
    wait_for_attempts(&app, 1).await;
    let deliver = || {
        keygate::tasks::webhooks::deliver_due(
            &app.state.pool,
            &app.clock,
            &app.state.keyring.webhooks,
        )
    };
    // Not before its backoff (30 s after the first failure, by the clock).
    app.clock.advance(time::Duration::seconds(29));
    deliver().await.unwrap();
    assert_eq!(receiver.got().len(), 1);
    assert_eq!(outbox(&app).await, 1);

    app.clock.advance(time::Duration::seconds(2));
    receiver.wait_for(2).await;
    wait_for_attempts(&app, 2).await;
    // Then 60 s.
    app.clock.advance(time::Duration::seconds(59));
    deliver().await.unwrap();
    assert_eq!(receiver.got().len(), 2);
    app.clock.advance(time::Duration::seconds(2));
    let got = receiver.wait_for(3).await;
    wait_for_empty_outbox(&app).await;

    let ids: Vec<&str> = got.iter().map(|d| d.header("x-keygate-delivery")).collect();
    assert_eq!(ids, [ids[0]; 3], "one event, three tries");
    assert!(got.iter().all(|d| d.body == got[0].body));
    assert_signed(&got[2], app.clock.now_ms());
    deliver().await.unwrap();
    assert_eq!(receiver.got().len(), 3, "delivered once it succeeded");
}

#[tokio::test]
async fn a_key_hammering_its_limit_sends_one_event_per_window() {
    let receiver = Receiver::start(0).await;
    let app = app_to(&[&receiver]).await;
    let (a, key_a) = app
        .create_key(json!({"name": "hammer", "rate_limit_window": 1, "rate_limit_requests": 1}))
        .await;
    let (b, key_b) = app
        .create_key(json!({"name": "marker", "rate_limit_window": 1, "rate_limit_requests": 1}))
        .await;
    assert_eq!(app.chat_model(&key_a, "gpt-test").await.0, 200);
    for _ in 0..20 {
        assert_eq!(app.chat_model(&key_a, "gpt-test").await.0, 429);
    }
    // A second key's refusal comes after all of the first's through the same queue.
    assert_eq!(app.chat_model(&key_b, "gpt-test").await.0, 200);
    assert_eq!(app.chat_model(&key_b, "gpt-test").await.0, 429);
    let from = |key: i64| {
        receiver
            .got()
            .into_iter()
            .filter(move |d| d.json()["key"]["id"] == key)
            .collect::<Vec<_>>()
    };
    for _ in 0..200 {
        if !from(b).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_for_empty_outbox(&app).await;
    let events = from(a);
    assert_eq!(events.len(), 1, "one event for 20 refusals");
    let event = events[0].json();
    assert_eq!(event["type"], "key.limit_reached");
    assert_eq!(event["key"]["name"], "hammer");
    assert_eq!(event["limit"]["name"], "rate_limit_requests");
    let retry_after = event["limit"]["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=60).contains(&retry_after), "{event}");
    assert_signed(&events[0], app.clock.now_ms());
    assert_no_secret(&events[0], &key_a);

    // The next window: one more.
    app.clock.advance(time::Duration::seconds(61));
    assert_eq!(app.chat_model(&key_a, "gpt-test").await.0, 200);
    assert_eq!(app.chat_model(&key_a, "gpt-test").await.0, 429);
    for _ in 0..200 {
        if from(a).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(from(a).len(), 2);
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let receiver = Receiver::start(usize::MAX).await;
    let args = [
        "--webhook-url",
        receiver.url.as_str(),
        "--webhook-secret",
        SECRET,
    ];
    let app = spawn_app_with(&args).await;
    let (id, _) = app.new_key().await;
    app.post(&format!("/api/api-keys/{id}/revoke"), json!({}))
        .await;
    receiver.wait_for(1).await;
    wait_for_attempts(&app, 1).await;
    let (db_path, _dir) = app.shutdown().await;

    receiver.failures.store(0, Ordering::SeqCst);
    let app = spawn_app_on_with(&db_path, &args).await;
    assert_eq!(outbox(&app).await, 1, "kept in the outbox");
    app.clock.advance(time::Duration::hours(1));
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].body, got[0].body);
    assert_eq!(got[1].json()["type"], "key.revoked");
    wait_for_empty_outbox(&app).await;
}

#[tokio::test]
async fn webhook_settings_are_checked_at_start_naming_the_variable() {
    let start = |args: &[&str]| {
        let mut all = vec!["keygate"];
        all.extend_from_slice(args);
        let cli = <keygate::cli::Cli as clap::Parser>::try_parse_from(all).unwrap();
        keygate::Config::from_args(&cli.config)
            .err()
            .map(|err| err.to_string())
    };
    let err = start(&[
        "--webhook-url",
        "ftp://example.com/x",
        "--webhook-secret",
        SECRET,
    ])
    .unwrap();
    assert!(err.starts_with("KEYGATE_WEBHOOK_URL: "), "{err}");
    let err = start(&[
        "--webhook-url",
        "https://ok.example/a, not a url",
        "--webhook-secret",
        SECRET,
    ])
    .unwrap();
    assert!(err.starts_with("KEYGATE_WEBHOOK_URL: "), "{err}");
    assert!(!err.contains("ok.example/a"), "no path in the error: {err}");
    let err = start(&["--webhook-url", "https://hooks.example/secret-path"]).unwrap();
    assert!(err.starts_with("KEYGATE_WEBHOOK_SECRET: required"), "{err}");
    let err = start(&[
        "--webhook-url",
        "https://hooks.example/p",
        "--webhook-secret",
        "short",
    ])
    .unwrap();
    assert!(
        err.starts_with("KEYGATE_WEBHOOK_SECRET: must be at least 16"),
        "{err}"
    );
    assert_eq!(
        start(&[
            "--webhook-url",
            "https://a.example/x,http://127.0.0.1:9/y",
            "--webhook-secret",
            SECRET
        ]),
        None
    );
    assert_eq!(start(&[]), None, "no webhooks by default");
}

#[tokio::test]
async fn a_cli_revoke_is_delivered_by_the_serving_keygate() {
    let receiver = Receiver::start(0).await;
    let app = app_to(&[&receiver]).await;
    let (id, _) = app.new_key().await;
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    cli.args(["keys", "revoke", &id.to_string()])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", app.db_path.display()),
        )
        .env("KEYGATE_WEBHOOK_URL", &receiver.url)
        .env("KEYGATE_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null());
    // Off the test's runtime thread, which also runs the server (its sweeper may hold the
    // write lock at that moment).
    let out = tokio::task::spawn_blocking(move || cli.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CLI queued it at the system time, which the server's manual clock has not reached.
    app.clock.advance(time::Duration::minutes(1));
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["type"], "key.revoked");
    assert_eq!(got[0].json()["key"]["id"], id);
}
