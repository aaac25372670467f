//! AppState, the Router (/api admin, the console at /, /healthz), and serve() with graceful shutdown.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, auth::AdminAuth};
use crate::clock::Clock;
use crate::config::Config;
use crate::console;
use crate::key_ops::Keyring;
use crate::metrics::{self, Labelling, Metrics};
use crate::relay::upstream::Upstream;
use crate::secrets;
use crate::server;
use crate::store;
use crate::tasks::log_writer::{LogSink, WriterSettings};
use crate::tasks::sweeper;

/// Cheap handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub pool: SqlitePool,
    pub config: Arc<Config>,
    pub clock: Clock,
    pub keyring: Keyring,
    pub upstream: Arc<Upstream>,
    /// The configured upstreams (SPEC §12), reloaded after every change.
    pub upstreams: Arc<crate::upstreams::Registry>,
    pub logs: LogSink,
    pub admin: Arc<AdminAuth>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Opens the database, loads or creates the secrets, and starts the call-log writer.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<AppState> {
        let keyring = Keyring::open(&config, clock.clone()).await?;
        let pool = keyring.pool.clone();
        let admin = Arc::new(AdminAuth::new(
            secrets::admin_token_hash(&pool, &config).await?,
            &config,
        ));
        let upstream = Arc::new(Upstream::new(&config)?);
        if config.upstream_api_key.is_none() {
            tracing::warn!(
                "KEYGATE_UPSTREAM_API_KEY (or OPENAI_API_KEY) is unset: requests go upstream without a credential"
            );
        }
        let upstreams =
            Arc::new(crate::upstreams::Registry::open(pool.clone(), keyring.fernet.clone()).await?);
        let metrics = Arc::new(Metrics::new(Labelling {
            max_models: config.metrics_models,
            per_key: config.metrics_per_key,
        }));
        let logs = LogSink::spawn(
            &store::database_path(&config.database_url)?,
            WriterSettings {
                queue_rows: config.log_queue_rows,
                busy_timeout: config.log_busy_timeout,
            },
            metrics.clone(),
        )?;
        Ok(AppState {
            pool,
            config: Arc::new(config),
            clock,
            keyring,
            upstream,
            upstreams,
            logs,
            admin,
            metrics,
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(admin::router(&state))
        .merge(metrics::admin_router(&state))
        .merge(console::router())
        .with_state(state)
}

/// 200 while keygate can serve and record; 503 naming the cause while its call log cannot be
/// written (a load balancer then routes elsewhere; rows wait in the queue meanwhile). Both say
/// how many of keygate's own log lines could not be written (a full disk, a closed pipe).
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let log_lines_dropped = crate::log_output::dropped_lines();
    match state.logs.failing() {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ok", "log_lines_dropped": log_lines_dropped })),
        ),
        Some(cause) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "cause": format!("the call log cannot be written: {cause}"),
                "queued_rows": state.logs.queued(),
                "queue_bound": state.logs.bound(),
                "log_lines_dropped": log_lines_dropped,
            })),
        ),
    }
}

/// How often the webhook outbox is looked at for retries that came due and rows the CLI queued
/// (new events wake it at once); shorter when KEYGATE_CLEANUP_INTERVAL is.
const WEBHOOK_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves until `shutdown` is cancelled, then drains connections (for KEYGATE_SHUTDOWN_GRACE,
/// then closes the rest: their rows are sent as they close) and only then flushes and stops
/// the call-log writer, so no row of a request that reached the relay is lost.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Bound before serving: a busy address stops the start with an error naming the variable.
    let metrics_server = match state.config.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            tracing::info!(%addr, "metrics served without authentication at /metrics");
            let serving = metrics::serve_own(state.clone(), listener, shutdown.child_token());
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    let sweeper = sweeper::spawn(
        state.pool.clone(),
        state.clock.clone(),
        state.keyring.webhooks.clone(),
        state.config.cleanup_interval,
        shutdown.child_token(),
    );
    let retention = state.config.log_retention_days.map(|days| {
        crate::tasks::retention::spawn(
            state.pool.clone(),
            state.clock.clone(),
            days,
            state.config.cleanup_interval,
            shutdown.child_token(),
        )
    });
    let webhooks = crate::tasks::webhooks::spawn(
        state.pool.clone(),
        state.clock.clone(),
        state.keyring.webhooks.clone(),
        state.config.cleanup_interval.min(WEBHOOK_POLL),
        shutdown.child_token(),
    );
    let upstream_watch = crate::tasks::upstream_watch::spawn(
        state.pool.clone(),
        state.upstreams.clone(),
        shutdown.child_token(),
    );
    let logs = state.logs.clone();
    let router = router(state.clone());
    let grace = state.config.shutdown_grace;
    server::run(state, router, listener, shutdown, grace).await;
    sweeper.abort();
    upstream_watch.abort();
    if let Some(retention) = retention {
        retention.abort();
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    if let Some(webhooks) = webhooks {
        // Deliveries not yet made stay in the outbox for the next start.
        webhooks.abort();
    }
    logs.close().await;
    Ok(())
}
