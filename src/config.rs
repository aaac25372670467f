//! One Config: defaults, then `.env`/environment, then flags; secrets redacted in Debug; validated at start.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ipnet::IpNet;

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

    // --- Call-log writer and shutdown ---
    pub log_queue_rows: usize,
    pub log_busy_timeout: Duration,
    pub shutdown_grace: Duration,
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
        if args.max_body_bytes == 0 {
            bail!("KEYGATE_MAX_BODY_BYTES: must be a positive number of bytes");
        }
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
            log_queue_rows: args.log_queue_rows,
            log_busy_timeout: parse_duration(&args.log_busy_timeout)
                .context("KEYGATE_LOG_BUSY_TIMEOUT")?,
            shutdown_grace: parse_duration(&args.shutdown_grace)
                .context("KEYGATE_SHUTDOWN_GRACE")?,
        })
    }
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
            .field("log_queue_rows", &self.log_queue_rows)
            .field("log_busy_timeout", &self.log_busy_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
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
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => bail!("`{text}` is not a duration like 30s, 5m or 1h"),
    };
    if secs == 0 {
        bail!("`{text}`: the duration must be positive");
    }
    Ok(Duration::from_secs(secs))
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
