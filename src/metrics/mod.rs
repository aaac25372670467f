//! Prometheus metrics at `GET /metrics`: per-request series aggregated off the request path by
//! the call-log writer (`calls`), relaxed atomics elsewhere, read and written out at scrape.

mod calls;
pub mod labels;
pub mod text;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use calls::CallStats;
pub use calls::Labelling;
use text::{Exposition, Histogram};

use crate::app::AppState;
use crate::relay::record::CallRecord;
use crate::upstreams::health::HealthState;

/// Bounds of one call-log batch's write (seconds).
const BATCH_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What is counted since start. The request path only touches the atomics (relaxed); the
/// call-log writer thread takes `calls` once per batch it receives, and a scrape takes it to
/// write the series out.
pub struct Metrics {
    calls: Mutex<CallStats>,
    rows_written: AtomicU64,
    write_failures: AtomicU64,
    batches: Mutex<Histogram>,
    /// Requests refused with 503 because the call log could not take their row (they have no
    /// row, so the writer never sees them).
    unlogged_refusals: AtomicU64,
    /// Client connections open now (the server's connection cap counts with it).
    pub client_connections: Arc<AtomicUsize>,
    /// Client connections refused at the cap since start.
    pub connections_refused: AtomicU64,
    started: SystemTime,
}

impl Metrics {
    pub fn new(labelling: Labelling) -> Self {
        Metrics {
            calls: Mutex::new(CallStats::new(labelling)),
            rows_written: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            batches: Mutex::new(Histogram::new(BATCH_BOUNDS)),
            unlogged_refusals: AtomicU64::new(0),
            client_connections: Arc::new(AtomicUsize::new(0)),
            connections_refused: AtomicU64::new(0),
            started: SystemTime::now(),
        }
    }

    /// Counts call records (the writer thread, as it takes them from its queue).
    pub fn observe<'a>(&self, records: impl IntoIterator<Item = &'a CallRecord>) {
        let mut calls = lock(&self.calls);
        for record in records {
            calls.observe(record);
        }
    }

    /// A batch of `rows` written in `took`.
    pub fn batch_written(&self, rows: usize, took: Duration) {
        self.rows_written.fetch_add(rows as u64, Relaxed);
        lock(&self.batches).observe(took.as_secs_f64());
    }

    /// A batch that failed (it is retried).
    pub fn batch_failed(&self) {
        self.write_failures.fetch_add(1, Relaxed);
    }

    /// A request refused because the call log could not take its row.
    pub fn refused_unlogged(&self) {
        self.unlogged_refusals.fetch_add(1, Relaxed);
    }

    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Relaxed)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("rows_written", &self.rows_written)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The whole exposition of `state`'s metrics.
pub fn render(state: &AppState) -> String {
    let metrics = &state.metrics;
    let mut text = Exposition::new();
    text.family(
        "keygate_build_info",
        "gauge",
        "keygate's version (always 1).",
    );
    text.sample(
        "keygate_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let started = metrics
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    text.single(
        "keygate_start_time_seconds",
        "gauge",
        "When this process started serving, in seconds since the Unix epoch.",
        started.floor(),
    );
    {
        let unlogged = metrics.unlogged_refusals.load(Relaxed);
        lock(&metrics.calls).expose(&mut text, unlogged);
    }
    writer_series(state, &mut text);
    let (hits, misses) = state.keyring.cache.lookups();
    text.family(
        "keygate_key_cache_lookups_total",
        "counter",
        "Key lookups by the relay, by result: hit (answered from the in-memory cache) or miss (read from the database).",
    );
    text.sample(
        "keygate_key_cache_lookups_total",
        &[("result", "hit")],
        hits as f64,
    );
    text.sample(
        "keygate_key_cache_lookups_total",
        &[("result", "miss")],
        misses as f64,
    );
    upstream_series(state, &mut text);
    let pool = state.upstream.pool_stats();
    text.single(
        "keygate_upstream_connections_open",
        "gauge",
        "Connections open to the upstream, busy or idle.",
        pool.open as f64,
    );
    text.single(
        "keygate_upstream_connections_idle",
        "gauge",
        "Idle keep-alive connections to the upstream, ready for the next request.",
        pool.idle as f64,
    );
    text.single(
        "keygate_upstream_connections_max",
        "gauge",
        "Most connections open to the upstream at once (KEYGATE_UPSTREAM_MAX_CONNECTIONS).",
        pool.max as f64,
    );
    text.single(
        "keygate_upstream_waiting_requests",
        "gauge",
        "Requests waiting for an upstream connection (all allowed ones busy).",
        pool.waiting as f64,
    );
    text.single(
        "keygate_client_connections_open",
        "gauge",
        "Client connections open now.",
        metrics.client_connections.load(Relaxed) as f64,
    );
    text.single(
        "keygate_client_connections_refused_total",
        "counter",
        "Client connections refused with 503 at the cap (KEYGATE_MAX_CONNECTIONS).",
        metrics.connections_refused.load(Relaxed) as f64,
    );
    text.single(
        "keygate_log_lines_dropped_total",
        "counter",
        "keygate's own log lines that could not be written (a full disk, a closed pipe).",
        crate::log_output::dropped_lines() as f64,
    );
    text.finish()
}

/// Per upstream (SPEC §12), labelled by name: requests sent, failures, cooldowns started
/// (since it was last configured), and whether it is cooling now.
fn upstream_series(state: &AppState, text: &mut Exposition) {
    let table = state.upstreams.table();
    let now = state.clock.now_ms();
    /// A family's name, type, help, and its value for one upstream at a time.
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&HealthState, i64) -> f64,
    );
    let families: [Family; 4] = [
        (
            "keygate_upstream_requests_total",
            "counter",
            "Requests sent to each upstream (a failed-over request counts at every upstream it tried).",
            |h, _| h.attempts_total.load(Relaxed) as f64,
        ),
        (
            "keygate_upstream_failures_total",
            "counter",
            "Failures of each upstream: connect failures, timeouts, and 429/500/502/503/504/529 answers.",
            |h, _| h.failures_total.load(Relaxed) as f64,
        ),
        (
            "keygate_upstream_cooldowns_total",
            "counter",
            "Cooldowns started for each upstream (it is skipped while one lasts).",
            |h, _| h.cooldowns_total.load(Relaxed) as f64,
        ),
        (
            "keygate_upstream_cooling",
            "gauge",
            "1 while an upstream is cooling down (skipped by routing), else 0.",
            |h, now| f64::from(u8::from(h.cooling_until(now).is_some())),
        ),
    ];
    for (name, kind, help, value) in families {
        text.family(name, kind, help);
        for route in &table.routes {
            let upstream = &route.upstream;
            text.sample(
                name,
                &[("upstream", &upstream.name)],
                value(&upstream.health, now),
            );
        }
    }
}

fn writer_series(state: &AppState, text: &mut Exposition) {
    let metrics = &state.metrics;
    text.single(
        "keygate_call_log_queue_rows",
        "gauge",
        "Call-log rows waiting for the writer (queued or in the batch being written).",
        state.logs.queued() as f64,
    );
    text.single(
        "keygate_call_log_queue_bound_rows",
        "gauge",
        "The queue's bound (KEYGATE_LOG_QUEUE_ROWS): at it, new requests wait for room.",
        state.logs.bound() as f64,
    );
    text.single(
        "keygate_call_log_rows_written_total",
        "counter",
        "Call-log rows written to the database.",
        metrics.rows_written.load(Relaxed) as f64,
    );
    text.single(
        "keygate_call_log_write_failures_total",
        "counter",
        "Call-log batches that failed to write (each is retried until it is written).",
        metrics.write_failures.load(Relaxed) as f64,
    );
    text.single(
        "keygate_call_log_failing",
        "gauge",
        "1 while the call log cannot be written (see /healthz for why), else 0.",
        if state.logs.failing().is_some() {
            1.0
        } else {
            0.0
        },
    );
    text.family(
        "keygate_call_log_batch_write_seconds",
        "histogram",
        "Time to write one batch of call-log rows (one transaction).",
    );
    text.histogram(
        "keygate_call_log_batch_write_seconds",
        &[],
        &lock(&metrics.batches),
    );
}

/// The exposition, with its content type.
async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, text::CONTENT_TYPE)], render(&state))
}

/// `GET /metrics` on the main listener, behind the admin token or a console session.
pub fn admin_router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(scrape))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::admin::auth::require_admin,
        ))
}

/// Binds `KEYGATE_METRICS_LISTEN`; an error names the variable.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("KEYGATE_METRICS_LISTEN: cannot listen on {addr}; set it to a free address")
    })
}

/// Serves `GET /metrics` without authentication on a listener of its own (whoever can reach
/// that address can read it: bind loopback or a network only the scraper is on) until
/// `shutdown`.
pub async fn serve_own(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "the metrics listener stopped");
    }
}
