//! One Config: defaults, then `.env`/environment, then flags; secrets redacted in Debug; validated at start.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ipnet::IpNet;

use crate::prices::Prices;

/// Every setting, as flags that fall back to environment variables (see `.env.example`).
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Address the gateway listens on.
    #[arg(
        long,
        env = "KEYGATE_LISTEN",
        default_value = "127.0.0.1:8000",
        global = true
    )]
    pub listen: String,
    /// SQLite database URL; the file's folder is the data directory.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/keygate.db",
        global = true
    )]
    pub database_url: String,
    /// Base URL of the OpenAI-compatible upstream; `/v1/x` is relayed to `{upstream}/x`.
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_URL",
        default_value = "https://api.openai.com/v1",
        global = true
    )]
    pub upstream_url: String,
    /// Credential sent to the upstream (falls back to OPENAI_API_KEY).
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub upstream_api_key: Option<String>,
    /// Admin API token; if unset one is generated on first start and printed once.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// Fernet key for the encrypted key copies; if unset one is generated into the data directory.
    #[arg(
        long,
        env = "KEYGATE_FERNET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub fernet_key: Option<String>,
    /// How often expired keys are marked inactive: `30s`, `5m`, `1h` or seconds.
    #[arg(
        long,
        env = "KEYGATE_CLEANUP_INTERVAL",
        default_value = "1h",
        global = true
    )]
    pub cleanup_interval: String,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "KEYGATE_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,
    /// Comma-separated IPs/CIDRs whose X-Forwarded-For is trusted.
    #[arg(
        long,
        env = "KEYGATE_TRUSTED_PROXIES",
        default_value = "",
        global = true
    )]
    pub trusted_proxies: String,
    /// How long to wait for the upstream's response headers, and between streamed chunks.
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_TIMEOUT",
        default_value = "300s",
        global = true
    )]
    pub upstream_timeout: String,
    /// Most connections open to the upstream at once; past it requests wait briefly, then 503.
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_MAX_CONNECTIONS",
        default_value_t = 1024,
        global = true
    )]
    pub upstream_max_connections: usize,

    // Upstream identity and deadline (issue 9).
    /// `OpenAI-Organization` sent upstream (the client's own is never forwarded).
    #[arg(long, env = "KEYGATE_UPSTREAM_ORGANIZATION", global = true)]
    pub upstream_organization: Option<String>,
    /// `OpenAI-Project` sent upstream (the client's own is never forwarded).
    #[arg(long, env = "KEYGATE_UPSTREAM_PROJECT", global = true)]
    pub upstream_project: Option<String>,
    /// Longest a relayed request may take in all, streamed body included (unset: no limit).
    #[arg(long, env = "KEYGATE_UPSTREAM_MAX_DURATION", global = true)]
    pub upstream_max_duration: Option<String>,

    // --- Several upstreams (SPEC §12) ---
    /// Most upstreams one request is tried on (failover only when it cannot have been served).
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_ATTEMPTS",
        default_value_t = 3,
        global = true
    )]
    pub upstream_attempts: usize,
    /// Consecutive failures after which an upstream is skipped for a while.
    #[arg(
        long,
        env = "KEYGATE_COOLDOWN_FAILS",
        default_value_t = 3,
        global = true
    )]
    pub cooldown_fails: u32,
    /// How long the first cooldown lasts (doubling while it keeps failing, at most 10 min).
    #[arg(
        long,
        env = "KEYGATE_COOLDOWN_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub cooldown_seconds: u64,

    // --- Connections and admin protection (issue 9: items 5, 10, 11) ---
    /// Time allowed for a request head to arrive, from the connection's start or the end of the
    /// previous response (so it also bounds the wait between keep-alive requests).
    #[arg(
        long,
        env = "KEYGATE_HEADER_TIMEOUT",
        default_value = "30s",
        global = true
    )]
    pub header_timeout: String,
    /// A connection with no request open for this long is closed (HTTP/1.1 and HTTP/2).
    #[arg(
        long,
        env = "KEYGATE_IDLE_TIMEOUT",
        default_value = "60s",
        global = true
    )]
    pub idle_timeout: String,
    /// Most client connections open at once; over it a new connection gets a 503 and is closed.
    #[arg(
        long,
        env = "KEYGATE_MAX_CONNECTIONS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_connections: usize,
    /// Threads that run requests: 0 = one per core keygate may use. With one, keygate runs a
    /// single-threaded scheduler, which does a request's work with less bookkeeping.
    #[arg(long, env = "KEYGATE_WORKERS", default_value_t = 0, global = true)]
    pub workers: usize,
    /// Failed admin logins/tokens per client IP per minute before it gets 429.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_FAILURES_PER_IP",
        default_value_t = 10,
        global = true
    )]
    pub admin_failures_per_ip: u32,
    /// Failed admin logins/tokens per minute from all IPs before wrong attempts get 429.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_FAILURES_TOTAL",
        default_value_t = 100,
        global = true
    )]
    pub admin_failures_total: u32,
    /// `Secure` on the console cookie: auto (when a trusted proxy says X-Forwarded-Proto: https),
    /// always, or never.
    #[arg(
        long,
        env = "KEYGATE_SECURE_COOKIE",
        default_value = "auto",
        global = true
    )]
    pub secure_cookie: String,

    /// How long an admin write waits for a database lock held elsewhere (a backup, an open
    /// sqlite3 shell) before it is answered 503.
    #[arg(
        long,
        env = "KEYGATE_DB_BUSY_TIMEOUT",
        default_value = "5s",
        global = true
    )]
    pub db_busy_timeout: String,

    // --- Call-log writer and shutdown (issue 9: rows never lost) ---
    /// Call-log rows that may wait for the writer; at the bound new requests wait for room.
    #[arg(
        long,
        env = "KEYGATE_LOG_QUEUE_ROWS",
        default_value_t = crate::tasks::log_writer::DEFAULT_QUEUE_ROWS,
        global = true
    )]
    pub log_queue_rows: usize,
    /// How long the call-log writer waits for a database lock before it backs off and retries.
    #[arg(
        long,
        env = "KEYGATE_LOG_BUSY_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub log_busy_timeout: String,
    /// How long open connections may take to finish after a shutdown signal.
    #[arg(
        long,
        env = "KEYGATE_SHUTDOWN_GRACE",
        default_value = "30s",
        global = true
    )]
    pub shutdown_grace: String,

    // --- Cost (issue 10) ---
    /// A JSON price file that overrides or adds models to the embedded LiteLLM table:
    /// `{"models": {"<model>": {"input_cost_per_token": …, "output_cost_per_token": …}}}` or
    /// LiteLLM's own model_prices_and_context_window.json.
    #[arg(long, env = "KEYGATE_PRICES_FILE", global = true)]
    pub prices_file: Option<PathBuf>,
    // --- Streamed usage (issue 10) ---
    /// `inject`: streamed chat/completions requests get `stream_options.include_usage` added
    /// (and the usage chunk removed from the client's stream) so their tokens are counted;
    /// `off`: never (for upstreams that refuse `stream_options`).
    #[arg(
        long,
        env = "KEYGATE_STREAM_USAGE",
        default_value = "inject",
        global = true
    )]
    pub stream_usage: String,

    // --- Log retention (issue 12) ---
    /// Call-log rows older than this many days are deleted in the background (the usage
    /// rollup, and so stats and limits, keep them); unset or 0: keep every row.
    #[arg(long, env = "KEYGATE_LOG_RETENTION_DAYS", global = true)]
    pub log_retention_days: Option<String>,
    // --- Metrics and logs (issue 12) ---
    /// An address (e.g. 127.0.0.1:9464) where `GET /metrics` is served WITHOUT authentication,
    /// on a listener of its own; unset: only on the main listener, behind the admin token.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// `true`: metrics also per key id (one series set per key: mind the cardinality).
    #[arg(
        long,
        env = "KEYGATE_METRICS_PER_KEY",
        default_value = "false",
        global = true
    )]
    pub metrics_per_key: String,
    /// Models given a label of their own in the metrics (the first ones to answer
    /// successfully); the others are counted as `other`.
    #[arg(
        long,
        env = "KEYGATE_METRICS_MODELS",
        default_value_t = 50,
        global = true
    )]
    pub metrics_models: usize,
    /// keygate's own log lines on stderr: `text` (for people) or `json` (one object per line).
    #[arg(
        long,
        env = "KEYGATE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,
    // --- Webhooks (issue 12) ---
    /// Where key events are POSTed (expiring soon, expired, revoked, limit reached): one or
    /// several http(s) URLs, comma-separated. Unset: no webhooks.
    #[arg(
        long,
        env = "KEYGATE_WEBHOOK_URL",
        hide_env_values = true,
        global = true
    )]
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key that signs every webhook body (X-Keygate-Signature); required with
    /// KEYGATE_WEBHOOK_URL, at least 16 characters.
    #[arg(
        long,
        env = "KEYGATE_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub webhook_secret: Option<String>,
}

/// How keygate's own log lines are written (`KEYGATE_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, with the current span's fields (`span.key_id`).
    Json,
}

impl LogFormat {
    /// Reads the setting; the error names the variable.
    pub fn parse(text: &str) -> anyhow::Result<LogFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("KEYGATE_LOG_FORMAT: `{other}` is not one of text, json"),
        }
    }
}

/// Most model labels `KEYGATE_METRICS_MODELS` allows (each multiplies the series).
pub const MAX_METRICS_MODELS: usize = 1000;

/// Whether streamed requests get `stream_options.include_usage` added (`KEYGATE_STREAM_USAGE`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StreamUsage {
    Inject,
    Off,
}

impl StreamUsage {
    /// The setting named `text` (`inject` or `off`, as the API and the environment write it).
    pub fn parse(text: &str) -> Option<StreamUsage> {
        match text {
            "inject" => Some(StreamUsage::Inject),
            "off" => Some(StreamUsage::Off),
            _ => None,
        }
    }
}

/// When the console session cookie carries `Secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureCookie {
    /// When a trusted proxy forwards `X-Forwarded-Proto: https`.
    Auto,
    Always,
    Never,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    /// An http:// or https:// URL with a host (checked here).
    pub upstream_url: hyper::Uri,
    pub upstream_api_key: Option<String>,
    pub admin_token: Option<String>,
    pub fernet_key: Option<String>,
    pub cleanup_interval: Duration,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub upstream_timeout: Duration,
    pub upstream_max_connections: usize,

    // Upstream identity and deadline (issue 9).
    pub upstream_organization: Option<String>,
    pub upstream_project: Option<String>,
    /// None: a response may stream as long as it keeps within the idle timeout.
    pub upstream_max_duration: Option<Duration>,
    pub upstream_attempts: usize,
    pub cooldown_fails: u32,
    pub cooldown: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub admin_failures_per_ip: u32,
    pub admin_failures_total: u32,
    pub secure_cookie: SecureCookie,

    pub db_busy_timeout: Duration,
    // --- Call-log writer and shutdown ---
    pub log_queue_rows: usize,
    pub log_busy_timeout: Duration,
    pub shutdown_grace: Duration,

    // --- Cost ---
    /// The embedded table with KEYGATE_PRICES_FILE's models over it.
    pub prices: Arc<Prices>,

    // --- Streamed usage ---
    pub stream_usage: StreamUsage,

    // --- Log retention ---
    /// None: keep every call-log row.
    pub log_retention_days: Option<u32>,
    // --- Metrics and logs ---
    /// None: `/metrics` only on the main listener, behind admin auth.
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_per_key: bool,
    pub metrics_models: usize,
    pub log_format: LogFormat,
    // --- Webhooks ---
    /// Checked http(s) URLs; empty: no webhooks.
    pub webhook_urls: Vec<String>,
    /// Set whenever `webhook_urls` is not empty.
    pub webhook_secret: Option<String>,
}

impl Config {
    /// Validates the arguments; every error names the variable to fix.
    pub fn from_args(args: &ConfigArgs) -> anyhow::Result<Self> {
        let listen = args.listen.parse().with_context(|| {
            format!(
                "KEYGATE_LISTEN: `{}` is not an address like 127.0.0.1:8000",
                args.listen
            )
        })?;
        let text = args.upstream_url.trim_end_matches('/');
        let upstream_url: hyper::Uri = text
            .parse()
            .with_context(|| format!("KEYGATE_UPSTREAM_URL: `{text}` is not a URL"))?;
        if !matches!(upstream_url.scheme_str(), Some("http" | "https"))
            || upstream_url.host().is_none()
        {
            bail!("KEYGATE_UPSTREAM_URL: `{text}` must be an http:// or https:// URL");
        }
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let upstream_api_key = non_empty(&args.upstream_api_key)
            .or_else(|| non_empty(&std::env::var("OPENAI_API_KEY").ok()));
        if args.max_connections == 0 {
            bail!("KEYGATE_MAX_CONNECTIONS: must be at least 1");
        }
        if args.admin_failures_per_ip == 0 || args.admin_failures_total == 0 {
            bail!("KEYGATE_ADMIN_FAILURES_PER_IP and KEYGATE_ADMIN_FAILURES_TOTAL: must be at least 1");
        }
        let secure_cookie = match args.secure_cookie.trim().to_ascii_lowercase().as_str() {
            "auto" => SecureCookie::Auto,
            "always" => SecureCookie::Always,
            "never" => SecureCookie::Never,
            other => bail!("KEYGATE_SECURE_COOKIE: `{other}` is not one of auto, always, never"),
        };
        let setting = args.stream_usage.trim().to_ascii_lowercase();
        let Some(stream_usage) = StreamUsage::parse(&setting) else {
            bail!("KEYGATE_STREAM_USAGE: `{setting}` is not one of inject, off");
        };
        if args.max_body_bytes == 0 {
            bail!("KEYGATE_MAX_BODY_BYTES: must be a positive number of bytes");
        }
        if args.upstream_max_connections == 0 {
            bail!("KEYGATE_UPSTREAM_MAX_CONNECTIONS: must be at least 1");
        }
        if !(1..=10).contains(&args.upstream_attempts) {
            bail!("KEYGATE_UPSTREAM_ATTEMPTS: must be from 1 to 10 (upstreams one request may be tried on)");
        }
        if args.cooldown_fails == 0 {
            bail!("KEYGATE_COOLDOWN_FAILS: must be at least 1 (consecutive failures before an upstream is skipped)");
        }
        if !(1..=600).contains(&args.cooldown_seconds) {
            bail!("KEYGATE_COOLDOWN_SECONDS: must be from 1 to 600");
        }
        if args.metrics_models > MAX_METRICS_MODELS {
            bail!("KEYGATE_METRICS_MODELS: must be at most {MAX_METRICS_MODELS} (each model label multiplies the series); 0 counts every model as `other`");
        }
        let metrics_per_key = parse_bool(&args.metrics_per_key).with_context(|| {
            format!(
                "KEYGATE_METRICS_PER_KEY: `{}` is not true or false",
                args.metrics_per_key.trim()
            )
        })?;
        let metrics_listen = non_empty(&args.metrics_listen)
            .map(|text| {
                text.trim().parse::<SocketAddr>().with_context(|| {
                    format!(
                        "KEYGATE_METRICS_LISTEN: `{}` is not an address like 127.0.0.1:9464",
                        text.trim()
                    )
                })
            })
            .transpose()?;
        let (webhook_urls, webhook_secret) = webhook_settings(
            non_empty(&args.webhook_url),
            non_empty(&args.webhook_secret),
        )?;
        if args.log_queue_rows == 0 {
            bail!("KEYGATE_LOG_QUEUE_ROWS: must be a positive number of rows (default 4096)");
        }
        Ok(Config {
            listen,
            data_dir: data_dir(&args.database_url)?,
            database_url: args.database_url.clone(),
            upstream_url,
            upstream_api_key,
            admin_token: non_empty(&args.admin_token),
            fernet_key: non_empty(&args.fernet_key),
            cleanup_interval: parse_duration(&args.cleanup_interval)
                .context("KEYGATE_CLEANUP_INTERVAL")?,
            max_body_bytes: args.max_body_bytes,
            trusted_proxies: parse_proxies(&args.trusted_proxies)?,
            upstream_timeout: parse_duration(&args.upstream_timeout)
                .context("KEYGATE_UPSTREAM_TIMEOUT")?,
            upstream_max_connections: args.upstream_max_connections,

            upstream_organization: non_empty(&args.upstream_organization),
            upstream_project: non_empty(&args.upstream_project),
            upstream_max_duration: non_empty(&args.upstream_max_duration)
                .map(|text| parse_duration(&text))
                .transpose()
                .context("KEYGATE_UPSTREAM_MAX_DURATION")?,
            upstream_attempts: args.upstream_attempts,
            cooldown_fails: args.cooldown_fails,
            cooldown: Duration::from_secs(args.cooldown_seconds),
            header_timeout: parse_duration(&args.header_timeout)
                .context("KEYGATE_HEADER_TIMEOUT")?,
            idle_timeout: parse_duration(&args.idle_timeout).context("KEYGATE_IDLE_TIMEOUT")?,
            max_connections: args.max_connections,
            admin_failures_per_ip: args.admin_failures_per_ip,
            admin_failures_total: args.admin_failures_total,
            secure_cookie,
            db_busy_timeout: parse_duration(&args.db_busy_timeout)
                .context("KEYGATE_DB_BUSY_TIMEOUT")?,
            log_queue_rows: args.log_queue_rows,
            log_busy_timeout: parse_duration(&args.log_busy_timeout)
                .context("KEYGATE_LOG_BUSY_TIMEOUT")?,
            shutdown_grace: parse_duration(&args.shutdown_grace)
                .context("KEYGATE_SHUTDOWN_GRACE")?,
            prices: Arc::new(Prices::load(
                args.prices_file
                    .as_deref()
                    .filter(|path| !path.as_os_str().is_empty()),
            )?),
            stream_usage,
            log_retention_days: parse_retention(args.log_retention_days.as_deref())?,
            metrics_listen,
            metrics_per_key,
            metrics_models: args.metrics_models,
            log_format: LogFormat::parse(&args.log_format)?,
            webhook_urls,
            webhook_secret,
        })
    }
}

/// The longest retention accepted (a typo guard: beyond it, keep everything instead).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// `KEYGATE_LOG_RETENTION_DAYS`: whole days, 1 to `MAX_RETENTION_DAYS`; empty or 0 keeps
/// every row.
fn parse_retention(text: Option<&str>) -> anyhow::Result<Option<u32>> {
    let text = text.unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    let days: u32 = text
        .parse()
        .ok()
        .filter(|d| *d <= MAX_RETENTION_DAYS)
        .with_context(|| {
            format!(
                "KEYGATE_LOG_RETENTION_DAYS: `{text}` is not a number of days from 0 to \
             {MAX_RETENTION_DAYS} (0 or unset keeps every call-log row)"
            )
        })?;
    Ok((days > 0).then_some(days))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// Shortest KEYGATE_WEBHOOK_SECRET accepted.
const MIN_WEBHOOK_SECRET: usize = 16;

/// The webhook URLs (each an http(s) URL with a host) and their secret, checked.
fn webhook_settings(
    urls: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let urls: Vec<String> = urls
        .iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Ok((urls, None));
    }
    for url in &urls {
        // Named by host only: the path may carry the receiver's token.
        let uri: hyper::Uri = url.parse().map_err(|_| {
            anyhow::anyhow!(
                "KEYGATE_WEBHOOK_URL: an entry is not a URL; give http(s) URLs separated by commas"
            )
        })?;
        let host = uri.host().unwrap_or_default();
        if !matches!(uri.scheme_str(), Some("http" | "https")) || host.is_empty() {
            bail!("KEYGATE_WEBHOOK_URL: each URL must be http:// or https:// with a host (one is not)");
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            bail!("KEYGATE_WEBHOOK_URL: the URL for {host} carries a user name or password; put a token in its path instead");
        }
    }
    let Some(secret) = secret else {
        bail!("KEYGATE_WEBHOOK_SECRET: required when KEYGATE_WEBHOOK_URL is set (receivers check each body's signature with it); give at least {MIN_WEBHOOK_SECRET} random characters");
    };
    if secret.trim().chars().count() < MIN_WEBHOOK_SECRET {
        bail!("KEYGATE_WEBHOOK_SECRET: must be at least {MIN_WEBHOOK_SECRET} characters (e.g. `openssl rand -hex 32`)");
    }
    Ok((urls, Some(secret.trim().to_string())))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| if v.is_some() { "<redacted>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &self.database_url)
            .field("data_dir", &self.data_dir)
            .field("upstream_url", &self.upstream_url)
            .field("upstream_api_key", &redacted(&self.upstream_api_key))
            .field("admin_token", &redacted(&self.admin_token))
            .field("fernet_key", &redacted(&self.fernet_key))
            .field("cleanup_interval", &self.cleanup_interval)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("upstream_max_connections", &self.upstream_max_connections)
            .field("upstream_organization", &self.upstream_organization)
            .field("upstream_project", &self.upstream_project)
            .field("upstream_max_duration", &self.upstream_max_duration)
            .field("upstream_attempts", &self.upstream_attempts)
            .field("cooldown_fails", &self.cooldown_fails)
            .field("cooldown", &self.cooldown)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("admin_failures_per_ip", &self.admin_failures_per_ip)
            .field("admin_failures_total", &self.admin_failures_total)
            .field("secure_cookie", &self.secure_cookie)
            .field("db_busy_timeout", &self.db_busy_timeout)
            .field("log_queue_rows", &self.log_queue_rows)
            .field("log_busy_timeout", &self.log_busy_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("prices", &self.prices)
            .field("stream_usage", &self.stream_usage)
            .field("log_retention_days", &self.log_retention_days)
            .field("metrics_listen", &self.metrics_listen)
            .field("metrics_per_key", &self.metrics_per_key)
            .field("metrics_models", &self.metrics_models)
            .field("log_format", &self.log_format)
            .field("webhook_urls", &self.webhook_urls.len())
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .finish()
    }
}

/// The folder holding the SQLite file (`sqlite://data/keygate.db` → `data`).
fn data_dir(database_url: &str) -> anyhow::Result<PathBuf> {
    let path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .with_context(|| format!("DATABASE_URL: `{database_url}` must start with sqlite://"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        bail!("DATABASE_URL: give a file path, e.g. sqlite://data/keygate.db");
    }
    Ok(PathBuf::from(path)
        .parent()
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// Most request threads `KEYGATE_WORKERS` may ask for.
const MAX_WORKERS: usize = 1024;

/// The request threads to run: `KEYGATE_WORKERS`, or with 0 one per core this process may use
/// (its CPU affinity and cgroup quota).
pub fn workers(requested: usize) -> anyhow::Result<usize> {
    match requested {
        0 => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
        n if n <= MAX_WORKERS => Ok(n),
        n => bail!("KEYGATE_WORKERS: {n} is more than {MAX_WORKERS}; use 0 for one per core"),
    }
}

/// `30s`, `5m`, `1h`, `2d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration like 30s, 5m or 1h"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .with_context(|| format!("`{text}` is too long"))
    };
    let duration = match unit {
        "" | "s" => secs(1)?,
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86_400)?,
        "ms" => Duration::from_millis(n),
        _ => bail!("`{text}` is not a duration like 30s, 5m or 1h"),
    };
    // Zero would make a timeout fire at once, and a period a busy loop.
    if duration.is_zero() {
        bail!("`{text}`: the duration must be positive");
    }
    Ok(duration)
}

fn parse_proxies(text: &str) -> anyhow::Result<Vec<IpNet>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .with_context(|| format!("KEYGATE_TRUSTED_PROXIES: `{s}` is not an IP or CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("0ms").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("9999999999999999999d").is_err());
    }

    #[test]
    fn workers_setting() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(workers(0).unwrap(), cores);
        assert_eq!(workers(1).unwrap(), 1);
        assert_eq!(workers(MAX_WORKERS).unwrap(), MAX_WORKERS);
        let err = workers(MAX_WORKERS + 1).unwrap_err().to_string();
        assert!(
            err.starts_with("KEYGATE_WORKERS: 1025 is more than 1024"),
            "{err}"
        );
    }

    #[test]
    fn stream_usage_setting() {
        let parse = |value: &str| {
            let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
                "keygate",
                "--stream-usage",
                value,
            ])
            .unwrap();
            Config::from_args(&cli.config)
        };
        assert_eq!(parse("inject").unwrap().stream_usage, StreamUsage::Inject);
        assert_eq!(parse(" OFF ").unwrap().stream_usage, StreamUsage::Off);
        let err = parse("maybe").err().unwrap().to_string();
        assert!(err.starts_with("KEYGATE_STREAM_USAGE: `maybe`"), "{err}");
    }

    #[test]
    fn log_retention_days() {
        assert_eq!(parse_retention(None).unwrap(), None);
        assert_eq!(parse_retention(Some(" ")).unwrap(), None);
        assert_eq!(parse_retention(Some("0")).unwrap(), None);
        assert_eq!(parse_retention(Some("90")).unwrap(), Some(90));
        for bad in ["90d", "-1", "36501", "soon"] {
            let err = parse_retention(Some(bad)).unwrap_err().to_string();
            assert!(err.starts_with("KEYGATE_LOG_RETENTION_DAYS: `"), "{err}");
        }
    }

    #[test]
    fn metrics_and_log_settings_are_validated_naming_the_variable() {
        let parse = |args: &[&str]| {
            let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(
                std::iter::once("keygate").chain(args.iter().copied()),
            )
            .unwrap();
            Config::from_args(&cli.config)
        };
        let config = parse(&[]).unwrap();
        assert_eq!(config.metrics_listen, None);
        assert!(!config.metrics_per_key);
        assert_eq!(config.metrics_models, 50);
        assert_eq!(config.log_format, LogFormat::Text);
        let config = parse(&[
            "--metrics-listen",
            "127.0.0.1:9464",
            "--metrics-per-key",
            "TRUE",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(config.metrics_per_key);
        assert_eq!(config.log_format, LogFormat::Json);
        let error = |args: &[&str]| parse(args).err().unwrap().to_string();
        assert!(error(&["--metrics-listen", "localhost"])
            .starts_with("KEYGATE_METRICS_LISTEN: `localhost`"));
        assert!(
            error(&["--metrics-per-key", "maybe"]).starts_with("KEYGATE_METRICS_PER_KEY: `maybe`")
        );
        assert!(error(&["--metrics-models", "5000"]).starts_with("KEYGATE_METRICS_MODELS:"));
        assert!(error(&["--log-format", "xml"]).starts_with("KEYGATE_LOG_FORMAT: `xml`"));
    }

    #[test]
    fn data_dir_and_proxies() {
        assert_eq!(
            data_dir("sqlite://data/keygate.db").unwrap(),
            PathBuf::from("data")
        );
        assert_eq!(
            data_dir("sqlite:k.db?mode=rwc").unwrap(),
            PathBuf::from(".")
        );
        assert!(data_dir("postgres://x").is_err());
        let nets = parse_proxies("10.0.0.0/8, 127.0.0.1").unwrap();
        assert_eq!(nets.len(), 2);
        assert!(parse_proxies("nope").is_err());
    }
}
